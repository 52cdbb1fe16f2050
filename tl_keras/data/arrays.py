"""In-memory arrays as a data source: checked, and split per class."""

import hashlib
import logging

import numpy as np

from tl_keras.data.copies import sort_copies
from tl_keras.data.folders import carve_missing_splits, warn_missing_classes
from tl_keras.errors import InputError, fail

log = logging.getLogger("tl_keras")

# The most classes a label array may imply (labels go up to this - 1).
MAX_CLASSES = 100_000


def checked_arrays(x, y, splits, class_names):
    """The arrays `from_arrays` was given, checked: {'train': (x, y), and
    'val' / 'test' where given (`splits`: {name: (x, y)}, both or
    neither)}, and the class names (given, or '0', '1', ...).

    Raises:
      InputError: an image array and its labels not given together, empty
        or ragged arrays, labels beyond the class names, or class names
        that are not distinct printable strings.
    """
    arrays = {"train": check_arrays(x, y, "x", "y")}
    for name, (xs, ys) in splits.items():
        if (xs is None) != (ys is None):
            fail(f"x_{name}, y_{name}", "both or neither",
                 "only x_" + name if ys is None else "only y_" + name)
        if xs is not None:
            arrays[name] = check_arrays(xs, ys, f"x_{name}", f"y_{name}")
    tops = {name: int(a[1].max()) for name, a in arrays.items()
            if len(a[1])}
    top = max(tops.values())
    if class_names is None:
        if top < 1:  # blamed on class_names, which the caller never gave
            fail("y", "labels of at least 2 classes (a classifier needs "
                 "2)", f"only label {top}")
        if top >= MAX_CLASSES:
            fail("y", f"labels below {MAX_CLASSES:,}", top)
        for name, split_top in tops.items():  # named, not blamed on y
            if split_top > tops.get("train", top):
                fail(f"y_{name}", f"labels the training set has (0 to "
                     f"{tops['train']}), or class_names naming every "
                     f"class", f"label {split_top}")
        class_names = [str(i) for i in range(top + 1)]
    class_names = check_class_names(class_names)
    if len(class_names) < max(top + 1, 2):
        fail("class_names", f"at least {max(top + 1, 2)} names (labels go "
             f"up to {top}; a classifier needs 2 classes)",
             f"{len(class_names)} names")
    return arrays, class_names


def check_not_unit_scaled(x, x_name):
    """Raises InputError for images of the batch `x` (valid pixels)
    scaled to [0, 1], which would train or be scored as black images
    (rounded to 0 or 1 of 255). Only the whole array's largest value was
    checked, so [0, 1] images beside one 0-255 image, and [0, 1] images
    cast to uint8, passed. An image with values strictly between 0 and 1
    and none above is refused on its own (no 0-255 image looks so);
    images of 0s and 1s only (a cast) when every image of the batch is
    so: one very dark frame among others is an image, and so is an
    all-black one."""
    if not x.size:
        return
    top = x.max(axis=(1, 2, 3))
    low = np.flatnonzero((top > 0) & (top <= 1))
    fractional = [i for i in low if np.any((x[i] > 0) & (x[i] < 1))]
    scaled = fractional or (low if len(low) == len(x) else [])
    if len(scaled):
        shown = ", ".join(map(str, scaled[:5])) + (
            " ..." if len(scaled) > 5 else "")
        raise InputError(
            f"Invalid {x_name}: {len(scaled)} of {len(x)} image(s) have "
            f"every value in [0, 1] (images {shown}); tl_keras takes "
            f"[0, 255] (multiply by 255 before any cast to uint8). Allowed: "
            f"pixel values in [0, 255]. Received: largest values "
            f"{', '.join(f'{v:g}' for v in top[scaled[:5]])}")


def check_class_names(class_names):
    """Returns `class_names` as a list, or raises InputError unless they
    are distinct, non-empty printable strings in a list, tuple or 1-D
    array (an order: a set's changes with the process's hash seed, and
    the names would go to other labels)."""
    ordered = isinstance(class_names, (list, tuple)) or (
        isinstance(class_names, np.ndarray) and class_names.ndim == 1)
    if not ordered or not all(
            isinstance(n, str) and n.isprintable() and n
            for n in class_names) or len(set(class_names)) < len(
            class_names):
        fail("class_names", "a list of distinct, non-empty printable "
             "strings in label order (one line each in the export's "
             "labels.txt)", class_names)
    return [str(n) for n in class_names]


def check_trained_classes(arrays, class_names):
    """Every class has images in the training arrays (else nothing learns
    it; checked before carving, which would blame the split fractions)."""
    counts = np.bincount(arrays["train"][1], minlength=len(class_names))
    empty = [n for n, c in zip(class_names, counts, strict=True) if not c]
    if empty:
        fail("y", "at least one training image of every class",
             f"none of {', '.join(empty[:10])}")


_ARGUMENT = {"train": "x", "val": "x_val", "test": "x_test"}


def drop_array_copies(arrays, class_names):
    """Leaves out images given twice (identical pixels once made RGB), as
    a folder's byte-for-byte copies are (`copies.drop_copies`): kept once,
    the first in split order train, val, test, then by index, so a
    training image's copy leaves x_val / x_test (scored, it would be an
    image trained on; carved splits could put two copies in train and
    test); an image given under two labels is left out everywhere (which
    is right is not known). Each kind is said in the log; a given split
    left empty, or a class left without training images, is an
    InputError. x_test given as x_val's very images (a common Keras
    idiom) is kept and said: no image is held out from choosing the
    best epoch. Returns the arrays without the copies."""
    if "test" in arrays and "val" in arrays and all(
            np.array_equal(a, b) for a, b in zip(
                arrays["test"], arrays["val"], strict=True)):
        log.warning("x_test holds x_val's images: the test accuracy is of "
                    "the images that chose the best epoch, not held out")
        rest = drop_array_copies({k: v for k, v in arrays.items()
                                  if k != "test"}, class_names)
        return {**rest, "test": arrays["test"]}
    groups = {}
    for split in ("train", "val", "test"):
        for i, (image, label) in enumerate(zip(*arrays.get(split, ((), ())),
                                               strict=True)):
            key = (image.shape, hashlib.sha1(image.tobytes()).digest())
            groups.setdefault(key, []).append((split, i, int(label)))
    again, conflicting = sort_copies(
        members for members in groups.values() if len(members) > 1)
    if not again and not conflicting:
        return arrays
    left = {(split, i) for (split, i, _), _ in again} | {
        (split, i) for members in conflicting for split, i, _ in members}
    _say_array_copies(again, conflicting, class_names)
    kept = {}
    for split, (images, labels) in arrays.items():
        keep = np.array([(split, i) not in left for i in range(len(labels))],
                        dtype=bool)
        if split != "train" and not keep.any():
            fail(_ARGUMENT[split], "images that are not all copies of "
                 "training images (or of each other)",
                 f"{len(labels)} images, every one a copy (see the log)")
        kept[split] = (images[keep], labels[keep])
    emptied = sorted(set(arrays["train"][1]) - set(kept["train"][1]))
    if emptied:
        fail("x", "training images of every class that are not all given "
             "under two labels", f"class(es) "
             f"{', '.join(class_names[i] for i in emptied[:10])} left "
             f"without one (each image also under another label; see the "
             f"log)")
    return kept


def _say_array_copies(again, conflicting, class_names):
    def name(member):
        return f"{_ARGUMENT[member[0]]}[{member[1]}]"

    if again:
        log.warning(
            "Leaving out %d image(s) given again (identical pixels, the same "
            "label), kept once (a copy in x_val / x_test of a training image "
            "would be scored on an image trained on): %s", len(again),
            ", ".join(f"{name(m)} = {name(first)}"
                      for m, first in again[:5])
            + (" ..." if len(again) > 5 else ""))
    if conflicting:
        log.warning(
            "Leaving out %d image(s) given under two or more labels "
            "(identical pixels: which label is right is not known): %s",
            sum(map(len, conflicting)), "; ".join(
                " = ".join(f"{name(m)} ({class_names[m[2]]})"
                           for m in members[:5])
                + (f" = {len(members) - 5} more" if len(members) > 5 else "")
                for members in conflicting[:3])
            + (" ..." if len(conflicting) > 3 else ""))


def fingerprint(arrays):
    """A digest of the arrays' images and labels, split by split: what a
    resumed run given arrays is checked against (a folder's files are
    checked by path, size and time instead)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        for array in arrays[name]:
            digest.update(name.encode() + str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def carve_arrays(arrays, config, class_names):
    """Carves the splits not given as arrays from the training arrays;
    logs each class a given val or test split has no image of (as for
    folders; it was not said of given arrays), the carved ones as they
    are carved."""
    warn_missing_classes({k: [(i, int(label)) for i, label in enumerate(
        v[1])] for k, v in arrays.items() if k != "train"}, class_names)
    if "val" in arrays and "test" in arrays:
        return arrays
    # The given splits are named (empty) so that only the others are
    # carved from the training arrays.
    index = {k: [(i, int(label)) for i, label in enumerate(v[1])]
             if k == "train" else [] for k, v in arrays.items()}
    split = carve_missing_splits(index, config, class_names)
    images = arrays["train"][0]
    arrays = dict(arrays)
    for k, pairs in split.items():
        if k not in arrays or k == "train":
            ids = np.array([i for i, _ in pairs], dtype=np.int64)
            arrays[k] = (images[ids], np.array([lab for _, lab in pairs],
                                               dtype=np.int32))
    return arrays


def check_arrays(x, y, x_name, y_name):
    try:
        x, y = np.asarray(x), np.asarray(y)
    except (TypeError, ValueError) as e:  # ragged lists
        raise InputError(f"Invalid {x_name} / {y_name}: {e}. Allowed: "
                         f"arrays of one shape. Received: ragged input"
                         ) from None
    x = images_as_rgb(x, x_name)
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise InputError(
            f"Invalid {y_name}. Allowed: integer labels shaped ({len(x)},). "
            f"Received: {y_name}.shape={y.shape}, dtype={y.dtype}")
    if y.min() < 0 or y.max() >= 2**31:  # int32 labels: no wrap-around
        raise InputError(f"Invalid {y_name}. Allowed: labels in [0, 2**31)."
                         f" Received: [{y.min()}, {y.max()}]")
    return x, y.astype(np.int32)


def images_as_rgb(x, x_name):
    """The image batch `x` (n, height, width, 1 | 3 | 4), uint8 or finite
    numbers in [0, 255], as uint8 RGB (rounded; gray repeated, alpha
    dropped), as training and prediction take arrays alike; InputError
    naming `x_name` otherwise (and for images scaled to [0, 1]:
    `check_not_unit_scaled`)."""
    if x.dtype == object or not x.ndim or not len(x):
        fail(x_name, "a non-empty numeric array",
             f"dtype {x.dtype}, shape {x.shape}")
    if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or 0 in x.shape[1:3]:
        raise InputError(
            f"Invalid {x_name}. Allowed: images shaped (n, height, width, "
            f"1|3|4), at least 1 x 1 pixel. Received: {x_name}.shape="
            f"{x.shape}")
    if x.dtype != np.uint8:
        finite = np.isfinite(x)
        if not finite.all():
            raise InputError(
                f"Invalid {x_name}: it holds NaN or Inf. Allowed: finite "
                f"values in [0, 255]. Received: {int((~finite).sum())} "
                f"value(s) NaN or Inf")
        if x.size and (x.min() < 0 or x.max() > 255):
            raise InputError(
                f"Invalid {x_name}. Allowed: values in [0, 255]. Received: "
                f"[{x.min()}, {x.max()}]")
    check_not_unit_scaled(x[..., :3], x_name)  # an alpha channel aside
    if x.dtype != np.uint8:
        x = np.round(x).astype(np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        x = x[..., :3]
    return x


def check_given_data(data, config, image_size):
    """Checks that an `ImageData` passed to `train(config, data=...)` (or
    the advisor's, compare's) was built for this config: its images at the
    backbone's input size, its batch size, and its training labels in the
    form the loss is chosen for (class indices, or per-class weights with
    mixup / cutmix). Raises InputError naming the config field that
    disagrees; sizes an `ImageData` built by hand does not record are not
    checked. The data's own `DataConfig` (when it records one) must agree
    on the splits, seed and augmentation: they are baked into the data,
    and config.json would otherwise record settings the run did not use."""
    data_config = config.data
    _check_built_with(data.data_config, data_config)
    built = data.image_size or data.val.element_spec[0].shape[1]
    if built is not None and built != image_size:
        raise InputError(
            f"Invalid image_size. Allowed: {image_size}, the backbone's "
            f"input (build the data at it). Received: image_size="
            f"{config.model.image_size!r}, with data built at {built}")
    if data.batch_size and data.batch_size != data_config.batch_size:
        raise InputError(
            f"Invalid batch_size. Allowed: {data.batch_size}, the batch size "
            f"the data was built with. Received: batch_size="
            f"{data_config.batch_size}")
    mixed = data.train.element_spec[1].dtype.is_floating
    if mixed != bool(data_config.label_mixes()):
        raise InputError(
            "Invalid augment. Allowed: the label mixing the data was built "
            f"with ({'mixup or cutmix' if mixed else 'none'}: its training "
            f"labels are {'per-class weights' if mixed else 'class indices'}"
            f"). Received: augment={data_config.augment!r}")


def _check_built_with(built_with, data_config):
    """Raises InputError for the first data field the data was built with
    that `data_config` gives otherwise (None: nothing recorded)."""
    if built_with is None:
        return
    for name in ("augment", "validation_split", "test_split", "seed"):
        then, now = getattr(built_with, name), getattr(data_config, name)
        if name == "augment":
            then, now = built_with.augmentations(), data_config.augmentations()
        if then != now:
            fail(name, f"{getattr(built_with, name)!r}, what the data passed "
                 f"in was built with (build it with this config)",
                 getattr(data_config, name))
