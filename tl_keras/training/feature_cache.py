"""The head stage on cached features: the frozen base runs once.

While the base is frozen it is a fixed function, so running it every
epoch (the Keras guide's loop) repeats the same work. Here the base runs
once over the training and validation images, the pooled features are
kept, and the head trains on them. The head model shares its layers with
the full classifier, so when it is done the full model already holds the
trained head: nothing to graft, the result is the same Keras model.

Without augmentation this is exactly the full loop (same order, same
head weights to float tolerance). With augmentation, `K` views of the
training set are cached, the first of the images as they are (also the
source of the head's feature statistics, as in the full loop) and K - 1
augmented draws, and epoch e trains on view e mod K (an approximation of
fresh augmentations every epoch); with K = 0 the head stage runs the
full loop. A transfer run also keeps the features of the split it is
evaluated on (`cache_plan`), so its evaluation runs only the head.

Features that fit in `--cache_budget_mb` stay in memory; larger ones are
written to `<workdir>/features/` (one .npy per split plus `meta.json`
with a fingerprint of everything they depend on). A resumed run reuses a
complete file whose fingerprint matches and refuses one that does not.
"""


import hashlib
import json
import logging
import os
import shutil
import time

import keras
import numpy as np
import tensorflow as tf

from tl_keras import inference, io
from tl_keras.data.augment import build_augmenter
from tl_keras.data.sampling import STATISTICS_SAMPLE, sample_indices
from tl_keras.errors import InputError
from tl_keras.models.classifier import standardize_head

log = logging.getLogger("tl_keras")


def feature_extractor(model):
    """A function images -> pooled features of the classifier `model`,
    traced once for every batch size (eager calls would dispatch the base
    op by op), the last partial batch included."""
    extractor = keras.Model(model.input, model.get_layer("pool").output)

    def features_of(x):
        # float32 even under a mixed precision policy: the head's input.
        return tf.cast(extractor(x, training=False), tf.float32)

    return inference.traced(features_of, model)


def extract_features(extractor, ds, n, description, out=None):
    """Runs `extractor` (from `feature_extractor`) over `ds`, a batched
    dataset of n (images, labels), in batches sized for inference
    (`inference.run_batched`), showing its progress (`inference.Progress`).

    Args:
      out: optional array [n, channels] to fill (e.g. a memory-mapped
        file); default a new array.

    Returns:
      (features float32 [n, channels], labels int32 [n]).
    """
    log.info("Extracting %s features with the frozen base", description)
    features, labels = inference.run_batched(
        extractor, ds, n, out=out,
        progress=f"Extracting {description} features")
    return features, labels.astype(np.int32)


def build_head_model(model):
    """A model from pooled features to logits that shares the classifier's
    head layers (training it trains the classifier's head)."""
    channels = model.get_layer("pool").output.shape[-1]
    inputs = keras.Input((channels,), name="features")
    x = inputs
    names = [layer.name for layer in model.layers]
    if "feature_norm" in names:
        x = model.get_layer("feature_norm")(x)
    if "head_dropout" in names:
        x = model.get_layer("head_dropout")(x)
    logits = model.get_layer("logits")(x)
    return keras.Model(inputs, logits, name="cached_head")


def make_feature_datasets(model, data, config, plan, workdir):
    """Extracts (or reuses) the features; returns (head_model, train_ds,
    val_ds, seconds spent extracting, the evaluation split's (features,
    labels) or None).

    Args:
      config: the run's `DataConfig` (batch size, augmentation, seed).
      plan: from `cache_plan.cache_plan`; with 'evaluation' 'test' the
        test split is extracted too (in memory, never spilled).
    """
    start = time.time()
    test = None
    if plan["spill"]:
        train_x, train_y, val_x, val_y = _spilled_features(
            model, data, config, plan["views"], workdir)
    else:
        train_x, train_y, val_x, val_y, test = _features_in_memory(
            model, data, config, plan["views"],
            test=plan["evaluation"] == "test")
    seconds = time.time() - start
    evaluation = {"test": test, "val": (val_x, val_y)}.get(
        plan["evaluation"])
    # The head's feature statistics, of the images as they are (what
    # validation sees; an augmented view's put it off centre, about 5
    # points on HED-VGG16, bench/RESULTS.md): the full loop's sample, from
    # the first view.
    standardize_head(model, np.asarray(train_x[0][sample_indices(
        len(train_y), STATISTICS_SAMPLE, config.seed,
        np.asarray(train_y) if data.files else None)]))
    batch_size = config.batch_size
    views = plan["views"]
    epoch = data.shuffle.epoch
    train_rows, val_rows = _row_reader(train_x), _row_reader(val_x)

    def gather_train(index):
        # Epoch e of the stage trains on view e mod K.
        view = (epoch.read_value() % 100000) % views
        return train_rows(index, view), tf.gather(train_y, index)

    # The same EpochShuffle as the image pipeline: shuffling indices gives
    # the same permutation as shuffling the images, so both paths see the
    # examples in the same order.
    n = len(train_y)
    train = data.shuffle.apply(tf.data.Dataset.range(n), n).batch(
        batch_size).map(gather_train).prefetch(tf.data.AUTOTUNE)
    val = tf.data.Dataset.range(len(val_y)).batch(batch_size).map(
        lambda index: (val_rows(index), tf.gather(val_y, index)))
    return build_head_model(model), train, val, seconds, evaluation


def _row_reader(array):
    """A function (index, view=None) -> rows `index` of `array`
    ([views,] n, channels), held in memory or memory-mapped from a file
    (then read in the input pipeline, batch by batch)."""
    channels = array.shape[-1]
    if not isinstance(array, np.memmap):
        table = tf.constant(array)  # once, captured by the pipeline

        def rows(index, view=None):
            return tf.gather(table[view] if view is not None else table,
                             index)
        return rows

    def read(index, view):
        source = array[int(view)] if array.ndim == 3 else array
        return np.asarray(source[index], np.float32)

    def rows(index, view=None):
        out = tf.numpy_function(
            read, [index, view if view is not None else tf.constant(
                0, tf.int64)], tf.float32, stateful=False)
        out.set_shape((None, channels))
        return out
    return rows


def _extract_splits(model, data, config, views, train_out=None,
                    val_out=None, test=False):
    """Extracts every training view, the validation set and with `test`
    the test set (in memory), into the given arrays ([views, n, channels]
    and [n, channels], e.g. memory-mapped files) or new ones. One
    extractor, traced once, serves the validation and test sets and,
    without augmentation, every view.

    Returns:
      (list of per-view training features, training labels, validation
      features, validation labels, the test split's (features, labels)
      or None).
    """
    plain = feature_extractor(model)
    train, train_y = [], None
    for view in range(views):
        x, train_y = extract_features(
            plain, _view_images(data.train_ordered, config, view),
            data.counts["train"], _describe(view, views),
            out=None if train_out is None else train_out[view])
        train.append(x)
    val_x, val_y = extract_features(plain, data.val, data.counts["val"],
                                    "validation", out=val_out)
    test_features = (extract_features(plain, data.test,
                                      data.counts["test"], "test")
                     if test else None)
    return train, train_y, val_x, val_y, test_features


def _features_in_memory(model, data, config, views, test=False):
    """`_extract_splits` into new arrays, the views stacked."""
    train, train_y, val_x, val_y, test_features = _extract_splits(
        model, data, config, views, test=test)
    return np.stack(train), train_y, val_x, val_y, test_features


def _spilled_features(model, data, config, views, workdir):
    folder = os.path.join(workdir, "features")
    meta_path = os.path.join(folder, "meta.json")
    fingerprint = _fingerprint(model, data, config, views)
    if os.path.isfile(meta_path):
        stored = io.read_json(meta_path)["fingerprint"]
        diffs = [k for k in fingerprint if stored.get(k) != fingerprint[k]]
        if diffs:
            raise InputError(
                f"Invalid feature cache {folder}: it was computed for other "
                f"inputs (differs in: {', '.join(diffs)}), so reusing it "
                f"would train on stale features. Allowed: delete that "
                f"folder, or --overwrite to start the run over. Received: "
                f"a cache with {', '.join(diffs)} = "
                f"{', '.join(str(stored.get(k, 'absent')) for k in diffs)}")
        log.info("Reusing the cached features in %s", folder)
        return _load_spilled(folder)
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # a crash mid-extraction
    channels = model.get_layer("pool").output.shape[-1]
    n_train, n_val = data.counts["train"], data.counts["val"]
    _check_room(workdir, 4 * channels * (views * n_train + n_val))
    os.makedirs(tmp)
    train_x = np.lib.format.open_memmap(
        os.path.join(tmp, "train.npy"), "w+", np.float32,
        (views, n_train, channels))
    val_x = np.lib.format.open_memmap(
        os.path.join(tmp, "val.npy"), "w+", np.float32, (n_val, channels))
    _, train_y, _, val_y, _ = _extract_splits(
        model, data, config, views, train_out=train_x, val_out=val_x)
    train_x.flush()
    val_x.flush()
    del train_x, val_x
    np.save(os.path.join(tmp, "train_labels.npy"), train_y)
    np.save(os.path.join(tmp, "val_labels.npy"), val_y)
    io.write_json(os.path.join(tmp, "meta.json"),
                  {"fingerprint": fingerprint})
    io.commit(tmp, folder)
    log.info("Wrote features to %s", folder)
    return _load_spilled(folder)


def _check_room(workdir, size):
    """Raises InputError when the workdir's disk has no room for `size`
    bytes of features (plus 64 MiB for the run's other files): the files
    are memory-mapped, and a full disk killed the process with a bus
    error after minutes of extraction, naming nothing."""
    where = os.path.abspath(workdir)
    while not os.path.exists(where):  # the disk it will be made on
        where = os.path.dirname(where)
    try:
        usage = shutil.disk_usage(where)
    except OSError:  # a filesystem that does not say: not checked
        return
    if usage.total and usage.free < size + 2**26:
        free = usage.free / 2**20
        raise InputError(
            f"Invalid workdir {workdir!r}: the features spill to a file "
            f"there ({size / 2**20:.1f} MiB beyond --cache_budget_mb), and "
            f"its disk has {free:.1f} MiB free. Allowed: a workdir on a "
            f"disk with room, fewer --feature_cache_views, a larger "
            f"--cache_budget_mb (in memory), or --feature_cache=false. "
            f"Received: a disk with {free:.1f} MiB free")


def _load_spilled(folder):
    def load(name, mmap=True):
        return np.load(os.path.join(folder, name),
                       mmap_mode="r" if mmap else None)
    return (load("train.npy"), load("train_labels.npy", False),
            load("val.npy"), load("val_labels.npy", False))


def remove_spilled(workdir):
    """Deletes a spilled feature cache (and one a kill left half written)
    once a stage is done: whether or not this try spilled (an earlier try
    with a smaller --cache_budget_mb may have), and when a done stage is
    skipped (a kill between its done.json and the removal). Only frozen
    stages read it, and a run has one (the head)."""
    for name in ("features", "features.tmp"):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)


def _fingerprint(model, data, config, views):
    """What the features depend on: the base's weights, the images (paths,
    labels, sizes, modification times; for arrays only the class counts)
    and their order, the input size and the views (with augmentation the
    first is of the images as they are: older caches augmented it)."""
    digest = hashlib.sha1()
    for weight in model.get_layer("backbone").weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(
            weight)).tobytes())
    files = hashlib.sha1()
    for split in ("train", "val"):
        for path, label in (data.files or {}).get(split, []):
            stat = os.stat(path)
            files.update(f"{split}|{path}|{label}|{stat.st_size}|"
                         f"{stat.st_mtime_ns}\n".encode())
    return {
        "base_weights": digest.hexdigest(),
        "images": files.hexdigest() if data.files else json.dumps(
            data.class_counts, sort_keys=True),
        "image_size": int(model.input.shape[1]),
        "views": views,
        "augment": ",".join(config.augmentations()) or "none",
        "seed": config.seed,
        **({"first_view": "as they are"} if config.augmentations() else {}),
    }


def _view_images(ds, config, view):
    """The batched training images `ds` of view `view`: the first as they
    are, each other augmented with a seed of its own, in `tf.data`, batch
    after batch at the pipeline's batch size (the run's --batch_size).
    Random layers draw per call, so a view is the same images only in the
    same batches: augmented inside the forward pass, whose batch is 4 per
    usable CPU core, the views (and a resumed run's head) changed with
    the cores a process was given."""
    names = config.augmentations()
    if not names or view == 0:
        return ds
    augmenter = build_augmenter(names, config.seed + 7919 * (view + 1))
    return ds.map(lambda x, y: (augmenter(x, training=True), y),
                  num_parallel_calls=None)  # in order: one state, in turn


def _describe(view, views):
    return "training" if views == 1 else (
        f"training (view {view + 1}/{views}{'' if view else ', as they are'})")
