"""Image folders: classes, split folders, and the split itself.

A data folder holds one sub-folder per class, or `train/` (or
`training/`), `val/` (or `valid/`, `validation/`) and `test/` folders that
each hold the class folders (see `layout`).
Splits without a folder are carved from the training images, per class,
deterministically from the seed.
"""

import logging
import os

import numpy as np

from tl_keras.config import DataConfig
from tl_keras.config.fields import check_data_dir
from tl_keras.data.layout import (
    IGNORED_FOLDERS,
    SPLIT_DIRS,  # noqa: F401 (re-exported: it was defined here)
    check_twins,
    is_utf8,
    printable,
    split_roots,
    subfolders,
)
from tl_keras.errors import InputError

log = logging.getLogger("tl_keras")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def scan_folder(data_dir, min_classes=2):
    """Lists image files per split and class (at least `min_classes`: a
    classifier trains on 2; an export is evaluated on any of its own).

    Returns:
      (files, class_names, skipped): files maps 'train' (and 'val' /
      'test' when those folders exist) to sorted (path, label) pairs;
      skipped lists files ignored for their extension, for lying
      outside the class folders, or for being another file of their
      class again (a symlink or a hard link).
    """
    check_data_dir(data_dir)
    roots = split_roots(data_dir)
    class_names = subfolders(roots["train"])
    check_twins(roots["train"], class_names)
    _check_alike(class_names, roots["train"])
    if len(class_names) < min_classes:
        found = ", ".join(class_names) or "none"
        raise InputError(
            f"Invalid data_dir: a classifier needs at least {min_classes} "
            f"class sub-folder(s); found {len(class_names)} ({found}) in "
            f"{roots['train']!r}. Allowed: one sub-folder of images per "
            f"class. Received: data_dir={data_dir!r}")
    files, skipped, hidden, linked = {}, [], [], {}
    for split, root in roots.items():
        extra = sorted(set(subfolders(root)) - set(class_names))
        if extra:
            raise InputError(
                f"Invalid data_dir: {root!r} has class folders that train/ "
                f"lacks: {', '.join(extra)}. Allowed: the classes of train/"
                f" ({', '.join(class_names)}). Received: data_dir="
                f"{data_dir!r}")
        pairs = []
        for label, name in enumerate(class_names):
            images, ignored, left_out, links = list_images(
                os.path.join(root, name))
            pairs += [(p, label) for p in images]
            skipped += ignored
            hidden += left_out
            linked.update(links)
        files[split] = pairs
    if len(roots) > 1:
        check_twins("", [os.path.join(root, name) for root in roots.values()
                         for name in class_names
                         if os.path.isdir(os.path.join(root, name))],
                    kind="class of a split")
    files, again = _drop_repeats(files, linked)
    loose = _say_ignored(data_dir, roots, skipped, hidden)
    skipped += again + loose
    check_classes_have_images(files["train"], class_names, data_dir)
    return files, class_names, skipped


def _check_alike(class_names, root):
    """Refuses class names that differ only in spaces at either end
    ('cat ' and 'cat'): two classes that read the same in the log and
    labels.txt. (Names that differ in case, A/ and a/ of a letters
    dataset, are two classes on this file system.)"""
    groups = {}
    for name in class_names:
        groups.setdefault(name.strip(), []).append(name)
    alike = [names for names in groups.values() if len(names) > 1]
    if alike:
        raise InputError(
            f"Invalid data_dir: class folders in {printable(root)} differ "
            f"only in spaces at either end: "
            f"{'; '.join(' and '.join(map(repr, g)) for g in alike)}. "
            f"Allowed: names that differ in what they show (merge or "
            f"rename them). Received: {len(alike)} such group(s)")


def _say_ignored(data_dir, roots, skipped, hidden):
    """Logs the files `scan_folder` skipped (`skipped`: without an image
    extension), the hidden folders it left out (`hidden`: in the class
    folders; also those beside them) and the files beside the class
    folders; returns the latter, sorted."""
    loose = []
    for folder in sorted({os.path.normpath(f)
                          for f in (data_dir, *roots.values())}):
        for e in os.scandir(folder):
            path = os.path.join(folder, e.name)
            if e.is_file() and not e.name.startswith("."):
                loose.append(path)
            elif e.is_dir() and (e.name.startswith(".")
                                 or e.name in IGNORED_FOLDERS):
                hidden.append(path)
    for what, paths in (("hidden folder(s)", hidden),
                        ("file(s) outside the class folders", sorted(loose)),
                        (f"file(s) without an image extension ("
                         f"{', '.join(IMAGE_EXTENSIONS)})", skipped)):
        if paths:
            log.warning("Ignoring %d %s: %s", len(paths), what,
                        ", ".join(map(printable, paths[:5]))
                        + (" ..." if len(paths) > 5 else ""))
    return sorted(loose)


def _drop_repeats(files, linked):
    """Files that are one image (a symlink or a hard link to another
    listed file; `linked` as `list_images` returns it) in one class of
    one split: left out with a warning (carved splits could put it in
    train and in test). Across classes or splits both are kept here, and
    `copies.drop_copies` treats them as the byte-for-byte copies they are
    (the training one kept; in two classes, both left out).

    Returns:
      (files without the repeats, the repeats left out).
    """
    seen, real_dirs, again, kept = set(), {}, [], {}
    for split, pairs in files.items():
        kept[split] = []
        for path, label in pairs:
            place = (_real_path(path, real_dirs, linked), split, label)
            if place in seen:
                again.append(path)
            else:
                seen.add(place)
                kept[split].append((path, label))
    if again:
        log.warning("Ignoring %d file(s) that are the same image as another "
                    "file of their class (a symlink or a hard link): %s",
                    len(again),
                    ", ".join(map(printable, again[:5]))
                    + (" ..." if len(again) > 5 else ""))
    return kept, again


def _real_path(path, real_dirs, linked):
    """What a listed file is: (device, inode) for a file with hard links
    (`linked` maps it so), else os.path.realpath(path), with the real path
    of each folder found once (`real_dirs`: {folder: its real path};
    `linked` maps the listed symlinks to None)."""
    if path in linked:
        return linked[path] or os.path.realpath(path)
    folder, name = os.path.split(path)
    if folder not in real_dirs:
        real_dirs[folder] = os.path.realpath(folder)
    return os.path.join(real_dirs[folder], name)


def list_images(folder):
    """(image paths, other paths, hidden folders, linked) under a class
    folder, nested folders included; linked maps each image that is a
    symlink or has hard links to (device, inode) when the file it names
    has hard links (one file by two names, as `cp -l` makes), else None
    (a symlink; its real path says which file it is). Hidden
    files and folders are left out, symlinked folders are not followed
    (a link to a parent would loop), and a file name that is not valid
    UTF-8 (TensorFlow cannot open it) is counted with the other files;
    each is said in the log."""
    if not os.path.isdir(folder):
        return [], [], [], {}
    images, ignored, hidden, links, hidden_dirs = [], [], 0, [], []
    linked = {}
    for dirs, entries in _walk(folder):
        links += [d.path for d in dirs if d.is_symlink()]
        hidden_dirs += [d.path for d in dirs if d.name.startswith(".")]
        for entry in entries:
            path = entry.path
            if entry.name.startswith("."):
                hidden += 1
            elif not is_utf8(path):
                log.warning("Ignoring %s: its name is not valid UTF-8",
                            printable(path))
                ignored.append(path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                images.append(path)
                _note_link(entry, linked)
            else:
                ignored.append(path)
    if hidden:
        log.info("Left out %d hidden file(s) in %s", hidden, folder)
    if links:
        log.warning("Not following %d symlinked folder(s): %s", len(links),
                    ", ".join(links[:5]))
    return images, ignored, hidden_dirs, linked


def _note_link(entry, linked):
    """Adds an image's entry to `linked` (see `list_images`) when it is
    a symlink or names a file with more than one hard link."""
    try:
        stat = entry.stat()  # of the file a symlink names
    except OSError:  # a broken symlink: the readability check says so
        stat = None
    if stat is not None and stat.st_nlink > 1:
        linked[entry.path] = (stat.st_dev, stat.st_ino)
    elif entry.is_symlink():
        linked[entry.path] = None


def _walk(top):
    """os.walk(top)'s order with names sorted, as (folders, files) lists
    of os.DirEntry (a symlink is told without another stat). Symlinked
    and hidden folders are listed, not entered; a folder that cannot be
    read is said in the log and left out."""
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as e:
        log.warning("Ignoring %s: it cannot be read (%s)", printable(top),
                    e.strerror)
        return
    dirs = [e for e in entries if e.is_dir()]
    yield dirs, [e for e in entries if not e.is_dir()]
    for entry in dirs:
        if not entry.name.startswith(".") and not entry.is_symlink():
            yield from _walk(entry.path)


def check_classes_have_images(pairs, class_names, data_dir):
    counts = np.bincount([y for _, y in pairs], minlength=len(class_names))
    empty = [name for name, n in zip(class_names, counts, strict=True)
             if n == 0]
    if empty:
        raise InputError(
            f"Invalid data_dir: class folder(s) with no readable images: "
            f"{', '.join(empty)} (byte-for-byte copies of another class's "
            f"images are left out). Allowed: each class folder holds at least "
            f"one {'/'.join(IMAGE_EXTENSIONS)} file. Received: data_dir="
            f"{data_dir!r}")


def check_given_splits(files, class_names, data_dir):
    """After unreadable files and copies are left out: every class still
    has training images, and a val/ or test/ folder still has images
    (else the run would validate or test on nothing)."""
    check_classes_have_images(files["train"], class_names, data_dir)
    for split in ("val", "test"):
        if split in files and not files[split]:
            raise InputError(
                f"Invalid data_dir: its {split} split's folder holds no "
                f"readable image (other than copies of images of another "
                f"split, left out). Allowed: a {split} folder of class folders "
                f"with images, or none (the split is then carved from the "
                f"training images). Received: data_dir={data_dir!r}")


def warn_missing_classes(files, class_names):
    """Logs each class the val or test split (given or carved) has no
    image of: its accuracy there leaves the class out."""
    for split in ("val", "test"):
        present = {y for _, y in files.get(split, ())}
        missing = [n for i, n in enumerate(class_names) if i not in present]
        if files.get(split) and missing:
            log.warning("The %s split has no images of %d class(es): %s%s.",
                        split, len(missing), ", ".join(missing[:10]),
                        f" and {len(missing) - 10} more"
                        if len(missing) > 10 else "")


def carve_missing_splits(files, config, class_names):
    """Carves the splits `files` has no entry for from files['train'] (see
    `split_files`), with `config`'s fractions (a DataConfig); logs each
    class the val or test split then lacks, and each fraction (not the
    default) of a split the data gives, which is not used."""
    defaults = DataConfig()
    for split, name in (("val", "validation_split"), ("test", "test_split")):
        value = getattr(config, name)
        if split in files and value != getattr(defaults, name):
            log.warning("Ignoring %s=%s: the data has its own %s split (a "
                        "%s/ folder, or x_%s and y_%s), which is used as it "
                        "is.", name, value, split, split, split, split)
    if not ("val" in files and "test" in files):
        files = split_files(
            files, config.validation_split if "val" not in files else 0.0,
            config.test_split if "test" not in files else 0.0, config.seed,
            class_names)
    warn_missing_classes(files, class_names)
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
