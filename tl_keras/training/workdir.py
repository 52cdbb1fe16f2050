"""The workdir is the unit of a run: claim it, check it, resume it.

Workdir layout:
  flags.cfg, config.json     the resolved config (flags.cfg is a flagfile)
  split.json                 which file went to which split
  data.json                  each file's size and modification time,
                             the unreadable files (run_data.py)
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

import logging
import os
import random
import shutil

from tl_keras import io
from tl_keras.config import config_differences
from tl_keras.data.given import data_for_run
from tl_keras.errors import InputError
from tl_keras.training.run_data import (
    check_finished_data,
    check_records,
    check_same_data,
    check_same_weights,
    refuse_changes,
    started_with_copies,
    weight_digests,
)

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
    problem = None
    # A torn or edited config.json: --overwrite moves it aside.
    diffs = stored_differences(config, config.runtime.overwrite)
    if diffs is not None:
        if diffs:
            problem = f"it holds a run with other settings ({'; '.join(diffs)})"
        elif config.runtime.overwrite:  # it moves only another run aside
            log.warning("--overwrite: %s holds this same run (same "
                        "settings), which goes on as it is; nothing is "
                        "moved aside (a new --workdir trains anew).", workdir)
    elif os.path.isdir(workdir) and {  # earlier records moved aside too
            io.moved_from(name) for name in os.listdir(workdir)} - (
            _MEASUREMENT_FILES):
        problem = "it is not empty and holds no tl_keras run (no config.json)"
    if problem and not config.runtime.overwrite:
        raise InputError(
            f"Invalid workdir {workdir!r}: {problem}. Allowed: the same "
            f"flags (to resume), a new --workdir, or --overwrite (moves the "
            f"old workdir aside). Received: workdir={workdir!r}")
    if problem:
        check_move_aside(config)
    return problem


def stored_differences(config, unreadable_ok=False):
    """How the run stored in config's workdir differs from `config`: None
    when the workdir holds no config.json, else the differences (a list of
    sentences; empty: the same run, which resumes).

    Raises:
      InputError: the config.json is torn or edited, naming it; with
        `unreadable_ok` (the caller moves the run aside or refuses it
        anyway) that is one difference instead.
    """
    stored = os.path.join(config.runtime.workdir, "config.json")
    if not os.path.isfile(stored):
        return None
    try:
        return config_differences(io.read_json(stored), config)
    except InputError as e:
        if not unreadable_ok:
            raise
        return [f"its config.json is unreadable ({e})"]


def data_to_resume(config, conflict, image_size, data=None):
    """The run's data (`data_for_run`; `data`: arrays given, or None),
    its base's weight digests (`weight_digests`) and its conflict: for an
    interrupted run (no conflict yet), the images and base it started
    with, or an error; with --overwrite a run on other images or weights
    is a conflict, moved aside (the error told the user to --overwrite,
    and --overwrite met the same error)."""
    workdir = config.runtime.workdir
    keep = not conflict and started_with_copies(workdir)
    run_data = data_for_run(config, image_size, data, keep_copies=keep)
    weights = weight_digests(config)
    if conflict:
        return run_data, weights, conflict
    try:
        check_records(workdir)
        check_same_data(workdir, run_data, config.data.data_dir)
        check_same_weights(workdir, weights, config)
    except InputError as e:
        if not config.runtime.overwrite:
            raise
        check_move_aside(config)
        conflict = f"it started on other images or weights ({e})"
        log.warning("--overwrite: the interrupted run in %s started on "
                    "other images or weights; it is moved aside", workdir)
        if keep:  # a new run leaves the copies out
            run_data = data_for_run(config, image_size, data)
    return run_data, weights, conflict


def check_move_aside(config):
    """Raises InputError, before anything moves, when --overwrite would
    move the workdir aside with the images in it (a --data_dir inside
    the workdir: the run would then read a folder that is gone), or with
    a live run inside (`io.check_no_live_run_under`)."""
    workdir, data_dir = config.runtime.workdir, config.data.data_dir
    if not os.path.isdir(workdir):
        return
    if data_dir and io.inside(data_dir, workdir):
        raise InputError(
            f"Invalid overwrite: --overwrite would move the workdir "
            f"{workdir!r} aside with the images in it (--data_dir "
            f"{data_dir!r} is inside it). Allowed: a --data_dir outside the "
            f"workdir, or a new --workdir. Received: overwrite=True, "
            f"data_dir={data_dir!r}")
    io.check_no_live_run_under(workdir)


def claim_workdir(config, conflict=None, run_id=None, precision=None):
    """Creates the workdir (moving a conflicting one aside, never deleting
    it) and writes config.json, flags.cfg and run.json (the run's
    identity, `join_run`, and the precision it started in: a resume in
    another, where --mixed_precision=auto resolves otherwise, is said)."""
    workdir = config.runtime.workdir
    if conflict:
        # The folder a symlinked workdir names (the link was moved, and
        # the run then wrote into a new folder in the link's place).
        real = os.path.realpath(workdir)
        aside = io.move_aside(real)
        log.warning("Moved the previous contents of %s to %s", workdir, aside)
        os.makedirs(real, exist_ok=True)
    os.makedirs(workdir, exist_ok=True)
    io.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    io.write_text(os.path.join(workdir, "flags.cfg"), config.to_flagfile())
    if run_id:
        started = _stored(workdir, "precision") if not conflict else None
        if started and precision and started != precision:
            log.warning("The run started in %s precision and resumes in %s "
                        "(--mixed_precision=%s resolves per machine).",
                        started, precision, config.runtime.mixed_precision)
        io.write_json(os.path.join(workdir, RUN_FILE),
                      {"id": run_id, "precision": started or precision})


def join_run(config, place, data=None):
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

    A finished run is read back only if its images are those it trained
    on: its folder's, or the arrays `data` holds (an ImageData given to
    `train`), else an error (or with --overwrite, a conflict).

    Returns:
      (conflict for `claim_workdir`, whether the run is complete, id).
    """
    workdir, task = config.runtime.workdir, place.task
    if task.num_workers <= 1 or task.is_chief:
        try:
            conflict = check_workdir(config)
            complete = not conflict and is_complete(workdir)
            if complete:
                conflict, complete = _finished_as_listed(config, data)
            else:
                _say_resuming(workdir, conflict)
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
    conflict = check_workdir(config)
    _say_resuming(workdir, conflict)
    return conflict, False, run_id


def _say_resuming(workdir, conflict):
    """Logs that an unfinished run goes on (a finished one says it is
    complete instead: it said both)."""
    if not conflict and os.path.isfile(os.path.join(workdir, "config.json")):
        log.info("Resuming the run in %s", workdir)


def _finished_as_listed(config, data):
    """(conflict, complete) of a finished run: (None, True) if its images
    are as it trained on them (`check_finished_data`); if not, an error,
    or with --overwrite a conflict that moves the run aside."""
    workdir, data_dir = config.runtime.workdir, config.data.data_dir
    try:
        changes = check_finished_data(config, data)
    except InputError as e:  # its records missing or torn
        if not config.runtime.overwrite:
            raise
        changes = {f"its records cannot be read: {e}": True}
    if not changes:
        return None, True
    if not config.runtime.overwrite:
        refuse_changes(data_dir, workdir, "finished", changes)
    check_move_aside(config)
    return f"its images changed since it finished ({', '.join(changes)})", \
        False


def _stored_run_id(workdir):
    stored = _stored(workdir, "id")
    try:
        return int(stored) if stored is not None else None
    except (ValueError, TypeError):
        return None


def _stored(workdir, key):
    """run.json's `key`, or None (no run.json, or not tl_keras's)."""
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        return io.read_json(path).get(key)
    except ValueError:  # InputError: torn or edited
        return None


def is_complete(workdir, chief=True):
    """Whether the run in `workdir` finished (metrics.json says complete;
    the chief's run also has its export)."""
    path = os.path.join(workdir, "metrics.json")
    if not os.path.isfile(path) or chief and not os.path.isfile(
            os.path.join(workdir, "export", "saved_model.pb")):
        return False
    try:
        return bool(io.read_json(path).get("complete"))
    except InputError as e:  # edited: the run finishes (and writes it) again
        log.warning("%s", e)
        return False
