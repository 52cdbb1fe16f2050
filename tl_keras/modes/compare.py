"""--mode=compare: scratch vs transfer vs finetune on the same data.

Each approach runs as its own resumable run in <workdir>/<approach>/ on
the same split and seed, with the same epoch budget (epochs +
finetune_epochs: scratch trains that many epochs, transfer spends them all
on the head, finetune splits them into its two stages). The advisor's
choice for the data is measured first and marked (run as a fourth row,
'auto', when it trains from another layer or unfreezes other blocks). Then:

  report.md       the table (test accuracy, macro-F1, wall time, trained
                  parameters, training images/s), the advisor's summary,
                  the plots
  results.json    the same numbers, machine-readable
  curves.png      validation accuracy per epoch of every approach
  confusion.png   the confusion matrix of the best approach
  export/         the best approach's SavedModel
"""

import logging
import os
import shutil
import tempfile
import time

import numpy as np

from tl_keras import io
from tl_keras.advisor.advise import classifier_and_data, decide_once
from tl_keras.advisor.measurement import check_sample
from tl_keras.config import FINETUNE_ONLY
from tl_keras.data.given import given_data_config
from tl_keras.distribute.strategy import check_one_process
from tl_keras.errors import InputError
from tl_keras.export.saved_model import (
    TEMP_PREFIX,
    is_export,
    remove_stale_exports,
)
from tl_keras.models import recipe
from tl_keras.modes.compare_report import (
    format_report,
    format_table,
    write_plots,
)
from tl_keras.training.run_data import check_finished_data
from tl_keras.training.trainer import train_row
from tl_keras.training.workdir import (
    check_move_aside,
    is_complete,
    stored_differences,
)

log = logging.getLogger("tl_keras")


def compare(config, data=None, header=None, also_in_workdir=()):
    """Runs every approach on the same data; returns the results dict.

    The best approach, the one exported, is chosen by validation accuracy
    (ties: validation loss), so its test accuracy stays an unbiased
    estimate.

    Args:
      config: the Config; `approach` is ignored, `workdir` receives one
        sub-run per approach and the report.
      data: optional `ImageData`; default reads `config.data.data_dir`.
      header: optional markdown paragraph put at the top of the report.
      also_in_workdir: names of other entries the caller keeps in the
        workdir (the demo's data and pretraining run).

    Raises:
      InputError: the workdir holds a train run or files compare did not
        write (with --overwrite it is moved aside instead), or another
        live run holds its lock.
    """
    config = given_data_config(config, data).validate(
        require_data_dir=data is None)
    check_one_process(config.runtime, config.data.batch_size)
    # The workdir's lock, as a train run's (`workdir_lock`): a second
    # compare on it is refused before its advisor runs.
    with io.workdir_lock(config.runtime.workdir):
        return _compare(config, data, header, also_in_workdir)


def _compare(config, data, header, also_in_workdir):
    start = time.time()
    workdir = config.runtime.workdir
    conflict = check_workdir(config, also_in_workdir, data=data)
    budget = config.training.epochs + config.training.finetune_epochs
    for changes in _fixed_runs(budget).values():  # before any work
        config.replace(mode="train", **changes).validate(data is None)
    data, decision, advise_seconds = _advise_first(config, data, conflict)
    runs, pick_name = _runs(config, decision, budget)
    results, reused = _run_all(config, runs, data)
    best = max(results, key=lambda k: (results[k]["val_accuracy"],
                                       -results[k]["val_loss"]))
    for name, row in results.items():
        row["advisor_pick"] = name == pick_name
        row["best"] = name == best
    summary = {
        "data_dir": config.data.data_dir,
        "backbone": config.model.backbone,
        "epoch_budget": budget,
        "num_train": data.counts["train"],
        "num_test": results[best]["num_test"],
        "test_split": results[best]["test_split"],
        "advisor": {k: decision[k] for k in (
            "situation", "approach", "unfreeze", "feature_block", "rule",
            "reason")},
        "advisor_pick": pick_name,
        "advisor_seconds": round(advise_seconds, 1),
        "best": best,
        "results": results,
        "seconds": round(time.time() - start + reused, 1),
    }
    _write_outputs(workdir, summary, decision, header)
    return summary


def _run_all(config, runs, data):
    """Trains each run in its sub-folder of the workdir.

    Returns:
      ({name: row}, seconds reused): a run already complete is read back
      in seconds, so it keeps the wall time the earlier results.json
      recorded for it, or without one (a compare killed before writing
      it) its stages' (the sum of those is the second value).
    """
    workdir = config.runtime.workdir
    path = os.path.join(workdir, "results.json")
    before = io.read_json(path).get("results", {}) if os.path.isfile(
        path) else {}
    results, reused = {}, 0.0
    for name, changes in runs.items():
        sub = os.path.join(workdir, name)
        done = is_complete(sub)
        log.info("Compare: %s (%s)", name, ", ".join(
            f"{k}={v}" for k, v in changes.items()))
        run_start = time.time()
        metrics = train_row(
            config.replace(mode="train", workdir=sub, **changes), data=data)
        seconds = time.time() - run_start
        if done:
            # A compare killed before its results.json: the run's stages
            # recorded their own time (it showed 0 s, and the advisor's
            # share of the compare grew accordingly).
            seconds = before[name]["seconds"] if name in before else sum(
                s["seconds_this_process"] for s in metrics["stages"].values())
            reused += seconds
        results[name] = _row(metrics, seconds)
    return results, reused


def _changed_runs(config, data):
    """A sentence naming the first run of an earlier compare in the
    workdir whose settings differ from those this compare gives it (its
    resumption would be refused once the advisor had run), or that
    finished on other images (or other given arrays: `data`), or None."""
    budget = config.training.epochs + config.training.finetune_epochs
    for name, changes in _fixed_runs(budget).items():
        sub = os.path.join(config.runtime.workdir, name)
        run = config.replace(mode="train", workdir=sub, **changes)
        diffs = stored_differences(run, config.runtime.overwrite)
        if diffs is not None:
            if diffs:
                return (f"its {name} run has other settings "
                        f"({'; '.join(diffs)})")
            changed = is_complete(sub) and check_finished_data(run, data)
            if changed:  # it would be read back, not trained again
                return (f"the images changed since its {name} run "
                        f"finished ({', '.join(changed)})")
    return None


def _fixed_runs(budget):
    """The three rows: each approach with the same epoch budget (the
    fine-tune stage's options do not apply to the other two)."""
    return {
        "scratch": dict(approach="scratch", epochs=budget, **FINETUNE_ONLY),
        "transfer": dict(approach="transfer", epochs=budget,
                         **FINETUNE_ONLY),
        "finetune": dict(approach="finetune"),
    }


def _runs(config, decision, budget):
    """{run name: config changes} with the same epoch budget for each,
    and the name of the advisor's pick among them (a fourth run, 'auto',
    when it picks another layer or unfreeze setting than the rows')."""
    runs = _fixed_runs(budget)
    pick_name = decision["approach"]
    block = decision.get("feature_block") or config.model.feature_block
    if pick_name != "scratch" and (
            block != config.model.feature_block
            or decision["unfreeze"] != config.training.unfreeze):
        runs["auto"] = dict(runs[pick_name], feature_block=block,
                            unfreeze=decision["unfreeze"])
        pick_name = "auto"
    return runs, pick_name


# What compare writes into its workdir (and `advise` / `rank` may have).
_OWN_ENTRIES = {"decision.json", "ranking.json", "results.json", "report.md",
                "curves.png", "confusion.png", "export", "scratch",
                "transfer", "finetune", "auto"}


def check_workdir(config, also_in_workdir=(), runs=True, data=None):
    """Checks that compare may use the workdir (`workdir_problem`).

    Returns:
      None, or the problem, when --overwrite allows moving the workdir
      aside (done once the base and the data are known to be good).

    Raises:
      InputError: it holds a train run or files compare did not write
        (with `also_in_workdir`, even with --overwrite: the caller's
        entries must stay where they are).
    """
    workdir = config.runtime.workdir
    problem = workdir_problem(config, also_in_workdir, runs, data)
    if problem is None:
        return None
    if not config.runtime.overwrite or also_in_workdir:
        raise InputError(
            f"Invalid workdir {workdir!r} for compare: {problem}. Allowed: "
            f"a new or empty --workdir, the workdir of an earlier compare "
            f"(to resume)" + ("" if also_in_workdir else
                              ", or --overwrite (moves the old one aside)")
            + f". Received: workdir={workdir!r}")
    check_move_aside(config)
    return problem


def workdir_problem(config, also_in_workdir=(), runs=True, data=None):
    """Why compare may not use the workdir as it is (a sentence), or None:
    it holds a train run, files compare did not write (beyond the
    caller's `also_in_workdir` entries), or runs whose settings or images
    differ (`runs`; `data`: the ImageData given, if any)."""
    workdir = config.runtime.workdir
    if not os.path.isdir(workdir):
        return None
    entries = {e for e in os.listdir(workdir) if not e.startswith(".")}
    own = _OWN_ENTRIES | set(also_in_workdir)
    # A sub-run moved aside by its own --overwrite, or the lock a killed
    # sub-run left, stays compare's.
    foreign = sorted(e for e in entries
                     if io.moved_from(e).removesuffix(".lock")
                     not in own)
    if "config.json" in entries:
        return ("it holds a train run (config.json); compare writes one "
                "run per approach into sub-folders of its own workdir")
    if foreign:
        return (f"it holds files compare did not write "
                f"({', '.join(foreign[:5])})")
    if "results.json" in entries and not _compare_results(workdir):
        # e.g. an evaluate --output: compare wrote over it.
        return "its results.json was not written by compare"
    if entries & {"report.md", "export"} and not entries & {
            "decision.json", "results.json"}:
        return "its report.md or export/ was not written by compare"
    return _changed_runs(config, data) if runs else None


def _compare_results(workdir):
    """Whether <workdir>/results.json is a compare's (its rows and best)."""
    try:
        results = io.read_json(os.path.join(workdir, "results.json"))
    except InputError:  # torn or not an object
        return False
    return isinstance(results.get("results"), dict) and "best" in results


def _advise_first(config, data, conflict=None):
    """Builds the base (and the data), moves a conflicting workdir aside,
    runs the advisor (`decide_once`); returns (data, decision, seconds
    deciding took)."""
    model, data, blocks = classifier_and_data(config, data)
    # The fine-tune run's --unfreeze / --gradual_unfreeze, and the
    # advisor's sample, before anything is moved or run.
    recipe.check_finetune_blocks(model, blocks, config.training)
    check_sample(config, data)
    workdir = config.runtime.workdir
    if conflict:
        log.warning("Moved the previous contents of %s to %s (%s)",
                    workdir, io.move_aside(workdir), conflict)
    # Reused when one of its runs has started (each checks its images
    # on resume); measured again (the old record aside) otherwise.
    started = any(os.path.isfile(os.path.join(workdir, name, "config.json"))
                  for name in (*_fixed_runs(0), "auto"))
    decision = decide_once(model, data, config, blocks, reuse=started)
    return data, decision, decision.get("seconds", 0.0)


def _write_outputs(workdir, summary, decision, header):
    """The best run's export, the plots, results.json and report.md."""
    best = summary["best"]
    _copy_export(os.path.join(workdir, best, "export"),
                 os.path.join(workdir, "export"))
    plots = write_plots(workdir, summary["results"], best)
    io.write_json(os.path.join(workdir, "results.json"), summary)
    io.write_text(os.path.join(workdir, "report.md"),
                  format_report(summary, decision, plots, header))
    print(format_table(summary))
    log.info("Report: %s; best model exported to %s",
             os.path.join(workdir, "report.md"),
             os.path.join(workdir, "export"))


def _row(metrics, seconds):
    stages = metrics["stages"].values()
    images = sum(metrics["num_train"] * s.get("epochs_this_process",
                                              s["epochs"]) for s in stages)
    train_seconds = sum(s["seconds_this_process"] for s in stages)
    per_class = metrics["per_class"].values()
    curve = []
    for stage in stages:
        curve += stage["history"].get("val_accuracy", [])
    # The final model is the last stage's kept epoch (a fine-tune stage
    # holds the head's as its epoch 0, and keeps its own only if the
    # validation set prefers it: `StageCheckpoint`).
    final = list(stages)[-1]
    return {
        "approach": metrics["approach"],
        "val_accuracy": round(final["best_val_accuracy"], 4),
        "val_loss": round(final["best_val_loss"], 4),
        "test_accuracy": round(metrics["test_accuracy"], 4),
        # Over the classes the test split holds (one without test images
        # counted as F1 0: 0.314 for per-class F1s 0.941, 0 and 0).
        "macro_f1": round(float(np.mean([c["f1-score"] for c in per_class
                                         if c["support"]])), 4),
        "seconds": round(seconds, 1),
        "trained_params": max(s["trainable_params"] for s in stages),
        "images_per_second": round(images / train_seconds, 1)
        if train_seconds and images else None,
        "num_test": metrics["num_test"],
        "test_split": metrics["test_split"],
        "classes_not_tested": [n for n, c in metrics["per_class"].items()
                               if not c["support"]],
        "val_accuracy_curve": curve,
        "stage_epochs": [s["epochs"] for s in stages],
        "confusion_matrix": metrics["confusion_matrix"],
        "class_names": metrics["class_names"],
    }


def _copy_export(source, target):
    """Copies an export; a previous one is replaced only once the copy is
    complete (a hidden temporary copy until then). Hidden copies that a
    killed compare left are deleted first (the workdir's lock is held)."""
    parent = os.path.dirname(os.path.abspath(target))
    remove_stale_exports(parent)
    tmp = tempfile.mkdtemp(prefix=TEMP_PREFIX + "copy-", dir=parent)
    os.rmdir(tmp)  # copytree makes it
    try:
        shutil.copytree(source, tmp)
        io.replace_dir(tmp, target, discard_old=is_export(target))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
