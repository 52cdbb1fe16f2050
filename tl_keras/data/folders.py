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


# Split folder names, matched case-insensitively.
SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"),
              "test": ("test",)}


def scan_folder(data_dir, min_classes=2):
    """Lists image files per split and class (at least `min_classes`: a
    classifier trains on 2; an export is evaluated on any of its own).

    Returns:
      (files, class_names, skipped): files maps 'train' (and 'val' /
      'test' when those folders exist) to sorted (path, label) pairs;
      skipped lists files ignored for their extension or for lying
      outside the class folders.
    """
    check_data_dir(data_dir)
    roots = split_roots(data_dir)
    class_names = _subfolders(roots["train"])
    _check_twins(roots["train"], class_names)
    if len(class_names) < min_classes:
        found = ", ".join(class_names) or "none"
        raise InputError(
            f"Invalid data_dir: a classifier needs at least {min_classes} "
            f"class sub-folder(s); found {len(class_names)} ({found}) in "
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
    loose = [os.path.join(folder, e.name)
             for folder in {os.path.normpath(f)
                            for f in (data_dir, *roots.values())}
             for e in os.scandir(folder)
             if e.is_file() and not e.name.startswith(".")]
    if loose:
        log.warning("Ignoring %d file(s) outside the class folders: %s",
                    len(loose), ", ".join(map(printable, sorted(loose)[:5]))
                    + (" ..." if len(loose) > 5 else ""))
    if skipped:
        log.warning("Ignoring %d file(s) without an image extension (%s): "
                    "%s", len(skipped), ", ".join(IMAGE_EXTENSIONS),
                    ", ".join(map(printable, skipped[:5]))
                    + (" ..." if len(skipped) > 5 else ""))
    skipped += sorted(loose)
    check_classes_have_images(files["train"], class_names, data_dir)
    return files, class_names, skipped


def split_roots(data_dir):
    """{split: folder}: the data folder itself as 'train' (one sub-folder
    per class), or its split folders when it has a train folder.

    Split folders are matched case-insensitively (Train/, VALID/, ...).
    Without a train folder every sub-folder is a class, even one named
    like a split (said in the log).

    Raises:
      InputError: two folders for one split (val/ and valid/), or split
        folders next to other folders.
    """
    folders = _subfolders(data_dir)
    found = {}
    for name in folders:
        split = _SPLIT_OF.get(name.lower())
        if split:
            found.setdefault(split, []).append(name)
    if "train" not in found:
        named = [name for names in found.values() for name in names]
        # A split folder holding folders named like its siblings: the old
        # layout (classes at the top, test/ of the same classes beside
        # them) or a mistake, not a class that happens to be named test.
        classes = set(folders) - set(named)
        nested = [name for name in named
                  if classes & set(_subfolders(os.path.join(data_dir, name)))]
        if nested:
            raise InputError(
                f"Invalid data_dir: ambiguous layout, {', '.join(nested)} "
                f"holds class folders (named like the folders beside it) "
                f"but there is no train/ folder. Allowed: one sub-folder of "
                f"images per class, or train/ with optional val/ and test/, "
                f"each holding the "
                f"class folders. Received: data_dir={data_dir!r}")
        if named:
            log.warning("No train/ folder in %s, so every sub-folder is a "
                        "class, also %s", data_dir, ", ".join(named))
        return {"train": data_dir}
    twice = {k: v for k, v in found.items() if len(v) > 1}
    others = [name for name in folders if name.lower() not in _SPLIT_OF]
    if twice or others:
        problem = ("two folders for one split: " + "; ".join(
            " and ".join(v) for v in twice.values()) if twice else
            f"split folders and other folders ({', '.join(others)}) side "
            f"by side")
        raise InputError(
            f"Invalid data_dir: ambiguous layout, {problem}. Allowed: one "
            f"sub-folder per class, or train/ with optional val/ (or "
            f"valid/, validation/) and test/, each holding the class "
            f"folders. Received: data_dir={data_dir!r}")
    return {split: os.path.join(data_dir, names[0])
            for split, names in found.items()}


def _check_twins(path, names):
    """Refuses class folders of `path` that are one folder (a symlink to
    a sibling): its images would be two classes."""
    same = {}
    for name in names:
        same.setdefault(os.path.realpath(os.path.join(path, name)),
                        []).append(name)
    twins = [n for n in same.values() if len(n) > 1]
    if twins:
        raise InputError(
            f"Invalid data_dir: class folders {' and '.join(twins[0])} in "
            f"{printable(path)} are the same folder (a symlink), so its "
            f"images would be two classes. Allowed: one folder per class. "
            f"Received: {len(twins)} such group(s)")


def _subfolders(path):
    names = sorted(e.name for e in os.scandir(path)
                   if e.is_dir() and not e.name.startswith(".")
                   and e.name not in _IGNORED_FOLDERS)
    bad = [name for name in names if not _is_utf8(name)]
    control = [name for name in names
               if _is_utf8(name) and not name.isprintable()]
    if control:  # a newline would split assets/labels.txt
        raise InputError(
            f"Invalid data_dir: the folder name(s) "
            f"{', '.join(map(repr, control))} in {printable(path)} hold "
            f"control characters (tabs, newlines), which the export's label "
            f"map cannot carry. Allowed: printable folder names. Received: "
            f"{len(control)} such folder(s)")
    if bad:
        raise InputError(
            f"Invalid data_dir: the folder name(s) "
            f"{', '.join(printable(name) for name in bad)} in "
            f"{printable(path)} are not valid UTF-8 (class names go into the "
            f"export's label map). Allowed: UTF-8 folder names. Received: "
            f"{len(bad)} such folder(s)")
    return names


# Folders that archive tools add next to the data (macOS zip extracts).
_IGNORED_FOLDERS = {"__MACOSX"}


_SPLIT_OF = {name: split for split, names in SPLIT_DIRS.items()
             for name in names}


def _list_images(folder):
    """(image paths, other paths) under a class folder, nested folders
    included. Hidden files and folders are left out, symlinked folders
    are not followed (a link to a parent would loop), and a file name that
    is not valid UTF-8 (TensorFlow cannot open it) is counted with the
    other files; each is said in the log."""
    if not os.path.isdir(folder):
        return [], []
    images, ignored, hidden, links = [], [], 0, []
    for root, dirs, names in os.walk(folder):
        links += [os.path.join(root, d) for d in dirs
                  if os.path.islink(os.path.join(root, d))]
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = os.path.join(root, name)
            if name.startswith("."):
                hidden += 1
            elif not _is_utf8(path):
                log.warning("Ignoring %s: its name is not valid UTF-8",
                            printable(path))
                ignored.append(path)
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(path)
            else:
                ignored.append(path)
    if hidden:
        log.info("Left out %d hidden file(s) in %s", hidden, folder)
    if links:
        log.warning("Not following %d symlinked folder(s): %s", len(links),
                    ", ".join(links[:5]))
    return images, ignored


def printable(path):
    """`path` with bytes that are not UTF-8 shown as \\xNN escapes (a
    log or report line must be valid text)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_utf8(name):
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes (surrogate escapes)
        return False
    return True


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


def check_given_splits(files, class_names, data_dir):
    """After unreadable files are left out: every class still has
    training images, and a val/ or test/ folder still has images (else
    the run would validate or test on nothing)."""
    check_classes_have_images(files["train"], class_names, data_dir)
    for split in ("val", "test"):
        if split in files and not files[split]:
            raise InputError(
                f"Invalid data_dir: its {split} split's folder holds no "
                f"readable image. Allowed: a {split} folder of class folders "
                f"with images, or none (the split is then carved from the "
                f"training images). Received: data_dir={data_dir!r}")


def _warn_missing_classes(files, class_names):
    """Logs each class the val or test split (given or carved) has no
    image of: its accuracy there leaves the class out."""
    for split in ("val", "test"):
        present = {y for _, y in files.get(split, ())}
        missing = [n for i, n in enumerate(class_names) if i not in present]
        if files.get(split) and missing:
            log.warning("The %s split has no images of %d class(es): %s.",
                        split, len(missing), ", ".join(missing[:10]))


def carve_missing_splits(files, config, class_names):
    """Carves the splits `files` has no entry for from files['train'] (see
    `split_files`), with `config`'s fractions (a DataConfig); logs each
    class the val or test split then lacks."""
    if not ("val" in files and "test" in files):
        files = split_files(
            files, config.validation_split if "val" not in files else 0.0,
            config.test_split if "test" not in files else 0.0, config.seed,
            class_names)
    _warn_missing_classes(files, class_names)
    return files


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
    for name, fraction, held in (("validation_split", val_fraction, val),
                                 ("test_split", test_fraction, test)):
        if fraction and not held:  # test: validation would be reported
            raise InputError(
                f"Invalid {name}: it leaves no images (it rounds to 0 of "
                f"every class). Allowed: a larger fraction, a "
                f"{'val' if name[0] == 'v' else 'test'}/ folder"
                f"{', or 0' if name[0] == 't' else ''}. Received: "
                f"{name}={fraction}")
    return out


def class_counts(pairs, class_names):
    counts = np.bincount([y for _, y in pairs], minlength=len(class_names))
    return {name: int(n) for name, n in zip(class_names, counts, strict=True)}
