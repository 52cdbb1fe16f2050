"""`train(config)`: one run in a workdir, from images to an export.

Build the base and the data, claim the workdir, let the advisor decide
(--approach=auto), run the stages, then save model.keras, evaluate on the
test split, export the SavedModel and write metrics.json. Running the same
config again resumes; a finished run returns its metrics.
"""

import logging
import os

import keras

from tl_keras import advisor, io
from tl_keras.advisor.advise import decide_once
from tl_keras.advisor.report import choice_text
from tl_keras.config import (
    FINETUNE_ONLY,
    TRAINED_APPROACHES,
)
from tl_keras.config.reads import FINETUNE_STAGE_FIELDS, warn_unread
from tl_keras.data.given import given_data_config
from tl_keras.distribute.strategy import placement
from tl_keras.errors import fail
from tl_keras.export.saved_model import (
    export_saved_model,
    remove_stale_exports,
)
from tl_keras.models import recipe
from tl_keras.models.backbones import (
    build_backbone,
    load_model_file,
    reinitialized,
)
from tl_keras.models.classifier import build_classifier, check_unfreeze
from tl_keras.models.hub import is_hub
from tl_keras.training.checkpoints import save_model
from tl_keras.training.metrics import evaluate, export_manifest
from tl_keras.training.run_data import record_data
from tl_keras.training.stages import (
    check_replica_batch,
    plan_stages,
    run_stage,
)
from tl_keras.training.workdir import (
    claim_workdir,
    data_to_resume,
    join_run,
)

log = logging.getLogger("tl_keras")


def train(config, data=None, callbacks=()):
    """Trains, evaluates and exports one run; resumes if interrupted.

    Args:
      config: a `Config`; `config.runtime.workdir` receives everything.
      data: an optional `ImageData` (e.g. from `data.from_arrays`);
        default reads `config.data.data_dir`.
      callbacks: a list of more Keras callbacks, passed to every stage's
        fit (e.g. early stopping or your own logging). A head stage on
        cached features fits a model of the head alone (features in,
        logits out), so there a callback's `self.model` is that head,
        not the classifier (the run saves the classifier itself).

    Seeds Python's, numpy's and TensorFlow's global random generators
    from `config.seed` (`keras.utils.set_random_seed`), for the whole
    process: a run is reproducible, and code after it draws from there.

    Returns:
      The metrics dict that is also written to `metrics.json`.

    Raises:
      InputError: an invalid config, data or workdir; nothing in an
        existing workdir is deleted.
    """
    config = _checked_call(config, data, callbacks)
    warn_unread(config)
    return _train_checked(config, data, callbacks)


def train_row(config, data=None):
    """`train` for a row of a compare or the demo, without the warnings
    about settings the row does not read: the rows share their caller's
    settings (a scratch row leaves the fine-tune stage's unread), which
    the caller's own warnings cover."""
    return _train_checked(_checked_call(config, data, ()), data, ())


def _train_checked(config, data, callbacks):
    place = placement(config.runtime, config.data.batch_size)
    if not place.task.is_chief:
        # Other workers train in step with the chief but write only to a
        # folder of their own (backups, stage markers); the chief writes
        # the run's checkpoints, metrics and export.
        config = config.replace(workdir=(
            f"{config.runtime.workdir.rstrip(os.sep)}.{place.task.name}"))
    with place.policy_scope(), io.workdir_lock(config.runtime.workdir):
        return _train(config, data, place, callbacks)


def _checked_call(config, data, callbacks):
    """The validated config of a `train` call whose arguments are of the
    kinds it takes (else InputError before anything runs); with `data`
    given, without its data_dir (`given_data_config`, which checks that
    config is a Config)."""
    if not isinstance(callbacks, (list, tuple)) or not all(
            isinstance(c, keras.callbacks.Callback) for c in callbacks):
        fail("callbacks", "a list of keras.callbacks.Callback",
             repr(callbacks)[:200])
    config = given_data_config(config, data).validate(
        require_data_dir=data is None)
    if config.runtime.mode != "train":  # it trained, whatever the mode
        fail("mode", "train (the other modes have functions of their own: "
             "tl_keras.compare, advise, rank; or run.py --mode)",
             config.runtime.mode)
    return config


def _train(config, data, place, callbacks):
    workdir = config.runtime.workdir
    conflict, complete, run_id = join_run(config, place, data)
    metrics_path = os.path.join(workdir, "metrics.json")
    if complete:
        log.info("Run in %s is already complete; nothing to do. Metrics: "
                 "%s", workdir, metrics_path)
        if config.export.export_tflite and not os.path.isfile(
                os.path.join(workdir, "export", "model.tflite")):
            log.warning("--export_tflite: the run finished without it; "
                        "`--mode=export --workdir=%s --overwrite "
                        "--export_tflite` writes it.", workdir)
        return (io.read_json(metrics_path) if os.path.isfile(metrics_path)
                else {"complete": True, "task": place.task.name})
    keras.utils.set_random_seed(config.data.seed)
    with place.strategy.scope():
        backbone = _build_backbone(config)
    data, weights, conflict = data_to_resume(config, conflict,
                                             backbone.image_size, data)
    check_replica_batch(config, data, place)
    auto = config.training.approach == "auto"
    if not auto:  # the stages' own checks, before anything is written
        config, backbone, model, decision = _checked_approach(
            config, backbone, data, place)
    else:  # the advisor may cut the base: --gradual_unfreeze waits for it
        check_unfreeze(config.training.unfreeze_blocks(), backbone.blocks())
        recipe.check_lr_decay(config.training, backbone.blocks())
        advisor.check_sample(config, data)
    # Only now, with the config, backbone and data known to be good, is
    # anything written (a failed first try leaves no workdir behind; an
    # auto run's decision is checked once the advisor has written it).
    claim_workdir(config, conflict, run_id, place.precision)
    record_data(workdir, data, weights)
    if auto:
        config, backbone, model, decision = _checked_approach(
            config, backbone, data, place)
    blocks = backbone.blocks()
    stages, evaluation = {}, {}
    for i, stage in enumerate(plan_stages(config.training), start=1):
        with place.strategy.scope():
            stages[stage.name] = run_stage(
                model, stage, data, config, blocks, place, index=i,
                to_beat=stages.get("head") if stage.name == "finetune"
                else None, callbacks=callbacks, evaluation=evaluation)
    if not place.task.is_chief:
        metrics = {"complete": True, "task": place.task.name,
                   "stages": stages}
        io.write_json(metrics_path, metrics)
        log.info("Worker %s done; the chief writes the results.",
                 place.task.name)
        return metrics
    return _finish(config, model, backbone, data, place, stages, decision,
                   evaluation.pop("features", None))


def _checked_approach(config, backbone, data, place):
    """`_choose_approach`, then a fine-tune's --unfreeze and
    --gradual_unfreeze checked against the base's blocks."""
    config, backbone, model, decision = _choose_approach(
        config, backbone, data, place)
    if config.training.approach == "finetune":
        recipe.check_finetune_blocks(model, backbone.blocks(),
                                     config.training)
    return config, backbone, model, decision


def _choose_approach(config, backbone, data, place):
    """Builds the classifier; with --approach=auto first lets the advisor
    decide (and rebuilds: from random init when it picks scratch, cut
    after a block when it picks an earlier layer).

    Returns:
      (config with the concrete approach, backbone, model, decision or
      None).
    """
    num_classes, dropout = len(data.class_names), config.model.dropout
    with place.strategy.scope():
        model = build_classifier(backbone, num_classes, dropout)
    if config.training.approach != "auto":
        return config, backbone, model, None
    decision = _auto_decision(config, model, data, backbone.blocks(), place)
    block = decision.get("feature_block") or config.model.feature_block
    cut = block != config.model.feature_block
    given, default = config.training, type(config.training)()  # as given
    unused = [f"--{name}={getattr(given, name)}"
              for name in (*FINETUNE_STAGE_FIELDS, *FINETUNE_ONLY)
              if getattr(given, name) != getattr(default, name)]
    config = config.replace(approach=decision["approach"],
                            unfreeze=decision["unfreeze"], feature_block=block)
    if unused and config.training.approach != "finetune":
        log.warning("The advisor picked %s, which has no fine-tune stage: "
                    "%s not used", config.training.approach,
                    ", ".join(unused))
    # The scratch run re-seeds; a resumed run skips it, so seed again for
    # both to continue alike.
    keras.utils.set_random_seed(config.data.seed)
    if config.training.approach == "scratch" or cut:
        with place.strategy.scope():
            backbone = _build_backbone(config)
            model = build_classifier(backbone, num_classes, dropout)
    return config, backbone, model, decision


def _finish(config, model, backbone, data, place, stages, decision,
            features=None):
    """The chief's end of a run: model.keras, evaluation (on `features`,
    the evaluation split's cached base features, when a transfer run's
    head stage kept them), the export and metrics.json (written last,
    with complete=True)."""
    workdir = config.runtime.workdir
    metrics = {
        "approach": config.training.approach,
        "decision": decision and {k: decision[k] for k in (
            "situation", "approach", "unfreeze", "feature_block", "rule",
            "reason") if k in decision},
        "backbone": backbone.source,
        "image_size": backbone.image_size,
        "num_classes": len(data.class_names),
        "class_names": data.class_names,
        "num_train": data.counts["train"],
        "counts": data.counts,
        "class_counts": data.class_counts,
        "bad_files": len(data.bad_files),
        "bad_file_paths": data.bad_files[:100],
        "skipped_files": len(data.skipped_files),
        "copy_files": len(data.copy_files or []),
        "cached": data.cached,
        "hardware": place.describe(config.data.batch_size),
        "stages": stages,
    }
    model_path = os.path.join(workdir, "model.keras")
    log.info("Saving model.keras")
    save_model(model, model_path)
    if place.kind == "multi_worker":
        # Evaluate and export a process-local copy: the chief alone runs
        # them, so nothing may depend on the other workers' variables.
        model = load_model_file(model_path)
    metrics.update(evaluate(model, data, features))
    del features  # not needed by the export
    log.info("Writing the SavedModel export")
    remove_stale_exports(workdir)
    export_saved_model(
        model, os.path.join(workdir, "export"), data.class_names,
        manifest=export_manifest(config.training.approach, metrics),
        tflite=config.export.export_tflite, keep_old=False)
    metrics["complete"] = True
    io.write_json(os.path.join(workdir, "metrics.json"), metrics)
    missing = metrics["classes_not_tested"]
    log.info("Test accuracy %.4f, balanced %.4f (%s, %d images%s). "
             "Everything is in %s", metrics["test_accuracy"],
             metrics["balanced_accuracy"], metrics["test_split"],
             metrics["num_test"], f"; no test image of {len(missing)} of the "
             f"{len(data.class_names)} classes: {', '.join(missing[:5])}"
             + " ..." * (len(missing) > 5) if missing else "", workdir)
    if metrics["test_split"] == "val":
        log.warning("No test split: that accuracy is of the validation "
                    "images, which chose the best epoch, so it is not an "
                    "unbiased estimate (--test_split above 0, or a test/ "
                    "folder, holds images out).")
    return metrics


def _auto_decision(config, model, data, blocks, place):
    """--approach=auto: the advisor's decision, measured once per run (a
    resumed run reads it back from decision.json). In a multi-worker run
    the chief measures and decides, and the other workers train what it
    decided (`Placement.from_chief`)."""
    record = (_chief_decision(config, model, data, blocks)
              if place.task.is_chief else None)
    names = [name for name, _ in blocks]  # the block: 1 + its position
    approach, unfreeze, block = place.from_chief(
        [TRAINED_APPROACHES.index(record["approach"]),
         0 if record["unfreeze"] == "all" else int(record["unfreeze"]),
         names.index(record["feature_block"]) + 1
         if record.get("feature_block") else 0]
        if record else [0, 0, 0])
    if record is None:
        record = {"approach": TRAINED_APPROACHES[approach],
                  "unfreeze": str(unfreeze) if unfreeze else "all",
                  "feature_block": names[block - 1] if block else ""}
        log.info("Training the chief's decision: %s", choice_text(record))
    return record


def _chief_decision(config, model, data, blocks):
    """The advisor's decision for this process's run (reused from
    decision.json when a run with the same settings stored one)."""
    return decide_once(model, data, config, blocks)


def _build_backbone(config):
    model = config.model
    weights = model.weights
    from_file = model.backbone.endswith(".keras")
    if config.training.approach == "scratch":
        if from_file:
            log.info("approach=scratch: training the architecture of %s "
                     "from random init (its weights are not used)",
                     model.backbone)
            return reinitialized(build_backbone(
                model.backbone, "none", model.image_size,
                model.feature_block))
        if weights != "none":
            log.info("approach=scratch trains from random init; ignoring "
                     "weights=%s", weights)
        weights = "none"
    hub = is_hub(model.backbone)
    if (from_file or hub) and weights not in ("imagenet", "none"):
        source = f"its architecture, weights from {weights}"
    elif from_file or (hub and weights == "imagenet"):
        source = "its own weights" + (
            "; weights=none applies to registered bases: --approach="
            "scratch trains this architecture from random init"
            if from_file and weights == "none" else "")
    else:
        source = f"weights={weights}"
    log.info("Building backbone %s (%s%s)", model.backbone, source,
             f"; cut after block {model.feature_block}"
             if model.feature_block else "")
    return build_backbone(model.backbone, weights, model.image_size,
                          model.feature_block)
