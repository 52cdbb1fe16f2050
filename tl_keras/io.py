"""Crash-safe files: what a run writes is either the old version or the
new one, never half of either.

`write_text` / `write_json` write a temporary file in the same folder,
flush and fsync it, rename it over the target and fsync the folder, so the
rename itself survives a power loss. `replace_dir` swaps a finished folder
(an export) into place.
"""

import json
import os
import shutil

import numpy as np


def write_text(path, text, newline=None):
    """Writes `text` to `path` atomically (temp file, fsync, rename);
    `newline` as for `open` ("" keeps a CSV writer's line ends)."""
    tmp = temp_path(path)
    with open(tmp, "w", newline=newline) as f:
        f.write(text)
    commit(tmp, path)


def temp_path(path):
    """A hidden temporary name next to `path` (same folder, so the final
    rename is atomic); its suffix keeps `path`'s extension, for writers
    that choose the format by it (.keras, .weights.h5, .npz, .png)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".tmp.{name}")


def commit(tmp, path):
    """Makes the finished file (or folder) `tmp` durable and renames it to
    `path`, replacing what was there: readers see the old version or the
    new one, also after a power loss."""
    if os.path.isfile(tmp):
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_json(path, obj):
    """Writes `obj` as indented JSON, atomically (`write_text`); numpy
    scalars become Python numbers."""
    write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def read_json(path):
    """Reads a JSON file written by `write_json`."""
    with open(path) as f:
        return json.load(f)


def fsync_dir(folder):
    """Makes a rename inside `folder` durable (no-op where folders cannot
    be opened, e.g. on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(src, dst):
    """Moves the folder `src` to `dst`; an old `dst` is removed only after
    the move."""
    old = None
    if os.path.exists(dst):
        old = dst + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
