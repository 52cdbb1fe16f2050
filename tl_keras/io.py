"""Crash-safe files: what a run writes is either the old version or the
new one, never half of either.

`write_text` / `write_json` write a temporary file in the same folder,
flush and fsync it, rename it over the target and fsync the folder, so the
rename itself survives a power loss. `replace_dir` swaps a finished folder
(an export) into place. `workdir_lock` holds `<workdir>.lock` while a
run (any mode that writes into a workdir) uses it.
"""

import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time

import numpy as np

from tl_keras.errors import InputError

log = logging.getLogger("tl_keras")


def write_text(path, text, newline=None, errors=None):
    """Writes `text` to `path` atomically (temp file, fsync, rename);
    `newline` and `errors` as for `open` ("" keeps a CSV writer's line
    ends)."""
    tmp = temp_path(path)
    with open(tmp, "w", newline=newline, errors=errors) as f:
        f.write(text)
    commit(tmp, path)


def inside(path, folder):
    """Whether `path` is `folder` or lies under it, links resolved."""
    folder = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), folder]) == folder


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
    write_text(path, json.dumps(obj, indent=2, default=jsonable) + "\n")


def read_json(path):
    """Reads a JSON object written by `write_json` (a run's record: its
    config, checkpoints, metrics).

    Raises:
      InputError: the file is not such an object (truncated, edited),
        naming it; a raw JSONDecodeError or AttributeError named none.
    """
    raw, value = b"", None
    try:
        with open(path, "rb") as f:
            raw = f.read()
        value = json.loads(raw)
        problem = f"a JSON {type(value).__name__}, not an object"
    except (OSError, ValueError) as e:
        problem = str(e)
    if isinstance(value, dict):
        return value
    raise InputError(
        f"Invalid record {path}: not the JSON object tl_keras wrote "
        f"(truncated or edited: {problem}). Allowed: the file as tl_keras "
        f"wrote it (put it back), or a new --workdir to start anew. "
        f"Received: {raw[:60]!r}")


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


def replace_dir(src, dst, discard_old=True):
    """Moves the folder `src` to `dst`.

    An old `dst` is first renamed to a fresh name beside it (nothing else
    is touched), then deleted only once the move is done when
    `discard_old`; otherwise it stays as `<dst>.replaced-<time>`.

    Returns:
      The path the old `dst` was kept at, or None.
    """
    kept = None
    if os.path.exists(dst):
        parent = os.path.dirname(os.path.abspath(dst))
        name = os.path.basename(os.path.abspath(dst))
        kept = (tempfile.mkdtemp(prefix=old_prefix(name), dir=parent)
                if discard_old else _fresh_name(dst))
        os.replace(dst, kept)
    os.replace(src, dst)
    fsync_dir(os.path.dirname(os.path.abspath(dst)))
    if kept and discard_old:
        shutil.rmtree(kept, ignore_errors=True)
        return None
    return kept


def old_prefix(name):
    """The hidden name prefix `replace_dir` gives the old `name` folder
    until it is deleted (a kill in between leaves it behind)."""
    return f".{name}.old-"


def move_aside(path):
    """Renames `path` to `<path>.replaced-<time>` (never deleting
    anything); returns the new name. A folder a live run works in below
    is refused (`check_no_live_run_under`)."""
    check_no_live_run_under(path)
    aside = _fresh_name(path)
    os.replace(path, aside)
    return aside


def moved_from(name):
    """The name an entry had before `move_aside` renamed it (the name
    itself if it was not moved aside)."""
    return name.split(_ASIDE)[0]


def names_a_file(path):
    """Whether `path` names an existing file, not a folder ('a_file/',
    with a trailing separator, exists as no file to os.path)."""
    bare = path.rstrip(os.sep) or path
    return os.path.exists(bare) and not os.path.isdir(bare)


def unwritable(path):
    """Why `path` cannot be written (created with its parent folders, or
    replaced through a temporary file beside it), or None: the nearest
    folder above it that exists is a file, or this process cannot create
    files there, or `path` itself is a link to nothing (a workdir on a
    drive not mounted: creating it raised FileExistsError). Probes with a
    temporary file created and removed at once: `os.access` says yes to
    root everywhere, also on /sys."""
    folder = os.path.abspath(path)
    if os.path.exists(folder) or not os.path.islink(folder):
        folder = os.path.dirname(folder)  # a link to nothing: itself
    while not os.path.lexists(folder):
        folder = os.path.dirname(folder)
    if not os.path.exists(folder):
        return (f"{folder!r} is a broken symlink (to "
                f"{os.readlink(folder)!r}, not there)")
    if not os.path.isdir(folder):
        return f"{folder!r} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"no file can be created in {folder!r} ({e.strerror})"
    return None


_ASIDE = ".replaced-"


def _fresh_name(path):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{path.rstrip(os.sep)}{_ASIDE}{stamp}"
    candidate, n = base, 1
    while os.path.exists(candidate):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def jsonable(value):
    """`json.dumps`'s `default`: numpy scalars as Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# The lock files held, with the process and thread holding each
# (`workdir_lock`): a mode that runs another inside its own workdir (the
# demo's compare) holds it once.
_HELD = set()


@contextlib.contextmanager
def workdir_lock(workdir):
    """Holds `<workdir>.lock` while a run uses `workdir`: a second run on
    the same workdir, or an --overwrite that would move a live run's folder
    aside, is refused with the holder named. The lock is a sibling of the
    workdir (moving the workdir aside leaves it in place) holding the
    holder's pid, host and start time; a lock whose process is gone (same
    host, no such pid) is stale and taken over.

    Raises:
      InputError: a live run (or one on another host) holds the lock.
    """
    # The real folder's: two spellings of one folder (a symlink, a
    # trailing '/.') took two locks, and both runs wrote into it.
    path = os.path.realpath(workdir) + ".lock"
    # Per process and thread: another thread of this process (or a forked
    # child) on the same workdir is another run, refused as any other.
    key = (os.path.abspath(path), os.getpid(), threading.get_ident())
    if key in _HELD:  # held already by this thread, further up
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _read_lock(path)
            if not holder and _age(path) < 10:  # being written just now
                time.sleep(0.2)
                continue
            if not _is_stale(holder, key[0]):
                raise InputError(
                    f"Invalid workdir {workdir!r}: another tl_keras run "
                    f"uses it (pid {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('since')}; "
                    f"lock file {path}). Allowed: a workdir no live run "
                    f"uses (wait for that run, or delete the lock file if "
                    f"its process is gone). Received: workdir={workdir!r}"
                    ) from None
            _remove_stale(path, key[0])
    # Held before the holder is written: another thread of this process
    # reading the lock in between would judge it stale (this pid, held by
    # no thread) and take it over.
    _HELD.add(key)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        yield
    finally:
        _HELD.discard(key)
        if _read_lock(path) == mine:
            os.remove(path)


def check_no_live_run_under(folder):
    """Refuses moving `folder` aside while a live run holds a lock below
    it (a folder of runs given with --overwrite: the run went on writing
    into a path that was gone). Only `workdir_lock`'s locks count (a
    project's Pipfile.lock does not); one still being written is live."""
    for root, _, names in os.walk(folder):
        for lock in (os.path.join(root, n) for n in names
                     if n.endswith(".lock")):
            holder = _read_lock(lock)
            ours = isinstance(holder, dict) and isinstance(
                holder.get("pid"), int) and isinstance(holder.get("host"), str)
            if ours and not _is_stale(holder, os.path.realpath(lock)) or (
                    not holder and _age(lock) < 10):
                raise InputError(
                    f"Invalid workdir {folder!r}: moving it aside would move "
                    f"a live run inside it (lock file {lock}, held by pid "
                    f"{holder.get('pid') if ours else '?'}). Allowed: a "
                    f"folder no live run works in (wait for that run, or "
                    f"delete the lock file if its process is gone), or a new "
                    f"--workdir. Received: workdir={folder!r}")


def _remove_stale(path, real):
    """Removes the stale lock at `path`, one run at a time: two reruns
    that both judged one lock stale removed it in turn, the second
    removing the lock the first had just taken, and both ran in one
    workdir. The remover holds `<path>.takeover` (created exclusively)
    and judges the lock again under it: one taken meanwhile is live, and
    stays. A guard left by a run killed mid-takeover (older than 10 s)
    is removed. The caller tries to take the lock again either way."""
    guard = path + ".takeover"
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        if _age(guard) > 10:
            with contextlib.suppress(FileNotFoundError):
                os.remove(guard)
        time.sleep(0.1)
        return
    try:
        holder = _read_lock(path)
        if os.path.lexists(path) and (holder or _age(path) >= 10) and (
                _is_stale(holder, real)):
            log.warning("Taking over the stale lock %s of a run that is "
                        "gone (pid %s)", path, holder.get("pid"))
            os.remove(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(guard)


def _read_lock(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # being written, or torn: judged by age below


def _age(path):
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return 0.0


def _is_stale(holder, path):
    """Whether the lock's process is gone: same host and no such pid, or
    this process's pid while no thread of it holds `path` (a container
    restarted with the pid its killed run had: the rerun was refused as
    another run, naming itself). A lock that cannot be read (torn by a
    crash mid-write; checked 10 s after it was written) is stale."""
    if not holder:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    if holder.get("pid") == os.getpid():
        return not any(held[:2] == (path, os.getpid()) for held in _HELD)
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False
