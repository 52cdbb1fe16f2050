"""Run a config in a workdir: stages, checkpoints, resume, metrics, export.

Workdir layout:
  flags.cfg, config.json     the resolved config (flags.cfg is a flagfile)
  split.json                 which file went to which split
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

import csv
import json
import logging
import os
import sys
import time
import warnings

import keras
import numpy as np
import tensorflow as tf
from sklearn import metrics as sk_metrics

from tl_keras import (
    advisor,
    backbones,
    distribute,
    export,
    features,
    transfer,
)
from tl_keras import data as data_lib
from tl_keras.config import (
    RESUMABLE_FIELDS,
    TRAINED_APPROACHES,
    InputError,
    config_differences,
    load_config_json,
)

log = logging.getLogger("tl_keras")


def train(config, data=None):
    """Trains, evaluates and exports one run; resumes if interrupted.

    Args:
      config: a `Config`; `config.workdir` receives everything.
      data: an optional `data.ImageData` (e.g. from `data.from_arrays`);
        default reads `config.data_dir`.

    Returns:
      The metrics dict that is also written to `metrics.json`.

    Raises:
      ValueError: an invalid config, data or workdir; nothing in an
        existing workdir is deleted.
    """
    config.validate(require_data_dir=data is None)
    place = distribute.placement(config)
    if not place.task.is_chief:
        # Other workers train in step with the chief but write only to a
        # folder of their own (backups, stage markers); the chief writes
        # the run's checkpoints, metrics and export.
        config = config.replace(
            workdir=f"{config.workdir.rstrip(os.sep)}.{place.task.name}")
    with place.policy_scope():
        return _train(config, data, place)


def _train(config, data, place):
    workdir = config.workdir
    chief = place.task.is_chief
    conflict = check_workdir(config)
    metrics_path = os.path.join(workdir, "metrics.json")
    if not conflict and _is_complete(workdir, chief):
        log.info("Run in %s is already complete; nothing to do. Metrics: "
                 "%s", workdir, metrics_path)
        with open(metrics_path) as f:
            return json.load(f)
    keras.utils.set_random_seed(config.seed)
    strategy = place.strategy
    with strategy.scope():
        backbone = _build_backbone(config)
    if data is None:
        data = data_lib.make_datasets(config, backbone.image_size)
    # Only now, with the config, backbone and data known to be good, is
    # anything written (a failed first try leaves no workdir behind).
    claim_workdir(config, conflict)
    write_json(os.path.join(workdir, "split.json"), data.files or {})
    with strategy.scope():
        model = transfer.build_classifier(backbone, len(data.class_names),
                                          config.dropout)
    blocks = backbone.blocks()
    decision = None
    if config.approach == "auto":
        decision = _auto_decision(config, model, data, blocks, place)
        config = config.replace(approach=decision["approach"],
                                unfreeze=decision["unfreeze"])
        # Measuring re-seeds (its random-init reference); a resumed run
        # skips it, so seed again for both to continue alike.
        keras.utils.set_random_seed(config.seed)
        if config.approach == "scratch":  # random init, not the weights
            with strategy.scope():
                backbone = _build_backbone(config)
                model = transfer.build_classifier(
                    backbone, len(data.class_names), config.dropout)
            blocks = backbone.blocks()
    if config.approach == "finetune":
        transfer.check_unfreeze(config.unfreeze_blocks(), blocks)
    stages = {}
    for i, stage in enumerate(transfer.plan_stages(config), start=1):
        log.info("Stage %d: %s", i, stage.name)
        with strategy.scope():
            stages[stage.name] = run_stage(
                model, stage, data, workdir, config, blocks, place, index=i,
                to_beat=stages.get("head") if stage.name == "finetune"
                else None)
    if not chief:
        metrics = {"complete": True, "task": place.task.name,
                   "stages": stages}
        write_json(metrics_path, metrics)
        log.info("Worker %s done; the chief writes the results.",
                 place.task.name)
        return metrics
    metrics = {
        "approach": config.approach,
        "decision": decision and {k: decision[k] for k in (
            "situation", "approach", "unfreeze", "rule", "reason")},
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
        "cached": data.cached,
        "hardware": place.describe(config.batch_size),
        "stages": stages,
    }
    model_path = os.path.join(workdir, "model.keras")
    log.info("Saving model.keras")
    _save_model(model, model_path)
    if place.kind == "multi_worker":
        # Evaluate and export a process-local copy: the chief alone runs
        # them, so nothing may depend on the other workers' variables.
        model = keras.models.load_model(model_path)
    metrics.update(evaluate(model, data))
    log.info("Writing the SavedModel export")
    export.export_saved_model(
        model, os.path.join(workdir, "export"), data.class_names,
        manifest=export_manifest(config, metrics),
        tflite=config.export_tflite)
    metrics["complete"] = True
    write_json(metrics_path, metrics)
    log.info("Test accuracy %.4f (%s, %d images). Everything is in %s",
             metrics["test_accuracy"], metrics["test_split"],
             metrics["num_test"], workdir)
    return metrics


def _auto_decision(config, model, data, blocks, place):
    """--approach=auto: the advisor's decision, measured once per run (a
    resumed run reads it back from decision.json). In a multi-worker run
    the chief measures and decides, and the other workers train what it
    decided (`Placement.from_chief`)."""
    record = (_chief_decision(config, model, data, blocks)
              if place.task.is_chief else None)
    approach, unfreeze = place.from_chief(
        [TRAINED_APPROACHES.index(record["approach"]),
         0 if record["unfreeze"] == "all" else int(record["unfreeze"])]
        if record else [0, 0])
    if record is None:
        record = {"approach": TRAINED_APPROACHES[approach],
                  "unfreeze": str(unfreeze) if unfreeze else "all"}
        log.info("Training the chief's decision: %s (unfreeze %s)",
                 record["approach"], record["unfreeze"])
    return record


def _chief_decision(config, model, data, blocks):
    """The advisor's decision for this process's run (reused from
    decision.json when a run with the same settings stored one)."""
    path = os.path.join(config.workdir, "decision.json")
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
        if record.get("run") == _run_key(config):
            log.info("Using the decision in %s: %s", path,
                     record["approach"])
            return record
    record = advisor.advise_run(model, data, config, blocks)
    record["run"] = _run_key(config)
    write_json(path, record)
    return record


def _run_key(config):
    """What a stored decision must match to be reused."""
    return {k: v for k, v in config.to_dict().items()
            if k not in RESUMABLE_FIELDS}


def export_manifest(config, metrics):
    """The run's part of the export's manifest.json."""
    return {
        "backbone": metrics["backbone"],
        "approach": config.approach,
        "metrics": {k: metrics[k] for k in ("test_split", "num_test",
                                            "test_accuracy", "test_loss")},
        "data": {"counts": metrics["counts"],
                 "class_counts": metrics["class_counts"],
                 "files": sum(metrics["counts"].values()),
                 "bad_files": metrics["bad_files"]},
    }


def check_workdir(config):
    """Checks that the workdir is new, empty, or holds this same run.

    Returns:
      None, or a description of the conflict when `config.overwrite`
      allows moving the old contents aside.

    Raises:
      InputError: the workdir holds a different run or unrelated files
        and `config.overwrite` is off.
    """
    workdir = config.workdir
    stored = os.path.join(workdir, "config.json")
    problem = None
    if os.path.isfile(stored):
        diffs = config_differences(load_config_json(stored), config)
        if diffs:
            problem = f"it holds a run with other settings ({'; '.join(diffs)})"
        else:
            log.info("Resuming the run in %s", workdir)
    elif os.path.isdir(workdir) and set(os.listdir(workdir)) - {
            "decision.json", "ranking.json"}:
        problem = "it is not empty and holds no tl_keras run (no config.json)"
    if problem and not config.overwrite:
        raise InputError(
            f"Invalid workdir {workdir!r}: {problem}. Allowed: the same "
            f"flags (to resume), a new --workdir, or --overwrite (moves the "
            f"old workdir aside). Received: workdir={workdir!r}")
    return problem


def claim_workdir(config, conflict=None):
    """Creates the workdir (moving a conflicting one aside, never deleting
    it) and writes config.json and flags.cfg."""
    workdir = config.workdir
    if conflict:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = f"{workdir.rstrip('/')}.replaced-{stamp}"
        os.replace(workdir, aside)
        log.warning("Moved the previous contents of %s to %s", workdir, aside)
    os.makedirs(workdir, exist_ok=True)
    write_json(os.path.join(workdir, "config.json"), config.to_dict())
    _write_text(os.path.join(workdir, "flags.cfg"), config.to_flagfile())


def run_stage(model, stage, data, workdir, config, blocks, place, index=1,
              to_beat=None):
    """Configures, compiles and fits one stage; skips it if already done.

    Args:
      place: the run's `distribute.Placement`.
      index: the stage's number in the run (selects its shuffle orders).
      to_beat: the summary of the stage before (the head, for finetune):
        its weights, now in `model`, are kept unless an epoch of this stage
        beats its best validation score.

    Returns:
      The stage's summary for metrics.json (settings, history, best).
    """
    stage_dir = os.path.join(workdir, "checkpoints", stage.name)
    os.makedirs(stage_dir, exist_ok=True)
    transfer.configure_stage(model, stage.name, blocks,
                             config.unfreeze_blocks())
    transfer.compile_for_stage(model, stage.learning_rate, place.jit_compile)
    done_path = os.path.join(stage_dir, "done.json")
    # Saves and restores the full classifier even when the fit runs on the
    # cached-features head model (which shares the head's layers).
    checkpoint = StageCheckpoint(stage_dir, stage.name, target=model,
                                 trainable_only=stage.name == "head")
    if os.path.isfile(done_path):
        checkpoint.restore_best(model)
        with open(done_path) as f:
            summary = json.load(f)
        log.info("Stage %s already done (best val_loss %.4f at epoch "
                 "%d); skipping it.", stage.name, summary["best_val_loss"],
                 summary["best_epoch"])
        return summary
    if to_beat is not None:
        checkpoint.start_from(to_beat)
    trainable = transfer.count_params(model.trainable_weights)
    total = transfer.count_params(model.weights)
    log.info("Stage %s: %d epochs at learning rate %g; training %s of %s "
             "weights.", stage.name, stage.epochs, stage.learning_rate,
             f"{trainable:,}", f"{total:,}")
    logs_dir = os.path.join(workdir, "logs")
    csv_path = os.path.join(logs_dir, f"{stage.name}.csv")
    os.makedirs(logs_dir, exist_ok=True)
    callbacks = [
        data.shuffle.callback(index),
        # Before BackupAndRestore so that at the end of training done.json
        # is written before the backup is deleted.
        checkpoint,
        keras.callbacks.BackupAndRestore(os.path.join(stage_dir, "backup"),
                                         double_checkpoint=True),
        keras.callbacks.CSVLogger(csv_path, append=True),
    ]
    if place.task.is_chief:
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(logs_dir, "tensorboard", stage.name)))
    start = time.time()
    plan = features.cache_plan(config, stage.name, data, model)
    fit_model, train_ds, val_ds, extract_seconds = _fit_inputs(
        model, stage, data, config, place, plan, workdir)
    fit_model.fit(train_ds, validation_data=val_ds, epochs=stage.epochs,
                  shuffle=False,  # tf.data already shuffles the train set
                  callbacks=callbacks,
                  verbose=1 if sys.stdout.isatty() else 2)
    summary = {
        "epochs": stage.epochs,
        "learning_rate": stage.learning_rate,
        "trainable_params": trainable,
        "total_params": total,
        "unfreeze": config.unfreeze if stage.name == "finetune" else None,
        "seconds_this_process": round(time.time() - start, 1),
        "feature_cache": plan is not None,
        "feature_cache_plan": plan,
        "feature_extraction_seconds": extract_seconds and round(
            extract_seconds, 1),
        "best_epoch": checkpoint.best_epoch,
        "best_val_loss": checkpoint.best,
        "best_val_accuracy": checkpoint.best_accuracy,
        "history": read_history(csv_path),
    }
    if to_beat is not None and checkpoint.best_epoch == 0:
        log.info("No %s epoch beat the previous stage on the validation set "
                 "(val_accuracy %.4f); keeping its weights.", stage.name,
                 checkpoint.best_accuracy)
    write_json(done_path, summary)
    if plan and plan["spill"]:
        features.remove_spilled(workdir)
    return summary


def _fit_inputs(model, stage, data, config, place, plan, workdir):
    """The model and datasets fit() runs on: the classifier on images, or
    (`plan` from features.cache_plan) a head model sharing its layers, on
    features computed once.

    With several replicas the training set's last partial batch is
    dropped (see `data.full_batches`).

    Returns:
      (fit_model, train_ds, val_ds, seconds spent extracting or None).
    """
    fit_model, train_ds, val_ds, seconds = model, data.train, data.val, None
    if plan:
        fit_model, train_ds, val_ds, seconds = (
            features.make_feature_datasets(model, data, config, plan,
                                           workdir))
        transfer.compile_for_stage(fit_model, stage.learning_rate,
                                   place.jit_compile)
        log.info("Training the head on cached features (%.1f s to "
                 "extract)", seconds)
    if place.replicas > 1:
        n = data.counts["train"]
        if n < config.batch_size:
            raise InputError(
                f"Invalid batch_size: with {place.replicas} replicas every "
                f"batch must be full, and the training set has only {n} "
                f"images. Allowed: at most {n}. Received: "
                f"batch_size={config.batch_size}")
        train_ds = data_lib.full_batches(train_ds, config.batch_size, n)
    return fit_model, train_ds, val_ds, seconds


class StageCheckpoint(keras.callbacks.Callback):
    """Keeps the best weights by val_accuracy, ties broken by val_loss,
    atomically, across resumes.

    On a small validation set accuracy moves in coarse steps: by accuracy
    alone the demo (25 validation images) once kept a head from epoch 4 of
    100 whose later epochs only tied it; by loss alone it kept a scratch
    model from epoch 1 (uniform scores). The tie-break keeps the later,
    better-calibrated epoch.

    At the end of training it restores the best weights into the model.
    `start_from` makes the weights the model has now (the head's, before
    fine-tuning) the best so far, at epoch 0.

    With `trainable_only` (the head stage: the frozen base runs in
    inference mode, so only the trainable weights change) it keeps just
    those, in a .npz: for a MobileNetV2 a save takes milliseconds instead
    of 0.7 s, paid at every improving epoch.
    """

    def __init__(self, stage_dir, stage_name, target=None,
                 trainable_only=False):
        super().__init__()
        self.target = target
        self.trainable_only = trainable_only
        self.path = os.path.join(stage_dir, "best.trainable.npz"
                                 if trainable_only else "best.weights.h5")
        self.info_path = os.path.join(stage_dir, "best.json")
        self.stage_name = stage_name
        self.best, self.best_epoch = float("inf"), 0
        self.best_accuracy = -1.0
        if os.path.isfile(self.info_path) and os.path.isfile(self.path):
            with open(self.info_path) as f:
                info = json.load(f)
            self.best, self.best_epoch = info["val_loss"], info["epoch"]
            self.best_accuracy = info["val_accuracy"]

    def start_from(self, summary):
        """Counts the model's current weights, which scored `summary`'s
        best_val_accuracy / best_val_loss, as epoch 0 (once per stage: a
        resumed stage keeps what it has)."""
        if not os.path.isfile(self.info_path):
            self._save(summary["best_val_loss"],
                       summary["best_val_accuracy"], 0, self.target)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = float(logs.get("val_loss", float("nan")))
        accuracy = float(logs.get("val_accuracy", float("nan")))
        if accuracy > self.best_accuracy or (
                accuracy == self.best_accuracy and value < self.best):
            self._save(value, accuracy, epoch + 1, self.target or self.model)

    def _save(self, value, accuracy, epoch, model):
        folder = os.path.dirname(self.path)
        if self.trainable_only:
            tmp = os.path.join(folder, ".best.tmp.npz")
            np.savez(tmp, *[np.asarray(w) for w in model.trainable_weights])
        else:
            tmp = os.path.join(folder, ".best.tmp.weights.h5")
            model.save_weights(tmp)
        os.replace(tmp, self.path)
        self.best, self.best_epoch, self.best_accuracy = value, epoch, accuracy
        write_json(self.info_path, {"val_loss": value,
                                     "val_accuracy": accuracy,
                                     "epoch": epoch})

    def on_train_end(self, logs=None):
        self.restore_best(self.target or self.model)

    def restore_best(self, model):
        full = os.path.join(os.path.dirname(self.path), "best.weights.h5")
        if self.trainable_only and not os.path.isfile(self.path) and (
                os.path.isfile(full)):  # a head stage from an older tl_keras
            self.trainable_only, self.path = False, full
        if not os.path.isfile(self.path):
            return
        if self.trainable_only:
            with np.load(self.path) as stored:
                values = [stored[f"arr_{i}"] for i in range(len(stored))]
            weights = model.trainable_weights
            if len(values) != len(weights):
                raise InputError(
                    f"Invalid checkpoint {self.path}: it holds "
                    f"{len(values)} arrays, this stage trains "
                    f"{len(weights)}. Allowed: a checkpoint of this run. "
                    f"Received: {len(values)} arrays")
            for weight, value in zip(weights, values, strict=True):
                weight.assign(value)
            return
        with warnings.catch_warnings():
            # The file also holds the optimizer of the stage that wrote it;
            # after a recompile (new stage, or a resumed process) Keras
            # warns that it skips those variables. Only weights matter here.
            warnings.filterwarnings("ignore", message=".*optimizer.*")
            model.load_weights(self.path)


def read_history(csv_path):
    """Reads a stage's CSV log; an epoch logged twice (a crash between the
    log and the backup) keeps its last row."""
    if not os.path.isfile(csv_path):
        return {}
    rows = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("epoch", "epoch") != "epoch":
                rows[int(row["epoch"])] = row
    history = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            if key != "epoch" and value not in (None, ""):
                history.setdefault(key, []).append(round(float(value), 6))
    return history


def evaluate(model, data):
    """Test accuracy, loss, per-class report and confusion matrix.

    Uses the test split, or the validation split (reported as such) when
    no test images were held out.
    """
    ds, split = (data.test, "test") if data.test is not None else (
        data.val, "val")
    log.info("Evaluating on the %s split (%d images)", split,
             data.counts.get(split, 0))
    # Traced once for every batch size: eager calls would dispatch the
    # model op by op (2-3x slower for a MobileNetV2 on CPU).
    predict = tf.function(lambda x: model(x, training=False),
                          input_signature=[tf.TensorSpec(
                              (None, *model.input.shape[1:]), tf.float32)])
    labels, logits = [], []
    for x, y in data_lib.for_inference(ds, data.counts[split]):
        logits.append(np.asarray(predict(x), np.float64))
        labels.append(np.asarray(y))
    return {"test_split": split, **classification_metrics(
        np.concatenate(labels), np.concatenate(logits), data.class_names)}


def classification_metrics(y_true, logits, class_names):
    """Accuracy, loss, per-class precision/recall/F1, confusion matrix."""
    logits = np.asarray(logits, np.float64)
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    y_pred = logits.argmax(1)
    ids = list(range(len(class_names)))
    report = sk_metrics.classification_report(
        y_true, y_pred, labels=ids, target_names=class_names,
        output_dict=True, zero_division=0)
    return {
        "num_test": int(len(y_true)),
        "test_accuracy": float((y_pred == y_true).mean()),
        "test_loss": float(-log_probs[np.arange(len(y_true)), y_true].mean()),
        "per_class": {name: report[name] for name in class_names},
        "confusion_matrix": sk_metrics.confusion_matrix(
            y_true, y_pred, labels=ids).tolist(),
    }


def _build_backbone(config):
    weights = config.weights
    if config.approach == "scratch":
        if config.backbone.endswith(".keras"):
            log.info("approach=scratch: training the architecture of %s "
                     "from random init (its weights are not used)",
                     config.backbone)
            return backbones.reinitialized(backbones.build_backbone(
                config.backbone, "none", config.image_size))
        if weights != "none":
            log.info("approach=scratch trains from random init; ignoring "
                     "weights=%s", weights)
        weights = "none"
    log.info("Building backbone %s (weights=%s)", config.backbone, weights)
    return backbones.build_backbone(config.backbone, weights,
                                    config.image_size)


def _is_complete(workdir, chief=True):
    path = os.path.join(workdir, "metrics.json")
    if not os.path.isfile(path) or chief and not os.path.isfile(
            os.path.join(workdir, "export", "saved_model.pb")):
        return False
    with open(path) as f:
        return bool(json.load(f).get("complete"))


def _save_model(model, path):
    tmp = os.path.join(os.path.dirname(path), ".model.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def write_json(path, obj):
    """Writes JSON atomically (temp file, then rename)."""
    _write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _write_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
