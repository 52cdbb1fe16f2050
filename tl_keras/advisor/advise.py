"""The advisor's entry points: measure, decide, write decision.json.

`advise_run` is what --approach=auto and compare call with a built
classifier; `advise` is --mode=advise (measure and decide, no training).
"""

import dataclasses
import logging
import os

from tl_keras import io
from tl_keras.advisor.decision import Thresholds, decide
from tl_keras.advisor.measurement import measure
from tl_keras.advisor.report import summary_lines
from tl_keras.advisor.scratch_run import scratch_epochs, scratch_run
from tl_keras.advisor.statistics import scratch_matches
from tl_keras.data.pipelines import make_datasets
from tl_keras.models.backbones import build_backbone
from tl_keras.models.classifier import build_classifier

log = logging.getLogger("tl_keras")


def advise_run(model, data, config, blocks):
    """Measures and decides for a run; returns the decision record that
    goes to <workdir>/decision.json (measurements, thresholds, situation,
    choice, reason)."""
    thresholds = Thresholds.from_config(config.advisor)
    measurements = measure(model, data, config, blocks)
    decision = decide(measurements, thresholds, len(blocks))
    epochs = scratch_epochs(config)
    if epochs and decision["approach"] == "scratch":
        measurements["problems"].append(
            "scratch run: skipped, the decision is scratch already")
    elif epochs:  # the one measurement that trains: only when it may matter
        probe = measurements.get("last", {}).get("probe_accuracy")
        enough = None if probe is None else (
            lambda accuracy: scratch_matches(
                accuracy, probe, measurements.get("num_val", 0),
                thresholds.tie_se))
        run = scratch_run(model, data, config, epochs, enough)
        measurements["scratch"] = run
        measurements["seconds"] = round(measurements["seconds"]
                                        + run["seconds"], 1)
        decision = decide(measurements, thresholds, len(blocks))
    for line in summary_lines(measurements, decision):
        log.info("%s", line)
    return {"backbone": config.model.backbone,
            "weights": config.model.weights,
            "measurements": measurements,
            "thresholds": dataclasses.asdict(thresholds), **decision}


def advise(config, data=None):
    """--mode=advise: measure the data with the base and write the
    decision `--approach=auto` would take, without training.

    Returns:
      The decision record (also in <workdir>/decision.json).
    """
    config.validate(require_data_dir=data is None)
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
    built = build_backbone(model_config.backbone, model_config.weights,
                           model_config.image_size,
                           model_config.feature_block)
    if data is None:
        data = make_datasets(config.data, built.image_size)
    model = build_classifier(built, len(data.class_names), 0.0)
    return model, data, built.blocks()


def write_record(workdir, name, record):
    """Writes an advisor record (decision.json, ranking.json) into
    `workdir`, creating it."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, name)
    io.write_json(path, record)
    log.info("Wrote %s", path)
