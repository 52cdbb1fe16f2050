"""Byte-identical image files under different names: one image, counted
once.

A folder of images gathered from several sources often holds one file
twice (a download repeated, a photo sorted into two folders). Listed
twice, a copy in val/ or test/ of a training image is scored on an image
the model trained on, a carved split can put one copy in train and the
other in test, and copies in two classes give one image two labels.
Symlinks and hard links to one file are found by path and inode
(`folders.scan_folder`); this finds copies by content: files of equal
size, then equal leading bytes, then an equal digest of the whole file,
so most files are only stat'ed.
"""

import collections
import concurrent.futures
import contextlib
import hashlib
import logging
import os

from tl_keras.data.layout import printable

log = logging.getLogger("tl_keras")

# Which copy is kept: the training image's (its copy in val/ or test/
# would be scored on an image trained on).
_SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
# The leading bytes compared before a whole file is read.
_HEAD = 8192


def drop_copies(files, class_names):
    """Leaves out every file that is a byte-for-byte copy of another one:
    of its class, it is kept once (the first in split order train, val,
    test, then by path, so a training image's copy leaves val/ or test/);
    copies in two classes are all left out (which label is right is not
    known). Each kind is said in the log.

    Args:
      files: {split: [(path, label)]}, readable images only.
      class_names: the names of the labels, for the log.

    Returns:
      (files without the copies, the paths left out, sorted).
    """
    order = sorted(files, key=lambda split: _SPLIT_ORDER.get(split, 3))
    again, conflicting = sort_copies(_identical(
        [(path, split, label) for split in order
         for path, label in sorted(files[split])]))
    again = [path for (path, _, _), _ in again]
    left_out = set(again) | {path for members in conflicting
                             for path, _, _ in members}
    _say(again, conflicting, class_names)
    kept = {split: [(p, y) for p, y in pairs if p not in left_out]
            for split, pairs in files.items()}
    return kept, sorted(left_out)


def sort_copies(groups):
    """The rule for groups of identical images (members in keeping order,
    each a tuple ending in its label), folders' and arrays' alike:
    (again: [(member, the member kept in its place)] of groups under one
    label, kept once; conflicting: the groups under two labels or more,
    left out whole, since which is right is not known)."""
    again, conflicting = [], []
    for members in groups:
        if len({member[-1] for member in members}) > 1:
            conflicting.append(members)
        else:
            again += [(member, members[0]) for member in members[1:]]
    return again, conflicting


def still_copies(paths, others):
    """The files of `paths` that still hold the same bytes as another
    file of `paths` or `others` (a finished run's copies, checked again:
    one made distinct since is an image the run never saw). Only files
    of a size one of `paths` has are read."""
    sizes = set()
    for path in paths:
        with contextlib.suppress(OSError):
            sizes.add(os.stat(path).st_size)
    entries = []
    for path in sorted(set(paths) | set(others)):
        with contextlib.suppress(OSError):
            if os.stat(path).st_size in sizes:
                entries.append((path, "", 0))
    same = {path for group in _identical(entries) for path, _, _ in group}
    return sorted(same & set(paths))


def _identical(entries):
    """The groups (2+) of `entries` ((path, split, label), in split
    order) whose files hold the same bytes, each in that order."""
    by_size = collections.defaultdict(list)
    for entry in entries:
        try:
            by_size[os.stat(entry[0]).st_size].append(entry)
        except OSError:  # gone since it was read: the run says so later
            continue
    candidates = [g for g in by_size.values() if len(g) > 1]
    for key in (_head, _digest):
        paths = [e[0] for group in candidates for e in group]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            keys = dict(zip(paths, pool.map(key, paths), strict=True))
        split_up = []
        for group in candidates:
            by_key = collections.defaultdict(list)
            for entry in group:
                by_key[keys[entry[0]]].append(entry)
            split_up += [g for k, g in by_key.items()
                         if len(g) > 1 and k is not None]
        candidates = split_up
    return candidates


def _head(path):
    """A digest of the file's leading bytes (not the bytes: 200,000
    same-size files would hold 1.6 GB)."""
    try:
        with open(path, "rb") as f:
            return hashlib.blake2b(f.read(_HEAD)).digest()
    except OSError:
        return None


def _digest(path):
    digest = hashlib.blake2b()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(2**20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.digest()


def _say(again, conflicting, class_names):
    def shown(paths):
        return ", ".join(map(printable, paths[:5])) + (
            " ..." if len(paths) > 5 else "")

    if again:
        log.warning(
            "Leaving out %d file(s) that are byte-for-byte copies of another "
            "image of their class, kept once (a copy in val/ or test/ of a "
            "training image would be scored on an image trained on; carved "
            "splits could put the copies in train and test): %s",
            len(again), shown(sorted(again)))
    if conflicting:
        log.warning(
            "Leaving out %d image(s) found, byte for byte, in two or more "
            "classes (one image, two labels: which is right is not known; "
            "remove the wrong copies to use them): %s",
            len(conflicting), "; ".join(
                " = ".join(f"{printable(p)} ({class_names[y]})"
                           for p, _, y in members)
                for members in conflicting[:3])
            + (" ..." if len(conflicting) > 3 else ""))
