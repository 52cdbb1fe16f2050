"""One stage of a run: configure, compile, fit, keep the best.

A run is one stage (scratch) or two (head, then finetune). Each stage
freezes what it must (`models.configure_stage`), compiles with a fresh
optimizer, fits with resume state (`EpochBackup`) and keeps its best
epoch (`StageCheckpoint`); a finished stage leaves `done.json` and is
skipped when the run is resumed.
"""

import dataclasses
import logging
import os
import sys
import time

from tl_keras import inference, io
from tl_keras.data.augment import seed_states
from tl_keras.data.pipelines import full_batches
from tl_keras.data.sampling import STATISTICS_SAMPLE, sample_training_set
from tl_keras.errors import InputError
from tl_keras.models import recipe
from tl_keras.models.classifier import (
    compile_for_stage,
    configure_stage,
    count_params,
    standardize_head,
)
from tl_keras.training import feature_cache
from tl_keras.training.backups import EpochBackup, backup_dir, remove_backups
from tl_keras.training.cache_plan import cache_plan
from tl_keras.training.checkpoints import AveragedWeights, StageCheckpoint
from tl_keras.training.metrics import StageBoard, StageLog, read_history

log = logging.getLogger("tl_keras")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One fit() of a run: which part trains, how long, how fast."""

    name: str
    epochs: int
    learning_rate: float


def plan_stages(training):
    """Returns the stages of `training.approach` (a TrainingConfig), in
    order."""
    if training.approach == "scratch":
        return [Stage("scratch", training.epochs, training.learning_rate)]
    stages = [Stage("head", training.epochs, training.learning_rate)]
    if training.approach == "finetune":
        stages.append(Stage("finetune", training.finetune_epochs,
                            training.finetune_learning_rate))
    return stages


def run_stage(model, stage, data, config, blocks, place, index=1,
              to_beat=None, callbacks=(), evaluation=None):
    """Configures, compiles and fits one stage; skips it if already done.

    Args:
      model, stage, data, config: the classifier, a `Stage`, the run's
        `ImageData` and `Config`.
      blocks: the base's blocks (`models.list_blocks`).
      place: the run's `distribute.Placement`.
      index: the stage's number in the run (selects its shuffle orders).
      to_beat: the head's summary, for finetune: its kept weights (in
        `model`) stay unless the best-epoch rule prefers an epoch of this
        stage; the fit goes on from the head's last epoch (`_start`).
      callbacks: more Keras callbacks for this stage's fit.
      evaluation: an optional dict that a transfer run's head stage on
        cached features fills (`_fit_inputs`), for `metrics.evaluate`.

    Returns:
      The stage's summary for metrics.json (settings, history, best).
    """
    workdir = config.runtime.workdir
    configure_stage(model, stage.name, blocks, config.training.unfreeze_blocks()
                    if stage.name == "finetune" else None)
    recipe_callbacks = _compile(model, stage, data, config, place, blocks)
    data.shuffle.track("model", seed_states(model))  # dropout, per epoch
    stage_dir, checkpoint = _stage_checkpoint(model, stage, workdir,
                                              data.counts["val"])
    done_path = os.path.join(stage_dir, "done.json")
    # In a multi-worker run the chief's folder says whether the stage is
    # done, for every worker (`distribute.Placement.from_chief`).
    if place.from_chief([os.path.isfile(done_path)])[0]:
        feature_cache.remove_spilled(workdir)  # a kill before it went
        return _skip_done(model, stage, index, checkpoint, done_path, place)
    started_from = _start(checkpoint, to_beat, stage_dir, place)
    trainable, total = _log_start(model, stage, index)
    stage_log = StageLog(os.path.join(workdir, "logs", f"{stage.name}.csv"))
    start = time.time()
    plan, why = cache_plan(config.training, config.data, stage.name, data,
                           model, evaluates=place.task.is_chief)
    fit_model, train_ds, val_ds, extract_seconds = _fit_inputs(
        model, stage, data, config, place, plan, evaluation)
    _fit(model, fit_model, train_ds, val_ds, stage, config, place,
         _stage_callbacks(stage, index, data, checkpoint, stage_dir,
                          stage_log, place, workdir, config,
                          recipe_callbacks + list(callbacks)))
    summary = {
        "epochs": stage.epochs, "learning_rate": stage.learning_rate,
        "trainable_params": trainable, "total_params": total,
        "unfreeze": (config.training.unfreeze if stage.name == "finetune"
                     else None),
        "recipe": recipe.describe(config.training, stage.name),
        "started_from": started_from,
        "seconds_this_process": round(time.time() - start, 1),
        **_fit_summary(plan, why, extract_seconds, checkpoint, stage_log),
    }
    _check_outcome(stage, checkpoint, to_beat, summary, place)
    io.write_json(done_path, summary)
    remove_backups(stage_dir)
    feature_cache.remove_spilled(workdir)  # an earlier try's too
    return summary


def _start(checkpoint, to_beat, stage_dir, place):
    """A fine-tune stage (`to_beat`: the head's summary) keeps the head's
    kept epoch as its epoch 0 and trains on from the head's last one (a
    worker: the chief's weights, from `EpochBackup`); returns which."""
    if to_beat is None:
        return None
    if not place.task.is_chief:
        checkpoint.start_from(to_beat)
        return "the chief's"
    return "the head's " + checkpoint.start_from(
        to_beat, os.path.join(os.path.dirname(stage_dir), "head"))


def _fit(model, fit_model, train_ds, val_ds, stage, config, place,
         callbacks):
    """fit() of the stage (with --l2sp's penalty on during a fine-tune),
    then every worker takes the chief's weights."""
    release, first = recipe.anchor_for_stage(model, stage.name,
                                             config.training)
    try:
        fit_model.fit(
            train_ds, validation_data=val_ds, epochs=stage.epochs,
            shuffle=False,  # tf.data already shuffles the train set
            callbacks=first + callbacks,  # first: others read val_loss
            verbose=1 if sys.stdout.isatty() else 2)
    finally:
        release()
    # Each worker restored its own best epoch; the chief's is the run's.
    place.sync_from_chief(model.weights)


def _check_outcome(stage, checkpoint, to_beat, summary, place):
    """Says when a stage kept the previous stage's weights; after a stage
    that stopped on a NaN / Inf loss, keeps its best epoch before that (or
    the previous stage's weights) and says so, or fails when there is
    none (as the chief's checkpoint says, on every worker: one failing
    alone would leave the others in a collective)."""
    if to_beat is not None and checkpoint.best_epoch == 0:
        log.info("No %s epoch was preferred to the previous stage's on the "
                 "validation set (val_accuracy %.4f, val_loss %.4f: a "
                 "lower loss within a standard error of the highest "
                 "accuracy, or a lead beyond one); keeping its weights.",
                 stage.name, checkpoint.best_accuracy, checkpoint.best)
    if not checkpoint.diverged_at:
        return
    epoch, batch = checkpoint.diverged_at
    summary["diverged"] = {"epoch": epoch, "batch": batch}
    rate = ("finetune_learning_rate" if stage.name == "finetune"
            else "learning_rate")
    nothing = place.from_chief([checkpoint.best_epoch == 0
                                and to_beat is None])[0]
    if nothing:
        raise InputError(
            f"Invalid {rate}: the {stage.name} stage diverged (loss NaN or "
            f"Inf at epoch {epoch}, batch {batch}) before any epoch "
            f"finished; nothing usable to keep. Allowed: a smaller "
            f"--{rate} (or a warmup, --warmup_epochs). Received: "
            f"{rate}={stage.learning_rate}")
    log.warning("The %s stage diverged (loss NaN or Inf at epoch %d, batch "
                "%d) and stopped; keeping %s. A smaller --%s may go "
                "further.", stage.name, epoch, batch,
                f"its best epoch ({checkpoint.best_epoch})"
                if checkpoint.best_epoch else "the previous stage's weights",
                rate)


def _stage_checkpoint(model, stage, workdir, val_images):
    """The stage's folder (created) and its `StageCheckpoint`, which saves
    and restores the full classifier even when the fit runs on the
    cached-features head model (which shares the head's layers), and
    weighs accuracy leads against the noise of `val_images` images."""
    stage_dir = os.path.join(workdir, "checkpoints", stage.name)
    os.makedirs(stage_dir, exist_ok=True)
    return stage_dir, StageCheckpoint(stage_dir, stage.name, target=model,
                                      trainable_only=stage.name == "head",
                                      val_images=val_images)


def _log_start(model, stage, index):
    """Logs what the stage trains; returns (trainable, total) weights."""
    trainable = count_params(model.trainable_weights)
    total = count_params(model.weights)
    log.info("Stage %d (%s): %d epochs at learning rate %g; training %s of "
             "%s weights.", index, stage.name, stage.epochs,
             stage.learning_rate,
             f"{trainable:,}", f"{total:,}")
    return trainable, total


def _fit_summary(plan, why, extract_seconds, checkpoint, stage_log):
    """The summary's part that the fit measured: the feature cache (or
    why a head stage ran the full loop), the best epoch and the per-epoch
    history."""
    return {
        "feature_cache": plan is not None,
        "feature_cache_plan": plan,
        "full_loop_reason": why,
        "feature_extraction_seconds": extract_seconds and round(
            extract_seconds, 1),
        "best_epoch": checkpoint.best_epoch,
        "best_val_loss": checkpoint.best,
        "best_val_accuracy": checkpoint.best_accuracy,
        "max_val_accuracy": checkpoint.max_accuracy,
        "history": read_history(stage_log.filename),
        "epochs_this_process": stage_log.epochs_run,
    }


def _skip_done(model, stage, index, checkpoint, done_path, place):
    """A finished stage (resumed run): its best weights and summary (the
    workers of a multi-worker run take the chief's weights)."""
    if not place.task.is_chief:
        log.info("Stage %d (%s) is done on the chief.", index, stage.name)
        place.sync_from_chief(model.weights)
        # Scores any epoch of a next stage beats: this worker keeps its
        # own best, and then takes the chief's weights anyway.
        return {"skipped": "done on the chief", "best_epoch": 0,
                "best_val_loss": 1e30, "best_val_accuracy": -1.0}
    summary = io.read_json(done_path)
    ran = (summary.get("epochs"), summary.get("learning_rate"))
    if "epochs" in summary and ran != (stage.epochs, stage.learning_rate):
        raise InputError(
            f"Invalid record {done_path}: stage {stage.name} finished with "
            f"(epochs, learning rate) {ran}, and the run's config.json now "
            f"says {(stage.epochs, stage.learning_rate)}. Allowed: "
            f"config.json as the run wrote it, or --overwrite to train "
            f"again. Received: {ran}")
    checkpoint.restore_best(model, done=done_path)
    place.sync_from_chief(model.weights)
    # Backups a kill left between done.json and their removal.
    remove_backups(os.path.dirname(done_path))
    log.info("Stage %d (%s) already done (best val_loss %.4f at epoch %d); "
             "skipping it.", index, stage.name, summary["best_val_loss"],
             summary["best_epoch"])
    return summary


def _stage_callbacks(stage, index, data, checkpoint, stage_dir, stage_log,
                     place, workdir, config, more):
    """The callbacks every stage fits with, in the order they must run
    (--ema: the average is in the model for the checkpoint only).

    The epoch's backup comes last, after the recipe's and the user's
    (`more`, which see the restored run from on_train_begin on): killed
    before it, the rerun replays the epoch, its checkpoint, CSV row
    (`StageLog` cuts the earlier one), TensorBoard and user callbacks."""
    os.makedirs(os.path.dirname(stage_log.filename), exist_ok=True)
    averaged = AveragedWeights() if config.training.ema else None
    callbacks = [
        data.shuffle.callback(index),
        *([averaged] if averaged else []),
        checkpoint,
        *([averaged.swap_back()] if averaged else []),
        stage_log,
    ]
    if place.task.is_chief and config.runtime.tensorboard:
        first = config.training.epochs if stage.name == "finetune" else 0
        callbacks.append(StageBoard(os.path.join(
            workdir, "logs", "tensorboard", stage.name), first_epoch=first))
    backup = EpochBackup(backup_dir(stage_dir), place)
    return [*callbacks, backup.restorer(), *more, backup]


def _compile(model, stage, data, config, place, blocks=None):
    """Compiles `model` for `stage` with the run's recipe (a fresh
    optimizer, its schedule over the stage; layer-wise rates and gradual
    unfreezing for a fine-tune stage given the blocks); returns the
    callbacks the recipe needs in the fit."""
    training = config.training
    finetune = stage.name == "finetune" and blocks
    multipliers = (recipe.layer_multipliers(model, blocks, training.lr_decay)
                   if finetune else None)
    gates, names = (recipe.unfreeze_epochs(
        blocks, training.gradual_unfreeze, stage.epochs) if finetune
        else ({}, []))
    optimizer = recipe.make_optimizer(
        training, stage.learning_rate, stage.epochs,
        recipe.steps_per_epoch(data.counts["train"], config.data.batch_size,
                               full_only=place.replicas > 1),
        multipliers, gates)
    compile_for_stage(model, stage.learning_rate, place.jit_compile,
                      optimizer=optimizer, **recipe.loss_and_metric(config))
    return ([recipe.GradualUnfreeze(names, training.gradual_unfreeze)]
            if gates else [])


def _standardize_from_sample(model, data, data_config):
    """Sets the head's feature statistics from the pooled features of at
    most STATISTICS_SAMPLE training images (as they are, seeded: a resumed
    run gets the same), for a head stage that trains on images."""
    sample_ds, n = sample_training_set(data, STATISTICS_SAMPLE,
                                       data_config.seed)
    features, _ = inference.run_batched(
        feature_cache.feature_extractor(model), sample_ds, n)
    standardize_head(model, features)


def _fit_inputs(model, stage, data, config, place, plan, evaluation=None):
    """The model and datasets fit() runs on: the classifier on images, or
    (`plan` from `cache_plan`) a head model sharing its layers,
    on features computed once. With a plan whose 'evaluation' names a
    split, its cached (features, labels) go to `evaluation['features']`.

    With several replicas the training set's last partial batch is
    dropped (see `data.pipelines.full_batches`).

    Returns:
      (fit_model, train_ds, val_ds, seconds spent extracting or None).
    """
    fit_model, train_ds, val_ds, seconds = model, data.train, data.val, None
    if stage.name == "head" and not plan:
        # The head's feature statistics, of the images as they are (what
        # validation sees); cached features set them from their first
        # view, the images as they are.
        _standardize_from_sample(model, data, config.data)
    if plan:
        fit_model, train_ds, val_ds, seconds, features = (
            feature_cache.make_feature_datasets(
                model, data, config.data, plan, config.runtime.workdir))
        if evaluation is not None and features is not None:
            evaluation["features"] = features
        _compile(fit_model, stage, data, config, place)
        log.info("Training the head on cached features (%.1f s to "
                 "extract or read them)", seconds)
    if place.replicas > 1:
        check_replica_batch(config, data, place)
        train_ds = full_batches(train_ds, config.data.batch_size,
                                data.counts["train"])
    return fit_model, train_ds, val_ds, seconds


def check_replica_batch(config, data, place):
    """With several replicas every batch must be full (the last partial
    one is dropped): the training set must hold at least one."""
    n = data.counts["train"]
    if place.replicas > 1 and n < config.data.batch_size:
        raise InputError(
            f"Invalid batch_size: with {place.replicas} replicas every "
            f"batch must be full, and the training set has only {n} "
            f"images. Allowed: at most {n}. Received: "
            f"batch_size={config.data.batch_size}")
