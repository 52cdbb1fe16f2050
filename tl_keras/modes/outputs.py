"""Where the modes that serve a finished run may write: --output of
predict and evaluate, --export_dir of export. Nothing tl_keras or the
user already wrote is replaced unasked, and nothing is written where a
later run, export or listing would replace or misread it."""

import os

from tl_keras import io
from tl_keras.errors import InputError
from tl_keras.export.checks import is_workdir, run_under


def check_output(config, extensions):
    """Fails before any work on an --output that cannot be written or
    would replace a file: its folder must exist, its extension be one of
    `extensions`; an existing file is replaced only with --overwrite, and
    never a file in a tl_keras export or a run's folders, nor a
    workdir's record (`_managed_folder`, `_RUN_FILES`: the export or the
    run would be lost)."""
    output = config.export.output
    if not output:
        return
    folder = os.path.dirname(os.path.abspath(output))
    managed = _managed_folder(output)
    problem = None
    if not os.path.isdir(folder):
        problem = f"its folder {folder!r} does not exist"
    elif not output.lower().endswith(extensions):
        problem = "its extension is not allowed"
    elif os.path.isdir(output):
        problem = "it is a folder"
    elif managed:
        problem = (f"it is inside {managed!r}, a tl_keras "
                   f"export or a run's own folder, which re-exporting or "
                   f"resuming rewrites (a re-export deleted predictions "
                   f"written there)")
    elif os.path.exists(output) and os.path.basename(output) in _RUN_FILES:
        problem = "it is a file of a tl_keras run or export"
    elif os.path.exists(output) and not config.runtime.overwrite:
        problem = "the file exists (--overwrite replaces it)"
    if problem:
        kinds = " or ".join(extensions)
        raise InputError(
            f"Invalid output: {problem}. Allowed: a new {kinds} file in an "
            f"existing folder. Received: output={output!r}")


# The records of a train, compare, demo, advise or rank workdir (see
# training/workdir.py, modes/compare.py), never an --output.
_RUN_FILES = ("config.json", "split.json", "data.json", "run.json",
              "decision.json", "ranking.json", "metrics.json", "demo.json",
              "results.json")


def _managed_folder(path):
    """The folder whose files tl_keras replaces that holds `path`: an
    export (`path` in its folder, assets/ or variables/), or a folder
    below a workdir's top level (logs/, checkpoints/, a compare's runs:
    --overwrite replaced a stage's log with prediction rows); else
    None. A workdir itself holds a new --output (`_RUN_FILES` aside)."""
    folder = os.path.dirname(os.path.abspath(path))
    for f in (folder, os.path.dirname(folder)):
        if os.path.exists(os.path.join(f, "saved_model.pb")):
            return f
    for parent in _ancestors(folder):
        if parent != os.path.dirname(parent) and is_workdir(parent):
            return parent  # an advise's, rank's or the demo's too
    return None


def check_outside_data(workdir, target):
    """Refuses an export into the run's data folder: the next listing of
    it (evaluate, a rerun) took the export for a class folder, and
    --overwrite moved a class folder aside for it."""
    stored = os.path.join(workdir, "config.json")
    data_dir = io.read_json(stored).get("data_dir") if os.path.isfile(
        stored) else ""
    if data_dir and io.inside(target, data_dir):
        raise InputError(
            f"Invalid export_dir {target!r}: it is inside the run's data "
            f"folder {data_dir!r}, whose next listing would read it as a "
            f"class. Allowed: a path outside --data_dir. Received: "
            f"export_dir={target!r}")


def check_export_target(workdir, target):
    """Refuses an --export_dir inside the run other than its own export
    folder, one inside any export, and one that is or lies inside another
    tl_keras run's workdir (`_other_run`) or holds one (`run_under`):
    --overwrite moved the run's model.keras aside for an export named
    after it (the run then had no model), a folder of another export (its
    variables/) for this one (that export then failed to load), and
    another run's checkpoints/, export or whole workdir (its lock
    unchecked; a folder of runs with it) for this export."""
    own = os.path.join(workdir, "export")
    other = _other_run(workdir, target)
    held = None if other else run_under(target)
    if other:
        where = (f"{'' if io.inside(other, target) else 'inside '}the "
                 f"workdir {other!r} of another tl_keras run, whose files "
                 f"it would replace")
    elif held:  # --overwrite moved it aside with the folder
        where = (f"a folder holding the workdir {held!r} of another "
                 f"tl_keras run, which replacing it would move aside")
    elif io.inside(target, workdir) and not io.inside(target, own):
        where = "inside the run, whose files it would replace"
    else:
        where = next((f"inside the export {folder!r}, whose files it "
                      f"would replace" for folder in _ancestors(target)
                      if os.path.isfile(os.path.join(folder,
                                                     "saved_model.pb"))),
                     None)
    if where:
        raise InputError(
            f"Invalid export_dir {target!r}: it is {where}. Allowed: "
            f"<workdir>/export (the default), or a folder outside the run, "
            f"outside any export and outside other runs' workdirs. "
            f"Received: export_dir={target!r}")


def _other_run(workdir, target):
    """The nearest tl_keras workdir that is or holds `target` (its links
    resolved), when that is not `workdir`, else None: the run's own
    export stays allowed when the run is itself inside another's
    workdir (a compare's or the demo's runs)."""
    real, own = os.path.realpath(target), os.path.realpath(workdir)
    for folder in (real, *_ancestors(real)):
        if folder == own:
            return None
        if is_workdir(folder):
            return folder
    return None


def _ancestors(path):
    """The folders above `path`, nearest first."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        yield folder
        if folder == os.path.dirname(folder):
            return
        folder = os.path.dirname(folder)
