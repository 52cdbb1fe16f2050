"""The advisor's entry points: measure, decide, write decision.json.

`advise_run` is what --approach=auto and compare call with a built
classifier; `advise` is --mode=advise (measure and decide, no training).
"""

import logging
import os
import time

import keras

from tl_keras import io
from tl_keras.advisor.decision import (
    SCRATCH_MARGIN_SE,
    decide,
    scratch_needed,
    scratch_run_wins,
)
from tl_keras.advisor.measurement import measure
from tl_keras.advisor.report import summary_lines
from tl_keras.advisor.scratch_run import scratch_epochs, scratch_run
from tl_keras.config import RESUMABLE_FIELDS, config_differences
from tl_keras.data.given import data_for_run, given_data_config
from tl_keras.distribute.strategy import check_one_process
from tl_keras.errors import InputError
from tl_keras.models.backbones import build_backbone
from tl_keras.models.base_checks import tuned_blocks
from tl_keras.models.classifier import build_classifier

log = logging.getLogger("tl_keras")


def advise_run(model, data, config, blocks):
    """Measures and decides for a run; returns the decision record that
    goes to <workdir>/decision.json (measurements, estimates, choice,
    reason)."""
    measurements = measure(model, data, config, blocks)
    pretrained = has_pretrained_weights(config.model)
    unfreeze = config.training.unfreeze
    decision = decide(measurements, unfreeze, pretrained)
    epochs = scratch_epochs(config, measurements["num_train"],
                            measurements["sample"])
    needed = _scratch_needed(decision, measurements)
    if not pretrained or not epochs or needed is None:
        measurements["scratch"] = {"skipped": (
            "no pretrained weights: the decision is scratch already"
            if not pretrained else "--advisor_scratch_fraction=0"
            if not epochs else "no pretrained estimate to compare it with")}
    elif needed > 1:
        measurements["scratch"] = {"skipped": (
            f"even a perfect scratch run could not beat the pretrained "
            f"estimate by {SCRATCH_MARGIN_SE:g} standard error on "
            f"{measurements['num_val']} validation images")}
    else:  # the one measurement that trains: only when it may matter
        run = scratch_run(model, data, config, epochs,
                          stop=_stop_rule(decision, measurements))
        measurements["scratch"] = run
        measurements["seconds"] = round(measurements["seconds"]
                                        + run["seconds"], 1)
    decision = _fit_unfreeze(decide(measurements, unfreeze, pretrained),
                             blocks)
    for line in summary_lines(measurements, decision):
        log.info("%s", line)
    return {"backbone": config.model.backbone,
            "weights": config.model.weights,
            "measurements": measurements, **decision}


def _fit_unfreeze(decision, blocks):
    """A numeric --unfreeze larger than the blocks below the chosen one
    (those that hold weights, as --unfreeze counts them) would fail once
    the base is cut there: it becomes 'all' of them, and the reason says
    so."""
    block, unfreeze = decision.get("feature_block"), decision["unfreeze"]
    names = [name for name, _ in blocks]
    if not block or unfreeze == "all" or block not in names:
        return decision
    kept = len(tuned_blocks(blocks[:names.index(block) + 1]))
    if int(unfreeze) <= kept:
        return decision
    return {**decision, "unfreeze": "all",
            "reason": decision["reason"] + (
                f" --unfreeze={unfreeze} is more than the {kept} blocks up "
                f"to {block}: all {kept} are unfrozen.")}


def has_pretrained_weights(model_config):
    """Whether the configured base starts from trained weights: a .keras
    backbone keeps its own (or a weights file's), a registered one unless
    weights=none."""
    return (model_config.backbone.endswith(".keras")
            or model_config.weights != "none")


def _scratch_needed(decision, measurements):
    """What the scratch run must beat (above 1: it cannot win; None:
    nothing was scored to compare it with)."""
    rows = decision["estimates"]  # the best transfer estimate first
    if not rows or rows[0]["approach"] != "transfer":
        return None
    return scratch_needed(rows[0]["estimate"], rows[0]["images"])


def _stop_rule(decision, measurements):
    """`scratch_run`'s `stop`: at the first epoch whose curve so far wins
    under the decision's own test (`scratch_run_wins`); the decision is
    then taken on that curve, so a stopped run is scratch's pick. (A run
    is never stopped as hopeless: a curve flat at chance for half its
    epochs then took off and won, bench seed 0,
    `tests/test_advisor.py::CLIMBING`, so a flat start is no evidence that
    it stays flat.)"""
    best = decision["estimates"][0]  # the best transfer estimate

    def stop(curve):
        needed = scratch_run_wins(curve, measurements["sample"], best,
                                  measurements)
        if needed is not None:
            return f"it beats the pretrained estimate (needed {needed:.3f})"
        return None
    return stop


def advise(config, data=None):
    """--mode=advise: measure the data with the base and write the
    decision `--approach=auto` would take, without training.

    Returns:
      The decision record (also in <workdir>/decision.json).
    """
    config = given_data_config(config, data).validate(
        require_data_dir=data is None)
    check_record_place(config)
    check_one_process(config.runtime)
    # As a train run: a live run on the workdir (whose decision.json this
    # would move aside) refuses this one.
    with io.workdir_lock(config.runtime.workdir):
        model, data, blocks = classifier_and_data(config, data)
        record = advise_run(model, data, config, blocks)
        write_record(config.runtime.workdir, "decision.json", record)
    return record


def classifier_and_data(config, data=None):
    """The config's base in a classifier (no dropout: it is measured, not
    trained) and the data at its input size (read unless given).

    Returns:
      (model, data, the base's blocks).
    """
    model_config = config.model
    # As train does: a random-init base (or head) measures the same in
    # every process, so a resumed compare decides as the first did.
    keras.utils.set_random_seed(config.data.seed)
    built = build_backbone(model_config.backbone, model_config.weights,
                           model_config.image_size,
                           model_config.feature_block)
    data = data_for_run(config, built.image_size, data)
    model = build_classifier(built, len(data.class_names), 0.0)
    return model, data, built.blocks()


def check_record_place(config):
    """Before any measuring: advise and rank write their record into
    --workdir, which must be a folder, and one that holds no training run
    (its decision.json is that run's evidence) unless --overwrite."""
    workdir = config.runtime.workdir
    problem = None
    if io.names_a_file(workdir):
        problem = "it is a file"
    elif os.path.isfile(os.path.join(workdir, "config.json")) and not (
            config.runtime.overwrite):
        problem = ("it holds a training run, whose decision.json would be "
                   "replaced (--overwrite moves the old record aside)")
    if problem:
        raise InputError(
            f"Invalid workdir for --mode={config.runtime.mode}: {problem}. "
            f"Allowed: a new or empty folder, or one of an earlier advise / "
            f"rank. Received: workdir={workdir!r}")


def decide_once(model, data, config, blocks, reuse=True):
    """The advisor's decision for the run or compare in config's workdir:
    its decision.json's when one was made with the same settings (every
    result-changing field, as a resumed run is compared) and `reuse`
    (the caller vouches for the images: a resumed run has checked them),
    else measured now and written, an older record moved aside. Its
    'seconds' is what deciding took (a compare reports it; records
    before 0.2 lack it)."""
    path = os.path.join(config.runtime.workdir, "decision.json")
    if reuse and os.path.isfile(path):
        record = io.read_json(path)
        if record.get("run") and not config_differences(record["run"],
                                                        config):
            log.info("Using the decision in %s: %s", path,
                     record["approach"])
            return record
    start = time.time()
    record = advise_run(model, data, config, blocks)
    record["run"] = {k: v for k, v in config.to_dict().items()
                     if k not in RESUMABLE_FIELDS}
    record["seconds"] = round(time.time() - start, 1)
    write_record(config.runtime.workdir, "decision.json", record)
    return record


def write_record(workdir, name, record):
    """Writes an advisor record (decision.json, ranking.json) into
    `workdir`, creating it; an earlier record is moved aside, not lost."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, name)
    if os.path.exists(path):
        log.info("Moved the earlier %s to %s", name, io.move_aside(path))
    io.write_json(path, record)
    log.info("Wrote %s", path)
