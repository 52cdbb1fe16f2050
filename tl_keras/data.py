"""Image sources -> train / validation / test `tf.data` pipelines.

Images are decoded once, resized to the model's square input as uint8 (the
same `resize_images` the export uses, so training and serving see the same
pixels), cached in memory when they fit, shuffled, batched, augmented in
`tf.data` (never inside the model, see DESIGN.md), and prefetched.
"""

import concurrent.futures
import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from tl_keras.config import InputError

log = logging.getLogger("tl_keras")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation"),
              "test": ("test",)}
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class ImageData:
    """The three pipelines and what is known about them.

    Attributes:
      train, val: batched datasets of (float32 images in [0, 255], int32
        labels); train is shuffled and augmented.
      test: as val, or None when no test images were held out.
      class_names: class names in label order.
      counts: images per split, e.g. {'train': 120, 'val': 20, 'test': 20}.
      class_counts: per split, images per class name.
      bad_files: image-named files that could not be decoded (skipped).
      skipped_files: files without an image extension (ignored).
      files: per split, the (path, label) pairs, or None for arrays.
      cached: whether decoded images are cached in memory.
      train_ordered: the training images in a fixed order, not shuffled
        or augmented (for extracting features once).
      shuffle: the `EpochShuffle` that orders the training set; fit runs
        its `callback()` so each epoch's order depends only on
        (seed, stage, epoch), and a resumed run sees the same order as an
        uninterrupted one.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset | None
    class_names: list
    counts: dict
    class_counts: dict
    bad_files: list = dataclasses.field(default_factory=list)
    skipped_files: list = dataclasses.field(default_factory=list)
    files: dict | None = None
    cached: bool = False
    train_ordered: tf.data.Dataset | None = None
    shuffle: "EpochShuffle | None" = None
    image_size: int = 0
    batch_size: int = 32


class EpochShuffle:
    """The training order as a function of (seed, stage, epoch).

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

    def apply(self, ds, n):
        """Shuffles the n elements of `ds` in this epoch's order."""
        seed, epoch = self.seed, self.epoch

        def one_epoch(_):
            # The shuffle's seed pair includes the graph-level seed, which
            # a traced function inherits from the global seed at trace
            # time; fixing it here (for this function's graph only) makes
            # the order independent of whether tf.random.set_seed ran.
            tf.compat.v1.set_random_seed(seed)
            return ds.shuffle(min(n, 10000),
                              seed=seed * 1000003 + epoch.read_value(),
                              reshuffle_each_iteration=False)

        return tf.data.Dataset.from_tensors(0).flat_map(one_epoch).apply(
            tf.data.experimental.assert_cardinality(n))

    def set_epoch(self, stage_index, epoch):
        self.epoch.assign(stage_index * 100000 + epoch)

    def callback(self, stage_index):
        """A Keras callback that selects each epoch's order."""
        return keras.callbacks.LambdaCallback(
            on_epoch_begin=lambda epoch, logs=None: self.set_epoch(
                stage_index, epoch))


def resize_images(images, size):
    """Resizes uint8 images to (size, size) exactly as training does.

    Bilinear with antialiasing (so downscaling does not alias), then
    rounded and clipped back to uint8. Works on one image or a batch.
    """
    x = tf.image.resize(images, (size, size), method="bilinear",
                        antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def decode_image(data):
    """Decodes JPEG / PNG / BMP / GIF bytes to uint8 RGB (first GIF frame).

    Grayscale is replicated to three channels, alpha is dropped, 16-bit PNG
    is scaled to 8 bits.
    """
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def build_augmenter(names, seed):
    """Returns a Keras model of the named augmentations, or None."""
    layers = []
    if "flip" in names:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if "rotation" in names:
        layers.append(keras.layers.RandomRotation(0.1, seed=seed))
    if "zoom" in names:
        layers.append(keras.layers.RandomZoom(0.1, seed=seed))
    return keras.Sequential(layers, name="augment") if layers else None


def make_datasets(config, image_size):
    """Builds the pipelines of `config.data_dir`.

    The folder holds one sub-folder per class, or `train/`, `val/` (or
    `validation/`) and `test/` folders that each hold the class folders.
    Splits that have no folder are carved from the training images, per
    class, deterministically from `config.seed`.

    Raises:
      ValueError: missing or empty folder, a class without images, fewer
        than two classes, or a class too small to split.
    """
    files, class_names, skipped = scan_folder(config.data_dir)
    bad = find_unreadable([p for split in files.values() for p, _ in split])
    if bad:
        shown = ", ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        log.warning("Skipping %d file(s) that are not readable images: %s",
                    len(bad), shown)
        bad_set = set(bad)
        files = {k: [(p, y) for p, y in v if p not in bad_set]
                 for k, v in files.items()}
        _check_classes_have_images(files["train"], class_names,
                                   config.data_dir)
    if "val" not in files or "test" not in files:
        files = _split(files, config.validation_split if "val" not in files
                       else 0.0, config.test_split if "test" not in files
                       else 0.0, config.seed, class_names)
    total = sum(len(v) for v in files.values())
    cache = total * image_size * image_size * 3 <= (
        config.cache_budget_mb * 2**20)
    sources = {split: _file_source(pairs, image_size) if pairs else None
               for split, pairs in files.items()}
    shuffle = EpochShuffle(config.seed)
    datasets = {
        split: _pipeline(source, len(files[split]), config,
                         training=split == "train", cache=cache,
                         shuffle=shuffle)
        if source is not None else None
        for split, source in sources.items()
    }
    data = ImageData(
        train=datasets["train"], val=datasets["val"],
        test=datasets.get("test"), class_names=class_names,
        counts={k: len(v) for k, v in files.items()},
        class_counts={k: _class_counts(v, class_names)
                      for k, v in files.items()},
        bad_files=bad, skipped_files=skipped, files=files, cached=cache,
        train_ordered=_pipeline(sources["train"], len(files["train"]),
                                config, training=False, cache=False),
        shuffle=shuffle, image_size=image_size,
        batch_size=config.batch_size)
    log.info("Data: %d classes; %s images; %s in memory", len(class_names),
             " / ".join(f"{k} {v}" for k, v in data.counts.items()),
             "cached" if cache else "not cached")
    return data


def from_arrays(x, y, config, image_size, class_names=None, x_val=None,
                y_val=None, x_test=None, y_test=None):
    """Builds the pipelines from in-memory arrays.

    Args:
      x: images, (n, height, width, channels) with 1, 3 or 4 channels,
        uint8 or float in [0, 255].
      y: integer labels, (n,).
      config: a Config (batch size, splits, seed, augmentation).
      image_size: the model's square input size.
      class_names: names in label order; default '0', '1', ...
      x_val, y_val, x_test, y_test: explicit splits; missing ones are
        carved from (x, y) per class with the config's fractions.

    Raises:
      ValueError: bad shapes, labels or value range.
    """
    arrays = {"train": _check_arrays(x, y, "x", "y")}
    if x_val is not None:
        arrays["val"] = _check_arrays(x_val, y_val, "x_val", "y_val")
    if x_test is not None:
        arrays["test"] = _check_arrays(x_test, y_test, "x_test", "y_test")
    num_classes = int(max(a[1].max() for a in arrays.values())) + 1
    class_names = list(class_names or [str(i) for i in range(num_classes)])
    if len(class_names) < max(num_classes, 2):
        raise InputError(
            f"Invalid class_names: labels go up to {num_classes - 1} and at "
            f"least 2 classes are needed. Received: {len(class_names)} names")
    if "val" not in arrays or "test" not in arrays:
        index = {k: [(i, int(label)) for i, label in enumerate(v[1])]
                 for k, v in arrays.items() if k == "train"}
        split = _split(index, config.validation_split if "val" not in arrays
                       else 0.0, config.test_split if "test" not in arrays
                       else 0.0, config.seed, class_names)
        images = arrays["train"][0]
        for k, pairs in split.items():
            if k not in arrays or k == "train":
                ids = np.array([i for i, _ in pairs], dtype=np.int64)
                arrays[k] = (images[ids], np.array([lab for _, lab in pairs],
                                                   dtype=np.int32))
    datasets, sources = {}, {}
    shuffle = EpochShuffle(config.seed)
    for k, (images, labels) in arrays.items():
        sources[k] = tf.data.Dataset.from_tensor_slices((images, labels)).map(
            lambda im, lab: (resize_images(im, image_size), lab),
            num_parallel_calls=AUTOTUNE)
        datasets[k] = (_pipeline(sources[k], len(labels), config,
                                 k == "train", cache=True, shuffle=shuffle)
                       if len(labels) else None)
    return ImageData(
        train=datasets["train"], val=datasets["val"],
        test=datasets.get("test"), class_names=class_names,
        counts={k: len(v[1]) for k, v in arrays.items()},
        class_counts={k: {name: int((v[1] == i).sum()) for i, name in
                          enumerate(class_names)} for k, v in arrays.items()},
        cached=True,
        train_ordered=_pipeline(sources["train"], len(arrays["train"][1]),
                                config, training=False, cache=False),
        shuffle=shuffle, image_size=image_size,
        batch_size=config.batch_size)


def scan_folder(data_dir):
    """Lists image files per split and class.

    Returns:
      (files, class_names, skipped): files maps 'train' (and 'val' /
      'test' when those folders exist) to sorted (path, label) pairs;
      skipped lists files ignored for their extension.
    """
    if not data_dir or not os.path.isdir(data_dir):
        raise InputError(
            f"Invalid data_dir: no such folder. Allowed: a folder with one "
            f"sub-folder of images per class. Received: data_dir="
            f"{data_dir!r}")
    roots = {"train": data_dir}
    for split, names in SPLIT_DIRS.items():
        for name in names:
            if os.path.isdir(os.path.join(data_dir, name)):
                roots[split] = os.path.join(data_dir, name)
                break
    class_names = _subfolders(
        roots["train"],
        exclude=_ALL_SPLIT_NAMES if roots["train"] == data_dir else ())
    if len(class_names) < 2:
        found = ", ".join(class_names) or "none"
        raise InputError(
            f"Invalid data_dir: a classifier needs at least 2 class "
            f"sub-folders; found {len(class_names)} ({found}) in "
            f"{roots['train']!r}. Allowed: one sub-folder of images per "
            f"class. Received: data_dir={data_dir!r}")
    files, skipped = {}, []
    for split, root in roots.items():
        extra = sorted(set(_subfolders(root)) - set(class_names))
        if extra:
            raise InputError(
                f"Invalid data_dir: {root!r} has class folders that train/ "
                f"lacks: {', '.join(extra)}. Allowed: the classes of train/"
                f" ({', '.join(class_names)}). Received: data_dir="
                f"{data_dir!r}")
        pairs = []
        for label, name in enumerate(class_names):
            images, ignored = _list_images(os.path.join(root, name))
            pairs += [(p, label) for p in images]
            skipped += ignored
        files[split] = pairs
    if skipped:
        log.warning("Ignoring %d file(s) without an image extension (%s): "
                    "%s", len(skipped), ", ".join(IMAGE_EXTENSIONS),
                    ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5
                                              else ""))
    _check_classes_have_images(files["train"], class_names, data_dir)
    return files, class_names, skipped


def _subfolders(path, exclude=()):
    return sorted(e.name for e in os.scandir(path)
                  if e.is_dir() and not e.name.startswith(".")
                  and e.name not in exclude)


_ALL_SPLIT_NAMES = {n for names in SPLIT_DIRS.values() for n in names}


def _list_images(folder):
    if not os.path.isdir(folder):
        return [], []
    images, ignored = [], []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(path)
            else:
                ignored.append(path)
    return images, ignored


def _check_classes_have_images(pairs, class_names, data_dir):
    counts = np.bincount([y for _, y in pairs], minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts, strict=True)
             if n == 0]
    if empty:
        raise InputError(
            f"Invalid data_dir: class folder(s) with no readable images: "
            f"{', '.join(empty)}. Allowed: each class folder holds at least "
            f"one {'/'.join(IMAGE_EXTENSIONS)} file. Received: data_dir="
            f"{data_dir!r}")


# The formats tf.io.decode_image reads (MPO is a JPEG with extra frames).
_TF_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "GIF"}


def _is_readable(path):
    """Fully decodes with PIL (JPEG at reduced scale, for speed), so a
    truncated file is caught here, not mid-training inside TensorFlow."""
    try:
        with Image.open(path) as image:
            if image.format not in _TF_FORMATS:
                return False
            image.draft("RGB", (64, 64))
            image.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types for bad files
        return False


def find_unreadable(paths):
    """Returns the paths that are not decodable images, checked in
    parallel (PIL's decoders release the GIL)."""
    if len(paths) > 2000:
        log.info("Checking %d image files ...", len(paths))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ok = list(pool.map(_is_readable, paths, chunksize=64))
    return [p for p, good in zip(paths, ok, strict=True) if not good]


def _split(files, val_fraction, test_fraction, seed, class_names):
    """Carves val / test from files['train'], per class, by seed."""
    rng = np.random.default_rng(seed)
    out = {k: list(v) for k, v in files.items()}
    train, val, test = [], [], []
    for label, name in enumerate(class_names):
        items = [pair for pair in files["train"] if pair[1] == label]
        order = rng.permutation(len(items))
        items = [items[i] for i in order]
        n_val = int(round(len(items) * val_fraction))
        n_test = int(round(len(items) * test_fraction))
        if val_fraction and len(items) >= 3:
            n_val = max(n_val, 1)
        if len(items) - n_val - n_test < 1:
            raise InputError(
                f"Invalid data: class {name!r} has {len(items)} image(s), "
                f"too few to hold out validation_split={val_fraction} and "
                f"test_split={test_fraction}. Allowed: enough images for at "
                f"least one training image per class. Received: "
                f"{len(items)} images")
        val += items[:n_val]
        test += items[n_val:n_val + n_test]
        train += items[n_val + n_test:]
    out["train"] = train
    if val_fraction:
        out["val"] = val
    if test_fraction or "test" not in out:
        out["test"] = test
    if val_fraction and not val:
        raise InputError(
            "Invalid validation_split: it leaves no validation images. "
            f"Allowed: a larger fraction or a val/ folder. Received: "
            f"validation_split={val_fraction}")
    return out


def _file_source(pairs, image_size):
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


def sample_training_set(data, n, seed):
    """A random sample of at most n training images, unshuffled and not
    augmented (for measuring features).

    Returns:
      (batched dataset of (float32 images, int32 labels), sample size).
    """
    total = data.counts["train"]
    keep = np.sort(np.random.default_rng(seed).permutation(total)[:n])
    if len(keep) == total:
        return data.train_ordered, total
    if data.files and data.image_size:
        pairs = [data.files["train"][i] for i in keep]
        ds = _file_source(pairs, data.image_size)
    else:  # arrays: skip the others in the ordered pipeline
        mask = np.zeros(total, bool)
        mask[keep] = True
        table = tf.constant(mask)
        ds = data.train_ordered.unbatch().enumerate().filter(
            lambda i, xy: table[i]).map(lambda i, xy: xy)
    ds = ds.batch(data.batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE), len(keep)


def inference_batch_size():
    """The batch for forward passes only (feature extraction, evaluation):
    None (keep the training batch) on GPU / TPU, 4 images per usable core
    on CPU.

    On CPU the base runs faster on small batches (its activations stay in
    cache): with 2 cores, batches of 8 ran MobileNetV2 at 160 px 1.3x
    faster than batches of 32 (108 vs 82 images/s, median of 6 rounds),
    ResNet50 and EfficientNetB0 1.1-1.2x (see bench/RESULTS.md). What is
    computed does not change: each image's forward pass in inference mode
    is independent of the others in its batch.
    """
    if (tf.config.list_logical_devices("GPU")
            or tf.config.list_logical_devices("TPU")):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 4 * cores


def for_inference(ds, n):
    """A batched dataset of n elements, re-batched for forward passes (see
    `inference_batch_size`), with its length known (for progress bars)."""
    size = inference_batch_size()
    if size is None:
        return ds
    steps = -(-n // size)
    return ds.rebatch(size).apply(
        tf.data.experimental.assert_cardinality(steps)).prefetch(AUTOTUNE)


def full_batches(ds, batch_size, n):
    """Drops the last, partial batch of a batched dataset of n elements.

    With several replicas a partial batch is split unevenly, and each
    replica's mean loss counts equally in the all-reduced gradient, so its
    few examples would be over-weighted. The dropped examples differ each
    epoch (the set is reshuffled).
    """
    return ds.filter(lambda x, y: tf.shape(y)[0] == batch_size).apply(
        tf.data.experimental.assert_cardinality(n // batch_size))


def _pipeline(source, n, config, training, cache, shuffle=None):
    ds = source.cache() if cache else source
    if training:
        ds = shuffle.apply(ds, n)
    ds = ds.batch(config.batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    if training:
        ds = augment(ds, config)
    return ds.prefetch(AUTOTUNE)


def augment(ds, config):
    """Applies the config's augmentations to a batched (images, labels)
    dataset; unchanged when there are none."""
    augmenter = build_augmenter(config.augmentations(), config.seed)
    if augmenter is None:
        return ds
    return ds.map(lambda x, y: (augmenter(x, training=True), y),
                  num_parallel_calls=AUTOTUNE)


def _class_counts(pairs, class_names):
    counts = np.bincount([y for _, y in pairs], minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}


def _check_arrays(x, y, x_name, y_name):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        raise InputError(
            f"Invalid {x_name}. Allowed: images shaped (n, height, width, "
            f"1|3|4). Received: {x_name}.shape={x.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(
            f"Invalid {y_name}. Allowed: integer labels shaped ({len(x)},). "
            f"Received: {y_name}.shape={y.shape}, dtype={y.dtype}")
    if y.min() < 0:
        raise InputError(f"Invalid {y_name}. Allowed: labels >= 0. "
                         f"Received: min {y_name}={y.min()}")
    if x.dtype != np.uint8:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise InputError(
                f"Invalid {x_name}. Allowed: values in [0, 255]. Received: "
                f"[{x.min()}, {x.max()}]")
        if x.size and x.max() <= 1.0:
            raise InputError(
                f"Invalid {x_name}: values are in [0, 1]; tl_keras expects "
                f"[0, 255] (multiply by 255). Received: max {x_name}="
                f"{x.max()}")
        x = np.round(x).astype(np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        x = x[..., :3]
    return x, y.astype(np.int32)
