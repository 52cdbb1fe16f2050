"""Measuring the data with the base: pooled features of a sample, scored.

One pass of the frozen base over a bounded sample of the training images
(and the validation images) gives pooled features from the last layer and
from one earlier block, plus the same architecture with random weights as
a reference. `measure` scores each (`scores.score_features`) next to
chance level; `decision.decide` turns the scores into an approach.
"""

import logging
import math
import time

import keras
import numpy as np

from tl_keras import inference
from tl_keras.advisor.scores import score_features
from tl_keras.data.pipelines import sample_training_set
from tl_keras.errors import InputError
from tl_keras.models.backbones import list_blocks

log = logging.getLogger("tl_keras")


def measure(model, data, config, blocks=None):
    """Scores the frozen base of `model` on a sample of `data`.

    Args:
      model: a classifier from `models.build_classifier` (its base is
        run in inference mode; nothing in it is trained).
      data: an `ImageData`.
      config: the run's Config (sample size, seed).
      blocks: the base's blocks (`models.list_blocks`), for the earlier
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
    blocks = blocks if blocks is not None else list_blocks(base)
    earlier = _earlier_layer(base, blocks)
    extractor = _extractor(model, base, earlier)
    seed = config.data.seed
    sample_ds, sampled = sample_training_set(
        data, config.advisor.advisor_sample, seed)
    out["sample"] = sampled
    train = _features(extractor, sample_ds, sampled)
    val = _features(extractor, data.val, data.counts["val"])
    out["earlier_layer"] = earlier
    for key, (train_f, val_f) in {"last": (train[0], val[0]),
                                  "earlier": (train[1], val[1])}.items():
        if key == "earlier" and earlier is None:
            continue
        out[key] = score_features(train_f, train[2], val_f, val[2], seed,
                           key, out["problems"])
    reference = _reference_scores(model, base, sample_ds, sampled, data.val,
                                  data.counts["val"], seed, out["problems"])
    if reference:
        out["reference"] = reference
    out["seconds"] = round(time.time() - start, 1)
    return out


def _reference_scores(model, base, sample_ds, sampled, val_ds, val_count,
                      seed, problems, calibration_images=128):
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

    keras.utils.set_random_seed(seed)  # the same reference each time
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
    return score_features(train[0], train[2], val[0], val[2], seed,
                   "reference", problems)


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

    def run(x):
        maps = multi(preprocess(x), training=False)
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        return [pool(m) for m in maps]

    return inference.traced(run, model)


def _features(extractor, ds, n):
    """Pooled features of the n images of batched `ds`: (last layer,
    earlier layer or None, labels)."""
    outputs, labels = inference.run_batched(extractor, ds, n)
    return (np.asarray(outputs[0], np.float64),
            np.asarray(outputs[1], np.float64) if len(outputs) > 1 else None,
            labels.astype(np.int64))
