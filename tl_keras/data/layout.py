"""A data folder's layout: split folders or class folders, and the
layouts that would train on the wrong thing (split folders taken for
classes, splits inside the class folders, one folder twice)."""

import logging
import os

from tl_keras.errors import InputError

log = logging.getLogger("tl_keras")

# Split folder names, matched case-insensitively.
SPLIT_DIRS = {"train": ("train", "training"),
              "val": ("val", "valid", "validation"),
              "test": ("test", "testing")}

_SPLIT_OF = {name: split for split, names in SPLIT_DIRS.items()
             for name in names}

# Names that are split folders only when every sub-folder is named like a
# split: beside other folders they are classes (an activity classifier's
# training/, say).
_ALIASES = {"training", "testing"}

# Folders that archive tools add next to the data (macOS zip extracts).
IGNORED_FOLDERS = {"__MACOSX"}

_LAYOUTS = ("one sub-folder of images per class, or train/ (or training/) "
            "with optional val/ (or valid/, validation/) and test/ (or "
            "testing/), each holding the class folders")


def split_roots(data_dir, say=True):
    """{split: folder}: the data folder itself as 'train' (one sub-folder
    per class), or its split folders when it has a train folder.

    Split folders are matched case-insensitively (Train/, VALID/, ...);
    training/ and testing/ only when no other folder is beside them.
    Without a train folder every sub-folder is a class, even one named
    like a split (said in the log, unless not `say`: a folder scanned
    already).

    Raises:
      InputError: two folders for one split (val/ and valid/), split
        folders next to other folders, two split folders that are one
        folder (a symlink), split folders without a train folder, or
        split folders inside the class folders.
    """
    folders = subfolders(data_dir)
    others = [name for name in folders if name.lower() not in _SPLIT_OF]
    named = [name for name in folders if name.lower() in _SPLIT_OF]
    found = {}
    for name in named:
        if not others or name.lower() not in _ALIASES:
            found.setdefault(_SPLIT_OF[name.lower()], []).append(name)
    if "train" not in found:
        _check_class_layout(data_dir, folders, named, say)
        return {"train": data_dir}
    twice = {k: v for k, v in found.items() if len(v) > 1}
    if twice or others:
        problem = ("two folders for one split: " + "; ".join(
            " and ".join(v) for v in twice.values()) if twice else
            f"split folders and other folders ({', '.join(others)}) side "
            f"by side")
        raise InputError(
            f"Invalid data_dir: ambiguous layout, {problem}. Allowed: "
            f"{_LAYOUTS}. Received: data_dir={data_dir!r}")
    check_twins(data_dir, [names[0] for names in found.values()], "split")
    return {split: os.path.join(data_dir, names[0])
            for split, names in found.items()}


def _check_class_layout(data_dir, folders, named, say=True):
    """Checks a data folder without a train folder, whose sub-folders
    are the classes (`named`: those named like a split).

    A split folder holding folders named like its siblings is refused,
    and so are two or more split folders holding folders named like
    those in their siblings when every folder holds folders and they
    share two names or more (split folders of a classifier, the train
    one not named like a split: tr/, val/, test/), and so are two split
    folders holding folders of one name whatever lies beside them
    (training/ and validation/ beside samples/), and so are class
    folders that each hold split folders. Class folders that look like
    split folders (one named test/ beside prod/, each holding 2019/ and
    2020/, say) are said.
    """
    inside = {name: _nested(os.path.join(data_dir, name)) for name in folders}
    shared = {name: _shared(inside, folders, name) for name in folders}
    splits_like = all(inside.values()) and len(set().union(
        *shared.values())) > 1
    refused = splits_like and len(named) > 1
    # Two split folders holding folders of one name are splits of those
    # classes (training/ and validation/ beside samples/), whatever else
    # lies beside them.
    nested = {name: inside[name] & (set(folders) - set(named)
                                    | _shared(inside, named, name))
              | (shared[name] if refused else set()) for name in named}
    nested = {name: hits for name, hits in nested.items() if hits}
    if nested:
        hits = sorted(set().union(*nested.values()))
        demoted = [name for name in named if name.lower() in _ALIASES]
        raise InputError(
            f"Invalid data_dir: ambiguous layout, {', '.join(nested)} "
            f"{'hold' if len(nested) > 1 else 'holds'} class folders "
            f"({', '.join(map(printable, hits[:10]))}: names of folders "
            f"beside them or in those) but there is no train/ folder among "
            f"{', '.join(folders)}" + (
                f" ({' and '.join(demoted)} count as split folders only "
                f"with no other folder beside them; here "
                f"{', '.join(sorted(set(folders) - set(named)))})"
                if demoted and len(named) < len(folders) else "")
            + f". Allowed: {_LAYOUTS}. Received: data_dir={data_dir!r}")
    _check_splits_in_classes(data_dir, inside, say)
    if not say:
        return
    if splits_like and all(shared.values()):
        names = sorted(set().union(*shared.values()))
        log.warning("The class folders %s hold folders of the same names "
                    "(%s), whose images belong to each class. If those are "
                    "the classes, name the folders around them train/, val/,"
                    " test/.", ", ".join(folders),
                    ", ".join(map(printable, names[:10])))
    if named:
        log.warning("No train/ folder in %s, so every sub-folder is a "
                    "class, also %s", data_dir, ", ".join(named))


def _shared(inside, names, name):
    """The folder names `name` holds that another of `names` holds too
    (`inside`: {folder: the names of the folders in it})."""
    return inside[name] & {sub for other in names if other != name
                           for sub in inside[other]}


def _nested(folder):
    """The names of the folders in a class folder, but hidden ones (none
    when it cannot be read: the scan says so)."""
    try:
        return {e.name for e in os.scandir(folder)
                if e.is_dir() and not e.name.startswith(".")}
    except OSError:
        return set()


def _check_splits_in_classes(data_dir, inside, say):
    """Refuses class folders that each hold split folders (cat/train/,
    cat/test/: the test images would be trained on); says it of some."""
    splits = {name: sorted(sub for sub in subs if sub.lower() in _SPLIT_OF)
              for name, subs in inside.items()}
    holding = [name for name, subs in splits.items() if subs]
    if holding and len(holding) == len(splits):
        shown = [f"{name}/{sub}" for name in holding for sub in splits[name]]
        raise InputError(
            f"Invalid data_dir: every class folder holds split folders "
            f"({', '.join(shown[:6])}{' ...' if len(shown) > 6 else ''}), "
            f"whose images would all be trained on. Allowed: train/<class>/"
            f" with optional val/<class>/ and test/<class>/, not "
            f"<class>/train/. Received: data_dir={data_dir!r}")
    for name in holding if say else ():
        log.warning("The class folder %s holds folders named like splits "
                    "(%s); their images belong to the class (a split is "
                    "train/<class>/, not <class>/train/).",
                    os.path.join(data_dir, name), ", ".join(splits[name]))


def check_twins(path, names, kind="class"):
    """Refuses `kind` folders of `path` that are one folder (a symlink):
    two class folders (kind 'class': its images would be two classes),
    two split folders ('split'), or one class's folders of two splits
    ('class of a split', `names` their paths and `path` ''; one linked to
    another split's would move its images there, read as copies, and
    leave the class out): its images would be in two splits."""
    same = {}
    for name in names:
        same.setdefault(os.path.realpath(os.path.join(path, name)),
                        []).append(name)
    twins = [n for n in same.values() if len(n) > 1]
    if twins:
        noun = "split" if kind == "split" else "class"
        raise InputError(
            f"Invalid data_dir: {noun} folders {' and '.join(twins[0])}"
            f"{f' in {printable(path)}' if path else ''} are the same "
            f"folder (a symlink), so its images would be "
            + ("two classes" if kind == "class" else "in two splits")
            + f". Allowed: one folder per {kind.replace(' of a ', ' in each ')}"
            f". Received: {len(twins)} such group(s)")


def _check_dangling(path, entries):
    """Links among `entries` (of the folder `path`; hidden ones aside) to
    something that does not exist, e.g. a folder on a drive not mounted:
    one named like a split is an error (a missing test/ was carved from
    train/ without a word), any other is said (a class left out)."""
    dangling = sorted(e.name for e in entries if e.is_symlink()
                      and not e.name.startswith(".")
                      and e.name not in IGNORED_FOLDERS
                      and not os.path.exists(e.path))
    splits = [name for name in dangling if name.lower() in _SPLIT_OF]
    if splits:
        raise InputError(
            f"Invalid data_dir: {', '.join(map(printable, splits))} in "
            f"{printable(path)} link(s) to something that does not exist (a "
            f"folder on a drive not mounted?), so the split would be carved "
            f"from train/ instead. Allowed: links that resolve; remove the "
            f"link or mount its target. Received: {len(splits)} such "
            f"link(s)")
    if dangling:
        log.warning("Ignoring %d link(s) in %s to something that does not "
                    "exist (a class on a drive not mounted?): %s",
                    len(dangling), printable(path),
                    ", ".join(map(printable, dangling)))


def subfolders(path):
    """The sorted sub-folders of `path`, but hidden ones and
    IGNORED_FOLDERS.

    Raises:
      InputError: a name with control characters or not valid UTF-8.
    """
    entries = list(os.scandir(path))
    _check_dangling(path, entries)
    names = sorted(e.name for e in entries
                   if e.is_dir() and not e.name.startswith(".")
                   and e.name not in IGNORED_FOLDERS)
    bad = [name for name in names if not is_utf8(name)]
    control = [name for name in names
               if is_utf8(name) and not name.isprintable()]
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


def printable(path):
    """`path` with bytes that are not UTF-8 shown as \\xNN escapes (a
    log or report line must be valid text)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8(name):
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes (surrogate escapes)
        return False
    return True
