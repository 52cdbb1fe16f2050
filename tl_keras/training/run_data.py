"""What a run trained on, recorded in its workdir and checked again: the
images (split.json, and data.json's sizes, modification times and
unreadable files), the arrays' digest, the weight files' SHA-256. A
resumed run must find them unchanged, and a finished run its images
(`check_finished_data`): else it would train, or stand, on other data.
"""

import hashlib
import os

from tl_keras import io
from tl_keras.data.copies import still_copies
from tl_keras.data.folders import scan_folder
from tl_keras.data.images import find_unreadable
from tl_keras.errors import InputError


def check_records(workdir):
    """Refuses a run that trained (checkpoints/) with this tl_keras's
    records (run.json, which came after data.json) but without split.json
    or data.json: deleted since, the checks that its images are the ones
    it trained on had nothing to compare, and a resumed run carved its
    splits again (training images into test) or a finished one said
    "already complete" on other images."""
    if not os.path.isfile(os.path.join(workdir, "run.json")) or not (
            os.path.isdir(os.path.join(workdir, "checkpoints"))):
        return
    missing = [name for name in ("split.json", "data.json")
               if not os.path.isfile(os.path.join(workdir, name))]
    if missing:
        raise InputError(
            f"Invalid workdir {workdir!r}: the run there trained, but its "
            f"{' and '.join(missing)} (which images it trained on, checked "
            f"before it goes on) are missing. Allowed: the file(s) put "
            f"back, or a new --workdir (or --overwrite) to start over. "
            f"Received: no {', '.join(missing)}")


def record_data(workdir, data, weights=None):
    """Writes split.json (each split's (path, label) pairs) and data.json
    (each file's [size, mtime_ns], in the same order; the unreadable
    files and the copies left out; `weights`, from
    `weight_digests`), which a resumed run is checked against
    (`check_same_data`, `check_same_weights`)."""
    files = data.files or {}
    # data.json first: a run killed between the two writes left a
    # split.json without it, which reads as a run from before copies were
    # left out (`started_with_copies`), and every rerun, --overwrite too,
    # was refused as "images changed". Without split.json a rerun starts
    # the data afresh.
    io.write_json(os.path.join(workdir, "data.json"), {
        "stats": {split: [_stat(path) for path, _ in pairs]
                  for split, pairs in files.items()},
        "unreadable": list(data.bad_files or []),
        # None: a run resumed that started with its copies (no key, so
        # it keeps them on every resume: `started_with_copies`).
        **({"copies": list(data.copy_files)}
           if data.copy_files is not None else {}),
        **({"arrays": data.fingerprint} if data.fingerprint else {}),
        **({"weights": weights} if weights else {})})
    io.write_json(os.path.join(workdir, "split.json"), files)


def weight_digests(config):
    """{field: SHA-256 of the file} of the files the run's base is built
    from: a .keras --backbone, a --weights file (not read by scratch). A
    resumed run builds its base from them again (the head stage keeps
    only the head's weights), so one replaced since would mix two
    bases."""
    model = config.model
    named = {"backbone": model.backbone if model.backbone.endswith(
                 ".keras") else "",
             "weights": "" if model.weights in ("imagenet", "none") or (
                 config.training.approach == "scratch") else model.weights}
    return {field: _sha256(path) for field, path in named.items()
            if path and os.path.isfile(path)}


def check_same_weights(workdir, digests, config):
    """Raises InputError naming the field whose file differs from the one
    the run in `workdir` started with (a run whose data.json records no
    weights is not checked)."""
    stored = _record(workdir).get("weights")
    if stored is None:
        return
    for field in sorted(set(stored) | set(digests)):
        if stored.get(field) != digests.get(field):
            value = getattr(config.model, field)
            raise InputError(
                f"Invalid {field}: the file {value!r} is not the one the run "
                f"in {workdir} started with (it changed since), so a resumed "
                f"run would build its base from other weights. Allowed: that "
                f"file, or a new --workdir (or --overwrite) to start over. "
                f"Received: {field}={value!r}")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_same_data(workdir, data, data_dir):
    """Raises InputError when the images differ from those the run in
    `workdir` started with (files added, removed, moved to another split
    or label, or modified): a resumed run would train on other data, and
    images it trained on could land in the test split.

    Data given as arrays is checked by its digest (`fingerprint`). Nothing
    to check for a new workdir, or a run from before tl_keras 0.2 (no
    data.json: only split.json is compared).
    """
    split_path = os.path.join(workdir, "split.json")
    if data.fingerprint:
        _check_same_arrays(workdir, data)
    if not data.files or not os.path.isfile(split_path):
        return
    stored = _stored_split(workdir)
    refuse_changes(data_dir, workdir, "started", _changes(
        workdir, stored, {path: (split, label)
                          for split, pairs in data.files.items()
                          for path, label in pairs}))


def started_with_copies(workdir):
    """Whether the run in `workdir` started before byte-for-byte copies
    were left out (its split.json without data.json's "copies"): resumed,
    it trains on its images as it started, copies included, or every
    copy would read as an image removed since."""
    return os.path.isfile(os.path.join(workdir, "split.json")) and (
        "copies" not in _record(workdir))


def check_finished_data(config, data=None):
    """The changes to a finished run's images (`_changes`: its folder
    listed again, nothing decoded), {} when none. A finished run trained,
    tested and exported on its images as they were; one added since is
    found only if the run recorded its unreadable files (which a listing
    also finds; earlier tl_keras runs did not). Given arrays (`data`, an
    ImageData from `from_arrays`) are checked by their digest and class
    names (`_finished_arrays`)."""
    workdir, data_dir = config.runtime.workdir, config.data.data_dir
    check_records(workdir)
    record = _record(workdir)
    if data is not None and data.fingerprint and record:
        return _finished_arrays(workdir, record, data)
    if not data_dir or not record:
        return {}
    stored = _stored_split(workdir)
    files, _, _ = scan_folder(data_dir)
    listed = {p: label for pairs in files.values() for p, label in pairs}
    changes = _changes(workdir, stored, listed, by_label=True)
    unreadable = record.get("unreadable")
    # A file the run skipped as unreadable and now readable (replaced
    # since) is an image the run never saw: it said "already complete".
    skipped = set(changes["added"]) & set(unreadable or ())
    changes["readable now"] = sorted(skipped - set(find_unreadable(
        sorted(skipped))))
    # A copy the run left out, made distinct since (edited, replaced):
    # an image it never saw, too.
    copies = set(record.get("copies", ())) & set(changes["added"])
    changes["no longer a copy"] = sorted(copies - set(still_copies(
        sorted(copies), listed)))
    changes["added"] = [] if unreadable is None else sorted(
        set(changes["added"]) - set(unreadable) - copies)
    return {k: v for k, v in changes.items() if v}


def _record(workdir):
    """data.json of the run in `workdir` ({} when it has none)."""
    path = os.path.join(workdir, "data.json")
    return io.read_json(path) if os.path.isfile(path) else {}


def _stored_split(workdir):
    return {split: [tuple(pair) for pair in pairs] for split, pairs in
            io.read_json(os.path.join(workdir, "split.json")).items()}


def _changes(workdir, stored, new, by_label=False):
    """{kind: paths} between the stored split and `new` ({path: (split,
    label)}, or {path: label} `by_label`: a listing has no carved
    splits, and a finished run's split folders are in its paths)."""
    old = {path: label if by_label else (split, label)
           for split, pairs in stored.items() for path, label in pairs}
    return {"added": sorted(set(new) - set(old)),
            "removed": sorted(set(old) - set(new)),
            "in another split or class": sorted(
                p for p in set(old) & set(new) if old[p] != new[p]),
            "modified": [p for p in _modified(workdir, stored) if p in new]}


def refuse_changes(data_dir, workdir, when, changes):
    """Raises InputError listing the `changes` (`_changes`, or
    `_finished_arrays`' without a data_dir), if any, to the images the
    run in `workdir` `when` ('started' or 'finished')."""
    if not any(changes.values()):
        return
    if not data_dir:  # arrays: what differs, no paths
        then = ("the same arrays to resume" if when == "started" else
                "the same arrays (the finished run stands)")
        raise InputError(
            f"Invalid data: the arrays given differ from those the run in "
            f"{workdir} {when} with: {'; '.join(changes)}. Allowed: "
            f"{then}, or a new workdir (or overwrite=True) to start over. "
            f"Received: other arrays")
    summary = "; ".join(f"{len(paths)} {what} (e.g. {', '.join(paths[:3])})"
                        for what, paths in changes.items() if paths)
    then = ("the same images to resume" if when == "started" else
            "the same images (the finished run stands)")
    raise InputError(
        f"Invalid data_dir {data_dir!r}: its images changed since the run "
        f"in {workdir} {when}: {summary}. Allowed: {then}, or a new "
        f"--workdir (or --overwrite) to start over. Received: "
        f"data_dir={data_dir!r}")


_OTHER_ARRAYS = "their images or labels (digest)"


def _check_same_arrays(workdir, data):
    """Raises InputError when arrays differ from those the run started
    with (a run whose data.json has no digest is not checked)."""
    stored = _record(workdir).get("arrays")
    if stored and stored != data.fingerprint:
        refuse_changes("", workdir, "started", {_OTHER_ARRAYS: True})


def _finished_arrays(workdir, record, data):
    """What differs between a finished run's arrays and those given: the
    images or labels (data.json's digest), the class names (metrics.json's:
    the digest holds the labels, not their names, and the export names
    them). A finished run is read back, not trained again: without this,
    other arrays returned the old run's metrics and export silently."""
    changes = {}
    if record.get("arrays") and record["arrays"] != data.fingerprint:
        changes[_OTHER_ARRAYS] = True
    elif not record.get("arrays") and record.get("stats"):
        changes["the run trained on a folder's images, not arrays"] = True
    metrics_path = os.path.join(workdir, "metrics.json")
    names = (io.read_json(metrics_path).get("class_names")
             if os.path.isfile(metrics_path) else None)
    if names and list(names) != list(data.class_names):
        changes[f"their class names (the run's: {', '.join(names)[:200]})"] \
            = True
    return changes


def _modified(workdir, stored):
    """Paths whose size or modification time differ from data.json's."""
    record = _record(workdir)
    if not record:
        return []
    stats = record["stats"]
    return sorted(
        file for split, pairs in stored.items()
        for (file, _), stat in zip(pairs, stats.get(split, []), strict=False)
        if _stat(file) != stat)


def _stat(path):
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]
