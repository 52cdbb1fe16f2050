"""Measure the data with the base, then decide: scratch, transfer or finetune.

One pass of the frozen base over a bounded sample of the training images
(and the validation images) gives pooled features from the last layer and
from one earlier block. On them: LogME (evidence of a linear model, You et
al. 2021, vectorised over classes with one SVD), leave-one-out kNN
accuracy, and a linear probe's validation accuracy, each next to chance
level. `decide` maps those and the data size to one of the four situations
(small/large x similar/different) of the transfer-learning rule of thumb;
see ../shared/TRANSFERABILITY.md and the README's "Choosing the approach".
"""

import dataclasses
import logging
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from tl_keras import backbones, transfer
from tl_keras import data as data_lib
from tl_keras.config import InputError

log = logging.getLogger("tl_keras")


# --- Scores ----------------------------------------------------------------

def logme(features, labels, tol=1e-3, max_iter=100):
    """LogME score of features for labels: mean over classes of the
    maximised log evidence per example (higher is better).

    One SVD of the features is shared by all classes; each class's
    one-vs-rest target runs MacKay's fixed point for (alpha, beta) in the
    SVD basis, vectorised over classes.

    Args:
      features: float array [n, d].
      labels: int array [n] with values in [0, num_classes).
    """
    f = np.asarray(features, np.float64)
    n, d = f.shape
    classes = np.unique(labels)
    y = (np.asarray(labels)[:, None] == classes[None, :]).astype(np.float64)
    u, sigma, _ = np.linalg.svd(f, full_matrices=False)
    s = sigma**2  # eigenvalues of F'F (the rest are 0)
    x = u.T @ y  # [k, classes]
    y_norm2 = (y**2).sum(0)
    residual_outside = y_norm2 - (x**2).sum(0)  # part of y outside span(F)
    alpha = np.ones(len(classes))
    beta = np.ones(len(classes))
    for _ in range(max_iter):
        t = alpha / beta
        gamma = (s[:, None] / (s[:, None] + t)).sum(0)
        m2 = (s[:, None] * x**2 / (s[:, None] + t)**2).sum(0)
        res2 = (x**2 / (1 + s[:, None] / t)**2).sum(0) + residual_outside
        # Clipped: degenerate features (e.g. constant ones from an
        # untrained base) drive alpha to 0 or beta to infinity.
        new_alpha = np.clip(gamma / np.maximum(m2, 1e-300), 1e-12, 1e12)
        new_beta = np.clip((n - gamma) / np.maximum(res2, 1e-300), 1e-12,
                           1e12)
        done = np.abs(new_alpha / new_beta - t) / t < tol
        alpha, beta = new_alpha, new_beta
        if done.all():
            break
    t = alpha / beta
    m2 = (s[:, None] * x**2 / (s[:, None] + t)**2).sum(0)
    res2 = (x**2 / (1 + s[:, None] / t)**2).sum(0) + residual_outside
    # log|A| with A = alpha I + beta F'F: d eigenvalues, k of them shifted.
    log_det = (np.log(alpha[None, :] + beta[None, :] * s[:, None]).sum(0)
               + (d - len(s)) * np.log(alpha))
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha)
                - n / 2 * np.log(2 * np.pi) - beta / 2 * res2
                - alpha / 2 * m2 - log_det / 2)
    return float(np.mean(evidence / n))


def knn_accuracy(features, labels, k=5):
    """Leave-one-out k-nearest-neighbour accuracy on L2-normalised
    features (cosine similarity; ties go to the nearest)."""
    f = np.asarray(features, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    k = min(k, len(labels) - 1)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    nearest = np.argsort(-sim, axis=1)[:, :k]
    votes = labels[nearest]
    correct = 0
    for row, truth in zip(votes, labels, strict=True):
        counts = np.bincount(row)
        best = np.flatnonzero(counts == counts.max())
        # Tie: the class of the nearest neighbour among the tied classes.
        pick = next(v for v in row if v in best)
        correct += pick == truth
    return correct / len(labels)


def linear_probe(train_x, train_y, val_x, val_y, seed=0):
    """Validation accuracy of a multinomial logistic regression trained on
    standardised features (a cheap stand-in for the `transfer` head)."""
    scaler = StandardScaler().fit(train_x)
    probe = LogisticRegression(max_iter=500, C=1.0, random_state=seed)
    probe.fit(scaler.transform(train_x), train_y)
    return float((probe.predict(scaler.transform(val_x)) == val_y).mean())


# --- Measuring -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Decision thresholds (flags --advisor_*; defaults documented there)."""

    large_per_class: int = 100
    similar_gain: float = 0.5
    scratch_gain: float = 0.1
    scratch_per_class: int = 1000
    earlier_margin: float = 0.05
    reference_margin: float = 0.1
    tie_se: float = 1.0
    random_gain: float = 0.75
    scratch_horizon: float = 0.5

    @classmethod
    def from_config(cls, config):
        return cls(config.advisor_large_per_class,
                   config.advisor_similar_gain, config.advisor_scratch_gain,
                   config.advisor_scratch_per_class,
                   config.advisor_earlier_margin,
                   config.advisor_reference_margin,
                   config.advisor_tie_se, config.advisor_random_gain,
                   config.advisor_scratch_horizon)


def measure(model, data, config, blocks=None):
    """Scores the frozen base of `model` on a sample of `data`.

    Args:
      model: a classifier from `transfer.build_classifier` (its base is
        run in inference mode; nothing in it is trained).
      data: an `ImageData`.
      config: the run's Config (sample size, seed).
      blocks: the base's blocks (`backbones.list_blocks`), for the earlier
        layer; default computed.

    Returns:
      A dict of measurements (see `decide`), with 'problems' listing any
      score that could not be computed and why.
    """
    start = time.time()
    counts = data.class_counts["train"]
    names = data.class_names
    per_class = sorted(counts[name] for name in names)
    too_small = [name for name in names if counts[name] < 2]
    if too_small:
        received = ", ".join(f"{n}={counts[n]}" for n in too_small)
        raise InputError(
            f"Invalid data for the advisor: class(es) {', '.join(too_small)} "
            f"have fewer than 2 training images. Allowed: at least 2 per "
            f"class. Received: {received}")
    out = {
        "num_classes": len(names),
        "num_train": data.counts["train"],
        "num_val": data.counts["val"],
        "images_per_class": {"min": per_class[0],
                             "median": float(np.median(per_class)),
                             "max": per_class[-1]},
        "chance": 1.0 / len(names),
        "problems": [],
    }
    base = model.get_layer("backbone").base
    blocks = blocks if blocks is not None else backbones.list_blocks(base)
    earlier = _earlier_layer(base, blocks)
    extractor = _extractor(model, base, earlier)
    sample_ds, sampled = data_lib.sample_training_set(
        data, config.advisor_sample, config.seed)
    out["sample"] = sampled
    train = _features(extractor, sample_ds, sampled)
    val = _features(extractor, data.val, data.counts["val"])
    out["earlier_layer"] = earlier
    for key, (train_f, val_f) in {"last": (train[0], val[0]),
                                  "earlier": (train[1], val[1])}.items():
        if key == "earlier" and earlier is None:
            continue
        out[key] = _scores(train_f, train[2], val_f, val[2], config.seed,
                           key, out["problems"])
    reference = _reference_scores(model, base, sample_ds, sampled, data.val,
                                  data.counts["val"], config, out["problems"])
    if reference:
        out["reference"] = reference
    out["seconds"] = round(time.time() - start, 1)
    return out


def _reference_scores(model, base, sample_ds, sampled, val_ds, val_count,
                      config, problems, calibration_images=128):
    """The same scores on the last layer of the same architecture with
    fresh random weights: what the pretraining adds is the difference.

    Random convolutional features are a strong baseline on simple images
    (a probe on them can beat chance by far), so a high score alone does
    not show that the pretrained weights know the domain. A random
    network's BatchNorm statistics (mean 0, variance 1) do not match its
    activations, which then shrink layer by layer to near-constant
    features; so one training-mode pass over up to `calibration_images`
    of the `sampled` images (spread over the sample, which is in class
    order; see `_calibration_batch`) first sets every BatchNorm's
    statistics to that batch's (momentum 0), as a network does when
    scratch training starts. Returns
    {} (and notes a problem) if the features are not finite.
    """
    def clone(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer.__class__.from_config(
                {**layer.get_config(), "momentum": 0.0})
        return layer.__class__.from_config(layer.get_config())

    keras.utils.set_random_seed(config.seed)  # the same reference each time
    random_base = keras.models.clone_model(base, clone_function=clone,
                                           recursive=True)
    batch, _ = _calibration_batch(sample_ds, sampled, calibration_images)
    preprocess = model.get_layer("preprocess")
    random_base(preprocess(batch), training=True)  # sets the statistics
    extractor = _extractor(model, random_base, None)
    train = _features(extractor, sample_ds, sampled)
    val = _features(extractor, val_ds, val_count)
    if not (np.isfinite(train[0]).all() and np.isfinite(val[0]).all()):
        problems.append("reference: the random-init network's features are "
                        "not finite; no reference")
        return {}
    return _scores(train[0], train[2], val[0], val[2], config.seed,
                   "reference", problems)


SCRATCH_RUN_BN_MOMENTUM = 0.5  # the scratch run's moving statistics: the
# last few batches (see scratch_run)


def scratch_run(model, data, config, epochs, enough=None):
    """A short from-scratch run: `model`'s architecture with fresh random
    weights, trained on the advisor's sample of the training images (at
    most --advisor_sample) for `epochs` epochs as --approach=scratch trains
    (learning rate, batch size, augmentation, head dropout), validated on
    the validation set after each epoch.

    Its best validation accuracy is an early point on scratch's learning
    curve: a lower bound of what scratch reaches with the full budget.
    Frozen features, pretrained or random, cannot show how far training
    every layer goes; a small CNN can beat a weak base's features after a
    few epochs on simple images. `model` itself is not touched.

    `enough(val_accuracy) -> bool`, if given, stops the run after the
    first epoch for which it is true (the run has caught up with the
    probe: more epochs cannot change the decision).

    Returns:
      {'epochs' (run), 'planned_epochs', 'images', 'val_accuracy' (best),
      'val_accuracy_curve', 'seconds'}.
    """
    start = time.time()
    sample_ds, sampled = data_lib.sample_training_set(
        data, config.advisor_sample, config.seed)
    keras.utils.set_random_seed(config.seed)
    preprocess = model.get_layer("preprocess")
    fresh = backbones.BuiltBackbone(
        base=keras.models.clone_model(model.get_layer("backbone").base,
                                      recursive=True),
        preprocessing=preprocess.mode, image_size=int(model.input.shape[1]),
        spec=None, source="advisor scratch run")
    # Fresh BatchNorm statistics for validation: a short run at the full
    # learning rate moves the weights faster than the architecture's slow
    # moving averages (momentum 0.9-0.99) follow, and validating with
    # stale statistics understated the same weights' accuracy by up to 37
    # points (bench, 300 digits: 0.57 vs 0.93 after 5 epochs). BatchNorm
    # trains on batch statistics, so the weights are the same either way
    # (identical training losses); only the validation is current.
    for layer in transfer.all_layers(fresh.base):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = SCRATCH_RUN_BN_MOMENTUM
    scratch = transfer.build_classifier(fresh, model.output.shape[-1],
                                        config.dropout)
    transfer.compile_for_stage(scratch, config.learning_rate)
    # Every batch full (an epoch's last one wraps into the next epoch's
    # order), so the train step is traced once, not again for a short
    # last batch (5 of the 15 s of a 25-image run). The shuffle buffer
    # holds the images as uint8 (their values are whole numbers, as in
    # the training cache): a quarter of float32's memory.
    train = sample_ds.unbatch().map(
        lambda x, y: (tf.cast(x, tf.uint8), y)).shuffle(
        sampled, seed=config.seed, reshuffle_each_iteration=True).repeat(
        ).batch(config.batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y))
    train = data_lib.augment(train, config)

    def progress(epoch, logs):
        log.info("Advisor: scratch run epoch %d/%d, val_accuracy %.3f",
                 epoch + 1, epochs, logs["val_accuracy"])
        if enough is not None and enough(float(logs["val_accuracy"])):
            log.info("Advisor: the scratch run has caught up with the "
                     "probe; stopping it")
            scratch.stop_training = True

    history = scratch.fit(
        train.prefetch(tf.data.AUTOTUNE), validation_data=data.val,
        epochs=epochs, steps_per_epoch=math.ceil(sampled / config.batch_size),
        verbose=0, shuffle=False,  # shuffled above
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=progress)])
    curve = [round(float(v), 4) for v in history.history["val_accuracy"]]
    return {"epochs": len(curve), "planned_epochs": epochs,
            "images": sampled,
            "val_accuracy": max(curve), "val_accuracy_curve": curve,
            "seconds": round(time.time() - start, 1)}


def _calibration_batch(ds, n, size):
    """At most `size` of the `n` images of the batched dataset `ds`, every
    ceil(n / size)-th one: a folder's images come in class order, so the
    first `size` would often hold one or two classes only.

    Returns:
      (images, labels) as numpy arrays.
    """
    stride = max(1, math.ceil(n / size))
    x, y = next(iter(ds.unbatch().shard(stride, 0).batch(size)))
    return np.asarray(x), np.asarray(y)


def _scores(train_f, train_y, val_f, val_y, seed, key, problems):
    if not (np.isfinite(train_f).all() and np.isfinite(val_f).all()):
        raise InputError(
            f"Invalid features for the advisor: the base's {key} layer "
            f"gives NaN or Inf on the training images, so its weights are "
            f"broken or do not match the preprocessing. Allowed: finite "
            f"features (check --weights and --backbone). Received: "
            f"{int((~np.isfinite(train_f)).sum())} non-finite values")
    scores = {}
    per_class = np.bincount(train_y)
    if len(train_y) < 10 or per_class[per_class > 0].min() < 2:
        problems.append(f"{key}: the sample ({len(train_y)} images) is too "
                        f"small for LogME and kNN")
    else:
        scores["logme"] = round(logme(train_f, train_y), 4)
        scores["knn_accuracy"] = round(knn_accuracy(train_f, train_y), 4)
    if len(val_y) < 2 or len(np.unique(train_y)) < 2:
        problems.append(f"{key}: too few validation images for a probe")
    else:
        scores["probe_accuracy"] = round(
            linear_probe(train_f, train_y, val_f, val_y, seed), 4)
    return scores


def _earlier_layer(base, blocks):
    """The output layer of the block about halfway up the base (None when
    the base has fewer than 3 blocks)."""
    body = [b for b in blocks if b[0] not in ("stem", "top")]
    if len(body) < 3:
        return None
    layer = body[len(body) // 2 - 1][1][-1]
    return layer.name if len(layer.output.shape) == 4 else None


def _extractor(model, base, earlier):
    """Pooled features of `base` (and of its layer `earlier`) on images
    preprocessed by `model`'s preprocessing layer."""
    outputs = [base.output]
    if earlier is not None:
        outputs.append(base.get_layer(earlier).output)
    multi = keras.Model(base.inputs, outputs)
    preprocess = model.get_layer("preprocess")
    pool = keras.layers.GlobalAveragePooling2D()

    @tf.function(input_signature=[tf.TensorSpec(
        (None, *model.input.shape[1:]), tf.float32)])  # traced once
    def run(x):
        maps = multi(preprocess(x), training=False)
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        return [pool(m) for m in maps]

    return run


def _features(extractor, ds, n):
    """Pooled features of the n images of batched `ds`: (last layer,
    earlier layer or None, labels)."""
    last, earlier, labels = [], [], []
    for x, y in data_lib.for_inference(ds, n):
        pooled = extractor(x)
        last.append(np.asarray(pooled[0], np.float64))
        if len(pooled) > 1:
            earlier.append(np.asarray(pooled[1], np.float64))
        labels.append(np.asarray(y))
    return (np.concatenate(last),
            np.concatenate(earlier) if earlier else None,
            np.concatenate(labels).astype(np.int64))


# --- Deciding --------------------------------------------------------------

def scratch_matches(scratch_accuracy, probe_accuracy, n, se=1.0):
    """Whether a scratch run's validation accuracy reaches the probe's,
    less `scratch_tie` (both over the same n validation images): then it
    has caught up, whatever its later epochs do (`decide` takes its best,
    or where it is headed, which is never lower)."""
    return scratch_accuracy >= probe_accuracy - scratch_tie(
        scratch_accuracy, probe_accuracy, n, se)


def accuracy_variance(accuracy, n):
    """The variance of an accuracy measured on n images, as a binomial
    proportion with the Agresti-Coull adjustment (two more right and two
    more wrong: an accuracy of 0 or 1 on 25 images is not certain, which
    the plain p(1 - p) / n would say); 0 without images."""
    if n <= 0:
        return 0.0
    adjusted = (accuracy * n + 2) / (n + 4)
    return adjusted * (1 - adjusted) / (n + 4)


def scratch_tie(scratch_accuracy, probe_accuracy, n, se=1.0):
    """How far below the probe the scratch run may be and still tie: `se`
    standard errors of the difference of two accuracies, each over the
    same n validation images (`accuracy_variance`; independence assumed,
    so this errs wide), rounded to 4 decimals; 0 without images."""
    if n <= 0 or se <= 0:
        return 0.0
    variance = (accuracy_variance(scratch_accuracy, n)
                + accuracy_variance(probe_accuracy, n))
    return round(se * math.sqrt(variance), 4)


def scratch_projection(curve, n, horizon=0.5):
    """Where the scratch run's validation accuracy is headed: its best,
    plus its rise continued linearly for `horizon` times the run's length.

    The rise is the best of the curve's second half over the best of its
    first half (half a run apart), less one standard error of the second
    half's best on the n validation images (`accuracy_variance`), so a few
    images' noise on a flat run is not a climb. Linear extrapolation
    overshoots a learning curve that is bending over, so it goes no
    further than the rise was measured over: the default horizon 0.5 (of
    the run's length) adds one rise, e.g. 4 epochs ahead of an 8-epoch run,
    well inside the budget scratch trains with. Capped at 1; never below
    the best; the best itself when horizon is 0 or the curve has fewer
    than 2 points.
    """
    best = max(curve)
    if horizon <= 0 or len(curve) < 2:
        return best
    half = len(curve) // 2
    second = max(curve[half:])
    noise = math.sqrt(accuracy_variance(second, n))
    rise = max(0.0, second - max(curve[:half]) - noise)
    # The halves' midpoints are half a run apart: 2 rises per run length.
    return round(min(1.0, best + 2 * horizon * rise), 4)


def gain_se(accuracy, chance, n):
    """The standard error of `gain(accuracy, chance)` for an accuracy
    measured on n images (`accuracy_variance`), rounded to 4 decimals; 0
    without images."""
    return round(math.sqrt(accuracy_variance(accuracy, n)) / (1 - chance), 4)


def gain(accuracy, chance):
    """Accuracy above chance, scaled so 0 = chance and 1 = perfect.

    Rounded to 6 decimals: accuracies are counts over a few images, and
    e.g. (0.6 - 0.2) / 0.8 is 0.49999999999999994 in floating point, which
    must not fall below a threshold of 0.5.
    """
    return round((accuracy - chance) / (1 - chance), 6)


def decide(m, thresholds, num_blocks):
    """Maps measurements to the seed's four situations and an approach.

    Rules (thresholds from `Thresholds`):
      size: large when the median images per class >= large_per_class.
      knowledge: the frozen features' quality is the linear probe's gain
        over chance (kNN's when no probe). When it beats the gain of the
        same architecture with random weights by less than
        reference_margin, the pretraining brings nothing to this data ->
        scratch, whatever the size.
      random features: when the same architecture with random weights
        already gains at least random_gain (1: never), the task is easy
        for the architecture itself -> scratch, whatever the size.
      scratch run: when a short from-scratch run (measurements'
        'scratch') reaches the probe's validation accuracy, less
        tie_se standard errors of the difference of the two (both
        measured on the measurements' num_val validation images; a
        smaller gap is a tie, and the run is a lower bound of scratch with
        the full budget), or is headed there (`scratch_projection`,
        scratch_horizon run lengths ahead), scratch catches up -> scratch,
        whatever the size.
      similarity: similar when the quality is >= similar_gain, less
        tie_se standard errors of the quality (`gain_se`: a gain that
        close to the threshold is a tie, and on small data the tie goes to
        finetune, whose stage is kept only when it beats the head on the
        validation set). An earlier
        layer scoring better by > earlier_margin marks the data as far
        from the pretraining domain (different).
      small + similar -> finetune every block, after the head (the
        fine-tune stage keeps its result only if it beats the head on the
        validation set); small + different -> transfer;
      large + similar -> finetune the top third of the blocks;
      large + different -> finetune all blocks, or scratch when the
        features are near chance (gain < scratch_gain) and there are at
        least scratch_per_class images per class.
      No usable score: the size rule alone (small -> transfer, large ->
        finetune all).

    Returns:
      {'situation', 'approach', 'unfreeze', 'rule', 'reason'}.
    """
    median = m["images_per_class"]["median"]
    large = median >= thresholds.large_per_class
    size = "large" if large else "small"
    chance = m["chance"]
    last, earlier = m.get("last", {}), m.get("earlier") or {}
    reference = m.get("reference") or {}
    quality_key = ("probe_accuracy" if "probe_accuracy" in last
                   else "knn_accuracy" if "knn_accuracy" in last else None)
    size_text = (f"{median:g} images per class (median; large from "
                 f"{thresholds.large_per_class})")
    if quality_key is None:
        approach = "finetune" if large else "transfer"
        return {"situation": f"{size}, similarity unknown",
                "approach": approach, "unfreeze": "all", "rule": "size only",
                "reason": f"No transferability score could be computed "
                          f"({'; '.join(m['problems'])}), so only the data "
                          f"size decides: {size_text} -> {approach}."}
    quality = gain(last[quality_key], chance)
    earlier_quality = (gain(earlier[quality_key], chance)
                       if quality_key in earlier else None)
    reference_quality = (gain(reference[quality_key], chance)
                         if quality_key in reference else None)
    far = (earlier_quality is not None
           and earlier_quality > quality + thresholds.earlier_margin)
    nothing = (reference_quality is not None and
               quality < reference_quality + thresholds.reference_margin)
    n_quality = (m.get("num_val", 0) if quality_key == "probe_accuracy"
                 else m.get("sample", 0))
    similar_tie = thresholds.tie_se * gain_se(last[quality_key], chance,
                                              n_quality)
    similar = (quality >= thresholds.similar_gain - similar_tie
               and not far and not nothing)
    scratch = m.get("scratch") or {}
    easy = (not nothing and reference_quality is not None
            and thresholds.random_gain < 1  # 1: off
            and reference_quality >= thresholds.random_gain)
    ran = "val_accuracy" in scratch
    num_val = m.get("num_val", 0)
    tie = (scratch_tie(scratch["val_accuracy"], last[quality_key], num_val,
                       thresholds.tie_se) if ran else 0.0)
    projected = (scratch_projection(
        scratch.get("val_accuracy_curve") or [scratch["val_accuracy"]],
        num_val, thresholds.scratch_horizon) if ran else 0.0)
    catches_up = (not nothing and not easy
                  and quality_key == "probe_accuracy" and ran
                  and projected >= last[quality_key] - tie)
    name = quality_key.replace("_", " ")
    evidence = (f"the frozen features' {name} is {last[quality_key]:.3f} "
                f"(chance {chance:.3f}; gain {quality:.2f}, similar from "
                f"{thresholds.similar_gain}"
                + (f" less {similar_tie:.2f} ({thresholds.tie_se:g} standard "
                   f"error on {n_quality} images)" if similar_tie else "")
                + ")")
    if reference_quality is not None:
        evidence += (f"; random-init features of the same architecture "
                     f"gain {reference_quality:.2f}"
                     + (f" — the pretrained ones beat that by less than "
                        f"{thresholds.reference_margin}, so the pretraining "
                        f"brings nothing to this data" if nothing else "")
                     + (f" — at least {thresholds.random_gain}: the "
                        f"untrained architecture already separates these "
                        f"classes" if easy else ""))
    if earlier_quality is not None:
        evidence += (f"; the earlier layer's gain is {earlier_quality:.2f}"
                     + (" — better than the last layer's, so the data is "
                        "far from the pretraining domain" if far else ""))
    if ran:
        climbs = projected > scratch["val_accuracy"]
        ahead = math.ceil(thresholds.scratch_horizon * scratch["epochs"])
        evidence += (f"; a {scratch['epochs']}-epoch scratch run on "
                     f"{scratch['images']} images reaches validation "
                     f"accuracy {scratch['val_accuracy']:.3f}"
                     + (f" and, at the rate it climbed over its second "
                        f"half, {projected:.3f} within {ahead} more epochs"
                        if climbs else "")
                     + (f", at least the frozen features' "
                        f"{last[quality_key]:.3f}" + (
                            f" less {tie:.3f} ({thresholds.tie_se:g} "
                            f"standard error of the difference on "
                            f"{num_val} validation images)"
                            if tie else "") if catches_up else ""))
    kind = "similar" if similar else "different"
    situation = f"{size} data, {kind} domain"
    unfreeze = "all"
    if nothing:
        approach, rule = "scratch", "pretraining adds nothing"
        why = ("the pretrained weights are no better a start than random "
               "ones, so the whole network trains at the full learning "
               "rate")
    elif easy:
        approach, rule = "scratch", "random features suffice"
        why = ("the task is easy for the architecture itself, so every "
               "layer trains from random init at the full learning rate "
               "for the whole budget instead of adapting features learned "
               "for another task")
    elif catches_up:
        approach, rule = "scratch", "scratch catches up"
        headed = scratch["val_accuracy"] < last[quality_key] - tie
        why = (f"training every layer from random init "
               f"{'is headed to match' if headed else 'already matches'} "
               f"what the pretrained features give a linear classifier, "
               f"after {scratch['epochs']} epochs (the run gets more), so "
               f"the pretrained start has no lead to keep")
    elif not large and similar:
        approach, rule = "finetune", "small + similar"
        why = ("the head trains on the frozen features first, then every "
               "block at the small fine-tune learning rate; the fine-tuned "
               "weights are kept only if they beat the head on the "
               "validation set, so this ends no worse than transfer there")
    elif not large:
        approach, rule = "transfer", "small + different"
        why = ("the pretrained features beat random ones but separate "
               "these classes poorly, and there are too few labels to "
               "re-learn them safely")
    elif similar:
        approach, rule = "finetune", "large + similar"
        unfreeze = str(max(1, math.ceil(num_blocks / 3)))
        why = (f"enough labels to adapt the top blocks (top {unfreeze} of "
               f"{num_blocks}); the lower, generic features stay frozen")
    elif (quality < thresholds.scratch_gain
          and median >= thresholds.scratch_per_class):
        approach, rule = "scratch", "large + different, features near chance"
        why = ("the pretrained features barely beat chance and there are "
               f"at least {thresholds.scratch_per_class} images per class")
    else:
        approach, rule = "finetune", "large + different"
        why = "enough labels to adapt every block from the pretrained start"
    return {"situation": situation, "approach": approach,
            "unfreeze": unfreeze, "rule": rule,
            "reason": f"{size_text}; {evidence}. Situation: {situation} -> "
                      f"{approach}: {why}."}


def summary_lines(measurements, decision):
    """The decision as a few readable lines for the terminal."""
    m = measurements
    lines = [f"Advisor ({m.get('seconds', 0):.1f} s, {m['sample']} sampled "
             f"training images, {m['num_classes']} classes, chance "
             f"{m['chance']:.3f}):"]
    labels = {"last": "last layer", "earlier": f"earlier "
              f"({m.get('earlier_layer')})", "reference": "random-init "
              "reference"}
    for key, label in labels.items():
        if m.get(key):
            scores = ", ".join(f"{k} {v:.3f}" for k, v in m[key].items())
            lines.append(f"  {label:<28} {scores}")
    if m.get("scratch"):
        run = m["scratch"]
        planned = run.get("planned_epochs", run["epochs"])
        label = (f"scratch run ({run['epochs']} epochs)" if planned ==
                 run["epochs"] else f"scratch run ({run['epochs']} of "
                 f"{planned} epochs)")
        curve = " ".join(f"{v:.2f}" for v in run["val_accuracy_curve"])
        lines.append(f"  {label:<28} val_accuracy {run['val_accuracy']:.3f} "
                     f"(best of {curve}; {run['seconds']:.1f} s)")
    for problem in m["problems"]:
        lines.append(f"  note: {problem}")
    lines.append(f"  situation: {decision['situation']} (rule: "
                 f"{decision['rule']})")
    unfreeze = (f", unfreeze {decision['unfreeze']}"
                if decision["approach"] == "finetune" else "")
    lines.append(f"  choice: {decision['approach']}{unfreeze}")
    lines.append(f"  why: {decision['reason']}")
    return lines


# --- Entry points ----------------------------------------------------------

def scratch_epochs(config):
    """Epochs of the advisor's short scratch run: --advisor_scratch_fraction
    of --epochs (the epochs --approach=scratch trains), rounded up; 0 when
    the fraction is 0."""
    return math.ceil(config.advisor_scratch_fraction * config.epochs)


def advise_run(model, data, config, blocks):
    """Measures and decides for a run; returns the decision record that
    goes to <workdir>/decision.json (measurements, thresholds, situation,
    choice, reason)."""
    thresholds = Thresholds.from_config(config)
    measurements = measure(model, data, config, blocks)
    decision = decide(measurements, thresholds, len(blocks))
    epochs = scratch_epochs(config)
    if epochs and decision["approach"] == "scratch":
        measurements["problems"].append(
            "scratch run: skipped, the decision is scratch already")
    elif epochs:  # the one measurement that trains: only when it may matter
        probe = measurements.get("last", {}).get("probe_accuracy")
        enough = None if probe is None else (
            lambda accuracy: scratch_matches(
                accuracy, probe, measurements.get("num_val", 0),
                thresholds.tie_se))
        run = scratch_run(model, data, config, epochs, enough)
        measurements["scratch"] = run
        measurements["seconds"] = round(measurements["seconds"]
                                        + run["seconds"], 1)
        decision = decide(measurements, thresholds, len(blocks))
    for line in summary_lines(measurements, decision):
        log.info("%s", line)
    return {"backbone": config.backbone, "weights": config.weights,
            "measurements": measurements,
            "thresholds": dataclasses.asdict(thresholds), **decision}


def advise(config, data=None):
    """--mode=advise: measure the data with the base and write the
    decision `--approach=auto` would take, without training.

    Returns:
      The decision record (also in <workdir>/decision.json).
    """
    config.validate(require_data_dir=data is None)
    model, data, blocks = _classifier_and_data(config, config.backbone,
                                               data)
    record = advise_run(model, data, config, blocks)
    _write_record(config.workdir, "decision.json", record)
    return record


def rank(config, data=None):
    """--mode=rank: scores each of --backbones on the data (one feature
    pass each) and prints them ranked by their mean rank over LogME, kNN
    and linear-probe accuracy.

    Returns:
      The rows, best first (also in <workdir>/ranking.json).
    """
    config.validate(require_data_dir=data is None)
    names = [b.strip() for b in config.backbones.split(",") if b.strip()]
    for name in names:  # every name checked before any work
        if not name.endswith(".keras"):
            backbones.get_backbone_spec(name)
    rows, data_by_size = [], {}
    for name in names:
        log.info("Ranking: measuring %s", name)
        built = backbones.build_backbone(name, config.weights,
                                         config.image_size)
        # The folder is scanned and checked once per input size.
        if data is not None:
            data_for = data
        elif built.image_size not in data_by_size:
            data_for = data_by_size[built.image_size] = (
                data_lib.make_datasets(config, built.image_size))
        else:
            data_for = data_by_size[built.image_size]
        model = transfer.build_classifier(built, len(data_for.class_names),
                                          0.0)
        blocks = built.blocks()
        m = measure(model, data_for, config.replace(backbone=name), blocks)
        rows.append({"backbone": name, **m.get("last", {}),
                     "seconds": m["seconds"], "problems": m["problems"]})
    keys = ("logme", "knn_accuracy", "probe_accuracy")
    for key in keys:
        order = sorted(rows, key=lambda r: -r.get(key, -np.inf))
        for position, row in enumerate(order, start=1):
            row.setdefault("ranks", {})[key] = position
    for row in rows:
        row["mean_rank"] = round(float(np.mean(list(row["ranks"].values()))),
                                 2)
    rows.sort(key=lambda r: (r["mean_rank"], -r.get("logme", -np.inf)))
    print(f"\nBackbones ranked on {config.data_dir or 'the data'} "
          f"(chance {1 / len(data_for.class_names):.3f}):")
    print(f"  {'#':>2}  {'backbone':<28} {'LogME':>8} {'kNN':>6} "
          f"{'probe':>6} {'mean rank':>9} {'time':>7}")
    for i, row in enumerate(rows, start=1):
        name = os.path.basename(row["backbone"])[-28:]
        print(f"  {i:>2}  {name:<28} "
              f"{row.get('logme', float('nan')):8.3f} "
              f"{row.get('knn_accuracy', float('nan')):6.3f} "
              f"{row.get('probe_accuracy', float('nan')):6.3f} "
              f"{row['mean_rank']:9.2f} {row['seconds']:6.1f}s")
    _write_record(config.workdir, "ranking.json", {"ranking": rows})
    return rows


def _classifier_and_data(config, name, data):
    built = backbones.build_backbone(name, config.weights, config.image_size)
    if data is None:
        data = data_lib.make_datasets(config, built.image_size)
    model = transfer.build_classifier(built, len(data.class_names), 0.0)
    return model, data, built.blocks()


def _write_record(workdir, name, record):
    from tl_keras.train import write_json  # train imports this module

    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, name)
    write_json(path, record)
    log.info("Wrote %s", path)
