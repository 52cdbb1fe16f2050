"""The workdir is the unit of a run: claim it, check it, resume it.

Workdir layout:
  flags.cfg, config.json     the resolved config (flags.cfg is a flagfile)
  split.json                 which file went to which split
  data.json                  each file's size and modification time
  run.json                   the run's identity (multi-worker: checked
                             by every worker against the chief's)
  decision.json              --approach=auto: the advisor's evidence
  checkpoints/<stage>/       best.weights.h5 (the head stage:
                             best.trainable.npz, its trainable weights and
                             feature statistics, and last.trainable.npz,
                             its last epoch's) + best.json (the kept
                             epoch), backup/epoch-N.weights.h5
                             (mid-stage resume state), done.json (the
                             stage finished)
  logs/<stage>.csv           one row per epoch
  logs/tensorboard/<stage>/  TensorBoard events
  model.keras                the final (best) model
  export/                    SavedModel for serving
  metrics.json               what the run measured
Running the same command again skips finished stages and resumes an
interrupted one from its last epoch. While a run uses the workdir it
holds `<workdir>.lock`.
"""

import hashlib
import logging
import os
import random
import shutil

from tl_keras import io
from tl_keras.config import config_differences
from tl_keras.errors import InputError

log = logging.getLogger("tl_keras")

# Files that --mode=advise and --mode=rank write into a workdir that a
# train run may use next.
_MEASUREMENT_FILES = {"decision.json", "ranking.json"}

RUN_FILE = "run.json"


def check_workdir(config):
    """Checks that the workdir is new, empty, or holds this same run.

    Args:
      config: the run's `Config`.

    Returns:
      None, or a description of the conflict when `overwrite` allows
      moving the old contents aside.

    Raises:
      InputError: the workdir holds a different run or unrelated files
        and `overwrite` is off.
    """
    workdir = config.runtime.workdir
    if io.names_a_file(workdir):
        raise InputError(
            f"Invalid workdir {workdir!r}: it is a file. Allowed: a folder "
            f"(new, empty, or holding this run). Received: "
            f"workdir={workdir!r}")
    stored = os.path.join(workdir, "config.json")
    problem = None
    if os.path.isfile(stored):
        diffs = config_differences(io.read_json(stored), config)
        if diffs:
            problem = f"it holds a run with other settings ({'; '.join(diffs)})"
        else:
            log.info("Resuming the run in %s", workdir)
    elif os.path.isdir(workdir) and {  # earlier records moved aside too
            io.moved_from(name) for name in os.listdir(workdir)} - (
            _MEASUREMENT_FILES):
        problem = "it is not empty and holds no tl_keras run (no config.json)"
    if problem and not config.runtime.overwrite:
        raise InputError(
            f"Invalid workdir {workdir!r}: {problem}. Allowed: the same "
            f"flags (to resume), a new --workdir, or --overwrite (moves the "
            f"old workdir aside). Received: workdir={workdir!r}")
    return problem


def claim_workdir(config, conflict=None, run_id=None):
    """Creates the workdir (moving a conflicting one aside, never deleting
    it) and writes config.json, flags.cfg and run.json (the run's
    identity, `join_run`)."""
    workdir = config.runtime.workdir
    if conflict:
        aside = io.move_aside(workdir)
        log.warning("Moved the previous contents of %s to %s", workdir, aside)
    os.makedirs(workdir, exist_ok=True)
    io.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    io.write_text(os.path.join(workdir, "flags.cfg"), config.to_flagfile())
    if run_id:
        io.write_json(os.path.join(workdir, RUN_FILE), {"id": run_id})


def join_run(config, place):
    """Checks the workdir and agrees with the chief on which run this is.

    A run's identity is a random number the chief draws when it starts a
    workdir afresh (kept in run.json while it resumes). In a multi-worker
    run the chief checks its workdir and sends its identity and whether
    its run is complete in one all-reduce (`Placement.from_chief`); a
    worker whose folder (`<workdir>.worker-N`) holds another run's state,
    e.g. after the chief's workdir was deleted to start over, discards it
    (moves it aside if tl_keras's run.json is missing) instead of trusting
    its own "complete" and leaving the chief alone in a collective. If the
    chief refuses the run (its workdir error), the workers stop too.

    Returns:
      (conflict for `claim_workdir`, whether the run is complete, id).
    """
    workdir, task = config.runtime.workdir, place.task
    if task.num_workers <= 1 or task.is_chief:
        try:
            conflict = check_workdir(config)
            complete = not conflict and is_complete(workdir)
            run_id = (not conflict and _stored_run_id(workdir)) or (
                random.SystemRandom().randrange(1, 2**31))
        except Exception:  # any failure here: the workers stop too
            place.from_chief([0, 0])  # 0: a refusal
            raise
        place.from_chief([run_id, complete])
        return conflict, complete, run_id
    run_id, complete = place.from_chief([0, 0])
    if not run_id:
        raise InputError(
            f"Invalid run: the chief refused it (its log says why), so "
            f"{task.name} stops without training. Allowed: what the "
            f"chief's error asks for. Received: a refusal from the chief")
    stored = _stored_run_id(workdir)
    if os.path.isdir(workdir) and stored != run_id:
        if stored:  # tl_keras's own state of another run
            shutil.rmtree(workdir)
            log.warning("Discarded %s: it held %s's state of another run "
                        "(%s; the chief's run is %s)", workdir, task.name,
                        stored, run_id)
        else:
            log.warning("Moved %s to %s: it held no run identity, so "
                        "nothing shows it belongs to the chief's run %s",
                        workdir, io.move_aside(workdir), run_id)
    if complete:
        return None, True, run_id
    return check_workdir(config), False, run_id


def _stored_run_id(workdir):
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        return int(io.read_json(path)["id"])
    except (ValueError, KeyError, TypeError):
        return None


def is_complete(workdir, chief=True):
    """Whether the run in `workdir` finished (metrics.json says complete;
    the chief's run also has its export)."""
    path = os.path.join(workdir, "metrics.json")
    if not os.path.isfile(path) or chief and not os.path.isfile(
            os.path.join(workdir, "export", "saved_model.pb")):
        return False
    return bool(io.read_json(path).get("complete"))


def record_data(workdir, data, weights=None):
    """Writes split.json (each split's (path, label) pairs) and data.json
    (each file's [size, mtime_ns], in the same order; `weights`, from
    `weight_digests`), which a resumed run is checked against
    (`check_same_data`, `check_same_weights`)."""
    files = data.files or {}
    io.write_json(os.path.join(workdir, "split.json"), files)
    io.write_json(os.path.join(workdir, "data.json"), {
        "stats": {split: [_stat(path) for path, _ in pairs]
                  for split, pairs in files.items()},
        **({"arrays": data.fingerprint} if data.fingerprint else {}),
        **({"weights": weights} if weights else {})})


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
    path = os.path.join(workdir, "data.json")
    stored = io.read_json(path).get("weights") if os.path.isfile(path) else None
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
    stored = {split: [tuple(pair) for pair in pairs]
              for split, pairs in io.read_json(split_path).items()}
    current = {split: [tuple(pair) for pair in pairs]
               for split, pairs in data.files.items()}
    old = {path: (split, label) for split, pairs in stored.items()
           for path, label in pairs}
    new = {path: (split, label) for split, pairs in current.items()
           for path, label in pairs}
    changes = {
        "added": sorted(set(new) - set(old)),
        "removed": sorted(set(old) - set(new)),
        "in another split or class": sorted(
            p for p in set(old) & set(new) if old[p] != new[p]),
        "modified": _modified(workdir, stored),
    }
    if any(changes.values()):
        summary = "; ".join(
            f"{len(paths)} {what} (e.g. {', '.join(paths[:3])})"
            for what, paths in changes.items() if paths)
        raise InputError(
            f"Invalid data_dir {data_dir!r}: its images changed since the "
            f"run in {workdir} started: {summary}. Allowed: the same images "
            f"to resume, or a new --workdir (or --overwrite) to start over. "
            f"Received: data_dir={data_dir!r}")


def _check_same_arrays(workdir, data):
    """Raises InputError when arrays differ from those the run started
    with (a run whose data.json has no digest is not checked)."""
    path = os.path.join(workdir, "data.json")
    stored = io.read_json(path).get("arrays") if os.path.isfile(path) else None
    if stored and stored != data.fingerprint:
        raise InputError(
            f"Invalid data: the arrays differ from those the run in "
            f"{workdir} started with (their images or labels digest). "
            f"Allowed: the same arrays to resume, or a new workdir (or "
            f"overwrite) to start over. Received: other arrays")


def _modified(workdir, stored):
    """Paths whose size or modification time differ from data.json's."""
    path = os.path.join(workdir, "data.json")
    if not os.path.isfile(path):
        return []
    stats = io.read_json(path)["stats"]
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
