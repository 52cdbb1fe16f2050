"""Image folders: classes, split folders, and the split itself.

A data folder holds one sub-folder per class, or `train/`, `val/` (or
`validation/`) and `test/` folders that each hold the class folders.
Splits without a folder are carved from the training images, per class,
deterministically from the seed.
"""

import logging
import os

import numpy as np

from tl_keras.config.fields import check_data_dir
from tl_keras.errors import InputError

log = logging.getLogger("tl_keras")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation"),
              "test": ("test",)}


def scan_folder(data_dir):
    """Lists image files per split and class.

    Returns:
      (files, class_names, skipped): files maps 'train' (and 'val' /
      'test' when those folders exist) to sorted (path, label) pairs;
      skipped lists files ignored for their extension.
    """
    check_data_dir(data_dir)
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
    check_classes_have_images(files["train"], class_names, data_dir)
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


def check_classes_have_images(pairs, class_names, data_dir):
    counts = np.bincount([y for _, y in pairs], minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts, strict=True)
             if n == 0]
    if empty:
        raise InputError(
            f"Invalid data_dir: class folder(s) with no readable images: "
            f"{', '.join(empty)}. Allowed: each class folder holds at least "
            f"one {'/'.join(IMAGE_EXTENSIONS)} file. Received: data_dir="
            f"{data_dir!r}")


def carve_missing_splits(files, config, class_names):
    """Carves the splits `files` has no entry for from files['train'] (see
    `split_files`), with `config`'s fractions (a DataConfig)."""
    if "val" in files and "test" in files:
        return files
    return split_files(
        files, config.validation_split if "val" not in files else 0.0,
        config.test_split if "test" not in files else 0.0, config.seed,
        class_names)


def split_files(files, val_fraction, test_fraction, seed, class_names):
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


def class_counts(pairs, class_names):
    counts = np.bincount([y for _, y in pairs], minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}
