"""Image sources -> train / validation / test `tf.data` pipelines.

Images are decoded once, resized to the model's square input as uint8 (the
same `resize_images` the export uses, so training and serving see the same
pixels), cached in memory when they fit, shuffled in an order that depends
only on (seed, stage, epoch), batched, augmented in `tf.data` (never inside
the model) and prefetched.
"""

import dataclasses
import logging
import zlib

import keras
import numpy as np
import tensorflow as tf

from tl_keras.config import Config, DataConfig
from tl_keras.config.fields import check_types, home_expanded, plain_numbers
from tl_keras.data.arrays import (
    carve_arrays,
    check_trained_classes,
    checked_arrays,
    drop_array_copies,
    fingerprint,
)
from tl_keras.data.augment import augment
from tl_keras.data.balance import say_imbalance
from tl_keras.data.copies import drop_copies
from tl_keras.data.folders import (
    carve_missing_splits,
    check_given_splits,
    class_counts,
    scan_folder,
)
from tl_keras.data.images import decode_image, find_unreadable, resize_images
from tl_keras.errors import check_range, fail

log = logging.getLogger("tl_keras")

AUTOTUNE = tf.data.AUTOTUNE
# Elements the per-epoch shuffle holds. Folders list their files class by
# class, so the training list is first put in a seeded random order
# (`_mixed`): a buffer smaller than the set then still mixes classes.
SHUFFLE_BUFFER = 10000


@dataclasses.dataclass
class ImageData:
    """The three pipelines and what is known about them.

    Attributes:
      train, val: batched datasets of (float32 images in [0, 255], int32
        labels); train is shuffled and augmented (with mixup or cutmix its
        labels are float32 per-class weights, (batch, classes)).
      test: as val, or None when no test images were held out.
      class_names: class names in label order.
      counts: images per split, e.g. {'train': 120, 'val': 20, 'test': 20}.
      class_counts: per split, images per class name.
      bad_files: image-named files that could not be decoded (skipped).
      skipped_files: files ignored (extension, outside class folders).
      copy_files: files left out as byte-for-byte copies of another
        image (`copies.drop_copies`); None when copies were kept.
      files: per split, the (path, label) pairs, or None for arrays.
      cached: whether decoded images are cached in memory.
      train_ordered: the training images in a fixed order, not shuffled
        or augmented (for extracting features once).
      shuffle: the `EpochShuffle` that orders the training set; fit runs
        its `callback()` so each epoch's order depends only on
        (seed, stage, epoch), and a resumed run sees the same order as an
        uninterrupted one.
      image_size, batch_size, data_config: what the pipelines were built
        at and with (None for an `ImageData` built by hand); `train`
        checks them against its config.
      fingerprint: for arrays, a digest of the images and labels given
        (a resumed run is checked against it).
    """

    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset | None
    class_names: list
    counts: dict
    class_counts: dict
    bad_files: list = dataclasses.field(default_factory=list)
    skipped_files: list = dataclasses.field(default_factory=list)
    copy_files: list | None = dataclasses.field(default_factory=list)
    files: dict | None = None
    cached: bool = False
    train_ordered: tf.data.Dataset | None = None
    shuffle: "EpochShuffle | None" = None
    image_size: int | None = None
    batch_size: int | None = None
    data_config: DataConfig | None = None
    fingerprint: str = ""


class EpochShuffle:
    """The training order as a function of (seed, stage, epoch).

    The same goes for the random state of augmentation and dropout
    (`track`).

    `tf.data`'s `reshuffle_each_iteration` draws each epoch's order from a
    generator that starts over in a new process, so a run resumed at epoch
    5 would replay epoch 1's order and end with other weights than an
    uninterrupted run. Here the order is drawn from a seed computed from an
    epoch counter that `callback()` sets before each epoch, so it is the
    same whether or not the run was interrupted, and the same on every
    worker of a multi-worker run.

    Create it outside any distribution strategy scope: its counter is a
    plain local variable read by the input pipeline.
    """

    def __init__(self, seed):
        self.seed = int(seed)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False,
                                 name="shuffle_epoch")
        self._groups = {}  # name -> random-generator states set per epoch

    def track(self, group, states):
        """Also sets these random-generator states (`augment.seed_states`:
        the augmentation's, the model's dropout) from (seed, stage, epoch,
        group, position) before each epoch, so a resumed epoch draws what
        it would have. Tracking a group again replaces it (a new model in
        a compare's next run)."""
        self._groups[group] = list(states)

    def apply(self, ds, n):
        """Shuffles the n elements of `ds` in this epoch's order."""
        seed, epoch = self.seed, self.epoch

        def one_epoch(_):
            # The shuffle's seed pair includes the graph-level seed, which
            # a traced function inherits from the global seed at trace
            # time; fixing it here (for this function's graph only) makes
            # the order independent of whether tf.random.set_seed ran.
            tf.compat.v1.set_random_seed(seed)
            return ds.shuffle(min(n, SHUFFLE_BUFFER),
                              seed=seed * 1000003 + epoch.read_value(),
                              reshuffle_each_iteration=False)

        return tf.data.Dataset.from_tensors(0).flat_map(one_epoch).apply(
            tf.data.experimental.assert_cardinality(n))

    def set_epoch(self, stage_index, epoch):
        self.epoch.assign(stage_index * 100000 + epoch)
        for group, states in self._groups.items():
            tag = zlib.crc32(group.encode())
            for i, state in enumerate(states):
                value = np.random.default_rng(
                    [self.seed, stage_index, epoch, tag, i]).integers(0, 2**31)
                state.assign(np.array([value, 0], state.dtype))

    def callback(self, stage_index):
        """A Keras callback that selects each epoch's order."""
        return keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs=None: self.set_epoch(
                stage_index, epoch))


def data_section(config):
    """The DataConfig of `config` (a Config, a DataConfig, or None for the
    defaults)."""
    if config is None:
        return DataConfig()
    if not isinstance(config, (Config, DataConfig)):
        fail("config", "a tl_keras.Config, its DataConfig or None",
             type(config).__name__)
    return config if isinstance(config, DataConfig) else config.data


def _checked_section(config, image_size):
    """The data section of `config`, checked (a caller of `make_datasets`
    or `from_arrays` may not have validated it), and the image size."""
    config = home_expanded(plain_numbers(data_section(config)))
    check_types(config)
    config.validate()
    check_range("image_size", image_size, 1, 4096)
    return config


def make_datasets(config, image_size, keep_copies=False):
    """Builds the pipelines of `config.data_dir`.

    Args:
      config: a `DataConfig` (or a whole `Config`: its data section).
      image_size: the model's square input size.
      keep_copies: keep byte-for-byte copies (`copies.drop_copies`), for
        a run resumed that started before they were left out.

    The folder holds one sub-folder per class, or `train/`, `val/` (or
    `validation/`) and `test/` folders that each hold the class folders.
    Splits that have no folder are carved from the training images, per
    class, deterministically from `config.seed`.

    Raises:
      ValueError: missing or empty folder, a class without images, fewer
        than two classes, or a class too small to split.
    """
    config = _checked_section(config, image_size)
    if not isinstance(keep_copies, bool):  # "no" kept them
        fail("keep_copies", "True or False", keep_copies)
    files, class_names, skipped, bad, copies = _images_of(config,
                                                          keep_copies)
    files = carve_missing_splits(files, config, class_names)
    files["train"] = [files["train"][i]
                      for i in _mixed(len(files["train"]), config.seed)]
    total = sum(len(v) for v in files.values())
    cache = total * image_size * image_size * 3 <= (
        config.cache_budget_mb * 2**20)
    sources = {split: file_source(pairs, image_size) if pairs else None
               for split, pairs in files.items()}
    shuffle = EpochShuffle(config.seed)
    datasets = {
        split: _pipeline(source, len(files[split]), config,
                         training=split == "train", cache=cache,
                         shuffle=shuffle, num_classes=len(class_names))
        if source is not None else None
        for split, source in sources.items()
    }
    data = ImageData(
        train=datasets["train"], val=datasets["val"],
        test=datasets.get("test"), class_names=class_names,
        counts={k: len(v) for k, v in files.items()},
        class_counts={k: class_counts(v, class_names)
                      for k, v in files.items()},
        bad_files=bad, skipped_files=skipped, copy_files=copies,
        files=files, cached=cache,
        train_ordered=_pipeline(sources["train"], len(files["train"]),
                                config, training=False, cache=False),
        shuffle=shuffle, image_size=image_size,
        batch_size=config.batch_size, data_config=config)
    log.info("Data: %d classes; %s images; %s in memory", len(class_names),
             " / ".join(f"{k} {v}" for k, v in data.counts.items()),
             "cached" if cache else "not cached")
    say_imbalance(data.class_counts["train"])
    return data


def _images_of(config, keep_copies):
    """The folder's images per given split, without the unreadable
    files and (unless `keep_copies`) the copies: (files, class_names,
    skipped, bad, copies), each left-out kind said in the log."""
    files, class_names, skipped = scan_folder(config.data_dir)
    bad = find_unreadable([p for split in files.values() for p, _ in split])
    if bad:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        log.warning("Skipping %d file(s) that are not readable images: %s",
                    len(bad), shown)
        bad_set = set(bad)
        files = {k: [(p, y) for p, y in v if p not in bad_set]
                 for k, v in files.items()}
    files, copies = (files, None) if keep_copies else drop_copies(
        files, class_names)
    check_given_splits(files, class_names, config.data_dir)
    return files, class_names, skipped, bad, copies


def from_arrays(x, y, config, image_size, class_names=None, x_val=None,
                y_val=None, x_test=None, y_test=None):
    """Builds the pipelines from in-memory arrays.

    Args:
      x: images, (n, height, width, channels) with 1, 3 or 4 channels,
        uint8 or float in [0, 255].
      y: integer labels, (n,).
      config: a `DataConfig` (batch size, splits, seed, augmentation), a
        whole `Config` (its data section) or None (the defaults).
      image_size: the model's square input size.
      class_names: names in label order; default '0', '1', ...
      x_val, y_val, x_test, y_test: explicit splits; missing ones are
        carved from (x, y) per class with the config's fractions.

    Raises:
      ValueError: bad shapes, labels or value range.
    """
    config = _checked_section(config, image_size)
    arrays, class_names = checked_arrays(
        x, y, {"val": (x_val, y_val), "test": (x_test, y_test)}, class_names)
    # The digest of the arrays trained on: a run of tl_keras before
    # copies were left out, resumed on arrays holding some, is refused
    # (it would go on with other images and splits).
    arrays = drop_array_copies(arrays, class_names)
    given = fingerprint(arrays)
    check_trained_classes(arrays, class_names)
    arrays = carve_arrays(arrays, config, class_names)
    order = _mixed(len(arrays["train"][1]), config.seed)
    arrays["train"] = tuple(a[order] for a in arrays["train"])
    datasets, sources = {}, {}
    shuffle = EpochShuffle(config.seed)
    for k, (images, labels) in arrays.items():
        sources[k] = tf.data.Dataset.from_tensor_slices((images, labels)).map(
            lambda im, lab: (resize_images(im, image_size), lab),
            num_parallel_calls=AUTOTUNE)
        datasets[k] = (_pipeline(sources[k], len(labels), config,
                                 k == "train", cache=True, shuffle=shuffle,
                                 num_classes=len(class_names))
                       if len(labels) else None)
    data = ImageData(
        train=datasets["train"], val=datasets["val"],
        test=datasets.get("test"), class_names=class_names,
        counts={k: len(v[1]) for k, v in arrays.items()},
        class_counts={k: {name: int((v[1] == i).sum()) for i, name in
                          enumerate(class_names)} for k, v in arrays.items()},
        cached=True, fingerprint=given, data_config=config,
        train_ordered=_pipeline(sources["train"], len(arrays["train"][1]),
                                config, training=False, cache=False),
        shuffle=shuffle, image_size=image_size,
        batch_size=config.batch_size)
    say_imbalance(data.class_counts["train"])
    return data


def file_source(pairs, image_size):
    paths = [p for p, _ in pairs]
    labels = np.array([y for _, y in pairs], dtype=np.int32)

    def load(path, label):
        image = decode_image(tf.io.read_file(path))
        return resize_images(image, image_size), label

    # No ignore_errors() here: it would make the dataset's length unknown
    # (no progress bar, a Keras warning each run); unreadable files were
    # already removed by find_unreadable.
    return tf.data.Dataset.from_tensor_slices((paths, labels)).map(
        load, num_parallel_calls=AUTOTUNE)


def full_batches(ds, batch_size, n):
    """Drops the last, partial batch of a batched dataset of n elements.

    With several replicas a partial batch is split unevenly, and each
    replica's mean loss counts equally in the all-reduced gradient, so its
    few examples would be over-weighted. The dropped examples differ each
    epoch (the set is reshuffled).
    """
    return ds.filter(lambda x, y: tf.shape(y)[0] == batch_size).apply(
        tf.data.experimental.assert_cardinality(n // batch_size))


def _pipeline(source, n, config, training, cache, shuffle=None,
              num_classes=None):
    ds = source.cache() if cache else source
    if training:
        ds = shuffle.apply(ds, n)
    ds = ds.batch(config.batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    if training:
        ds = augment(ds, config, shuffle, num_classes)
    return ds.prefetch(AUTOTUNE)


def _mixed(n, seed):
    """A seeded random order of n training examples (see SHUFFLE_BUFFER)."""
    return np.random.default_rng([seed, 2]).permutation(n)
