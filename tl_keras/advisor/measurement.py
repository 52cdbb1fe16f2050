"""Measuring the data with the base: pooled features of a sample, scored.

One pass of the frozen base over a bounded sample of the training images
(and the validation images) gives pooled features from the last layer and
from two earlier blocks (`candidate_blocks`). `measure` scores each
(`scores.score_features`) next to chance level and trains the run's own
head on each (`head_run.head_accuracy`); `decision.decide` turns the
heads' validation accuracies into estimates of transfer from each layer.
"""

import logging
import math
import time

import keras
import numpy as np

from tl_keras import inference
from tl_keras.advisor.head_run import head_accuracy
from tl_keras.advisor.scores import score_features
from tl_keras.data.sampling import sample_training_set
from tl_keras.errors import InputError, fail
from tl_keras.models.backbones import block_map, block_output, list_blocks

log = logging.getLogger("tl_keras")


def measure(model, data, config, blocks=None, layers=True):
    """Scores the frozen base of `model` on a sample of `data`.

    Args:
      model: a classifier from `models.build_classifier` (its base is
        run in inference mode; nothing in it is trained).
      data: an `ImageData`.
      config: the run's Config (sample size, seed).
      blocks: the base's blocks (`models.list_blocks`), for the earlier
        layers; default computed.
      layers: also score the earlier blocks (`candidate_blocks`) under
        'layers', and train the run's head on each layer (rank needs the
        last layer's scores only).

    Returns:
      A dict of measurements (see `decide`), with 'problems' listing any
      score that could not be computed and why.
    """
    start = time.time()
    check_sample(config, data)
    counts = data.class_counts["train"]
    names = data.class_names
    per_class = sorted(counts[name] for name in names)
    out = {
        "num_classes": len(names),
        "num_train": data.counts["train"],
        "num_val": data.counts["val"],
        "images_per_class": {"min": per_class[0],
                             "median": float(np.median(per_class)),
                             "max": per_class[-1]},
        "chance": majority_share(data),
        "problems": [],
    }
    base = model.get_layer("backbone").base
    blocks = blocks if blocks is not None else list_blocks(base)
    earlier = candidate_blocks(blocks, base) if layers else []
    extractor = _extractor(model, base, blocks, earlier)
    seed = config.data.seed
    sample_ds, sampled = sample_training_set(
        data, config.advisor.advisor_sample, seed)
    out["sample"] = sampled
    train_f, train_y = _features(extractor, sample_ds, sampled, "training")
    val_f, val_y = _features(extractor, data.val, data.counts["val"],
                             "validation")
    for i, key in enumerate(["last"] + earlier):
        scores = _layer_scores(train_f[i], train_y, val_f[i], val_y, config,
                               key, out, heads=layers)
        if i == 0:
            out["last"] = scores
        else:
            out.setdefault("layers", {})[key] = scores
    out["seconds"] = round(time.time() - start, 1)
    return out


def _layer_scores(train_f, train_y, val_f, val_y, config, key, out, heads):
    """One layer's scores (`score_features`), with `heads` the run's head
    trained on its features (`head_accuracy`) wherever a probe could be
    scored (the same images suffice)."""
    scores = score_features(train_f, train_y, val_f, val_y,
                            config.data.seed, key, out["problems"])
    if heads and "probe_accuracy" in scores:
        scores["head_accuracy"] = head_accuracy(
            train_f, train_y, val_f, val_y, config, out["num_train"],
            out["num_classes"])
        log.info("Advisor: the run's head on %s reaches %.3f on validation "
                 "(linear probe %.3f)",
                 "the last layer" if key == "last" else key,
                 scores["head_accuracy"], scores["probe_accuracy"])
    return scores


def candidate_blocks(blocks, base=None):
    """The earlier blocks transfer is estimated from, besides the last
    layer: the body blocks (not 'stem' or 'top') half and three quarters
    up the base (rounded up), e.g. block3 and block4 of VGG16's five. Two
    depths span the small + very different case (generic features from
    the middle) without a probe per block; none when the base has fewer
    than 3 body blocks. Blocks that give no spatial map are skipped (with
    `base`, tokens pooled by its `TokenPooling` count as one, `block_map`)."""
    body = [name for name, _ in blocks if name not in ("stem", "top")]
    if len(body) < 3:
        return []
    picks = []
    for share in (0.5, 0.75):
        name = body[math.ceil(share * len(body)) - 1]
        if name != body[-1] and name not in picks and (
                len(block_output(blocks, name).shape) == 4 if base is None
                else block_map(base, blocks, name) is not None):
            picks.append(name)
    return picks


def _extractor(model, base, blocks, earlier):
    """Pooled features of `base`'s output and of what it passes on after
    each of the `earlier` blocks, on images preprocessed by `model`'s
    preprocessing layer."""
    outputs = [base.output] + [block_map(base, blocks, b) for b in earlier]
    multi = keras.Model(base.inputs, outputs)
    preprocess = model.get_layer("preprocess")
    pool = keras.layers.GlobalAveragePooling2D()

    def run(x):
        maps = multi(preprocess(x), training=False)
        maps = maps if isinstance(maps, (list, tuple)) else [maps]
        return [pool(m) for m in maps]

    return inference.traced(run, model)


def _features(extractor, ds, n, split):
    """Pooled features of the n images of batched `ds` (the `split` named
    in its progress lines): ([last layer, each earlier block], labels)."""
    outputs, labels = inference.run_batched(
        extractor, ds, n, progress=f"Advisor: measuring {split} features")
    return ([np.asarray(o, np.float64) for o in outputs],
            labels.astype(np.int64))


def majority_share(data):
    """Chance: the validation accuracy of a model that answers the most
    frequent class always, 1 / classes on balanced data. On imbalanced
    data 1 / classes understated it (200 : 3 images: 0.5 where answering
    the majority scores 0.97), so a scratch run that learnt only the
    class prior passed as one that trains."""
    counts = data.class_counts.get("val") or {}
    total = sum(counts.values())
    return (max(counts.values()) / total if total
            else 1.0 / len(data.class_names))


def check_sample(config, data):
    """Refuses data the advisor cannot measure, before a run writes
    anything (an auto run wrote its workdir first, and the rerun on the
    corrected data was refused as changed images): a class of fewer than
    2 training images, and an --advisor_sample below the number of
    classes (a random sample that small leaves classes out of every
    measurement, the probes, the heads and the scratch run, which changes
    the decision silently)."""
    counts = data.class_counts["train"]
    too_small = [name for name in data.class_names if counts[name] < 2]
    if too_small:
        received = ", ".join(f"{n}={counts[n]}" for n in too_small)
        raise InputError(
            f"Invalid data for the advisor: class(es) {', '.join(too_small)} "
            f"have fewer than 2 training images. Allowed: at least 2 per "
            f"class. Received: {received}")
    num_classes = len(data.class_names)
    if config.advisor.advisor_sample < num_classes:
        fail("advisor_sample", f"at least the number of classes "
             f"({num_classes})", config.advisor.advisor_sample)
