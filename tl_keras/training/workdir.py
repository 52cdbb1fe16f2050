"""The workdir is the unit of a run: claim it, check it, resume it.

Workdir layout:
  flags.cfg, config.json     the resolved config (flags.cfg is a flagfile)
  split.json                 which file went to which split
  decision.json              --approach=auto: the advisor's evidence
  checkpoints/<stage>/       best.weights.h5 (the head stage:
                             best.trainable.npz, its trainable weights)
                             + best.json (best by val_accuracy), backup/
                             (mid-stage resume state), done.json (the
                             stage finished)
  logs/<stage>.csv           one row per epoch
  logs/tensorboard/<stage>/  TensorBoard events
  model.keras                the final (best) model
  export/                    SavedModel for serving
  metrics.json               what the run measured
Running the same command again skips finished stages and resumes an
interrupted one from its last epoch.
"""

import logging
import os

from tl_keras import io
from tl_keras.config import config_differences
from tl_keras.errors import InputError

log = logging.getLogger("tl_keras")

# Files that --mode=advise and --mode=rank write into a workdir that a
# train run may use next.
_MEASUREMENT_FILES = {"decision.json", "ranking.json"}


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
    stored = os.path.join(workdir, "config.json")
    problem = None
    if os.path.isfile(stored):
        diffs = config_differences(io.read_json(stored), config)
        if diffs:
            problem = f"it holds a run with other settings ({'; '.join(diffs)})"
        else:
            log.info("Resuming the run in %s", workdir)
    elif os.path.isdir(workdir) and set(os.listdir(workdir)) - (
            _MEASUREMENT_FILES):
        problem = "it is not empty and holds no tl_keras run (no config.json)"
    if problem and not config.runtime.overwrite:
        raise InputError(
            f"Invalid workdir {workdir!r}: {problem}. Allowed: the same "
            f"flags (to resume), a new --workdir, or --overwrite (moves the "
            f"old workdir aside). Received: workdir={workdir!r}")
    return problem


def claim_workdir(config, conflict=None):
    """Creates the workdir (moving a conflicting one aside, never deleting
    it) and writes config.json and flags.cfg."""
    workdir = config.runtime.workdir
    if conflict:
        aside = io.move_aside(workdir)
        log.warning("Moved the previous contents of %s to %s", workdir, aside)
    os.makedirs(workdir, exist_ok=True)
    io.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    io.write_text(os.path.join(workdir, "flags.cfg"), config.to_flagfile())


def is_complete(workdir, chief=True):
    """Whether the run in `workdir` finished (metrics.json says complete;
    the chief's run also has its export)."""
    path = os.path.join(workdir, "metrics.json")
    if not os.path.isfile(path) or chief and not os.path.isfile(
            os.path.join(workdir, "export", "saved_model.pb")):
        return False
    return bool(io.read_json(path).get("complete"))
