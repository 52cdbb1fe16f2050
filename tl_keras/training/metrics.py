"""What a run measures: test metrics, per-epoch history, the manifest.

`classification_metrics` is shared by a run's own evaluation and
`--mode=evaluate` on an export, so both report the same numbers.
"""

import csv
import logging
import os

import keras
import numpy as np
from sklearn import metrics as sk_metrics

from tl_keras import inference
from tl_keras.training.feature_cache import build_head_model

log = logging.getLogger("tl_keras")


def evaluate(model, data, features=None):
    """Test accuracy, loss, per-class report and confusion matrix.

    Uses the test split, or the validation split (reported as such) when
    no test images were held out.

    Args:
      features: optional (pooled base features, labels) of that split,
        cached by a transfer run whose base stayed frozen: only the head
        runs on them (the same logits as the whole classifier's, to float
        tolerance, without a second pass of the base).
    """
    ds, split = (data.test, "test") if data.test is not None else (
        data.val, "val")
    log.info("Evaluating on the %s split (%d images%s)", split,
             data.counts.get(split, 0),
             "; its cached features" if features is not None else "")
    if features is not None:
        logits, labels = _head_logits(model, features[0]), features[1]
        if len(labels) != data.counts[split]:
            raise ValueError(f"{len(labels)} cached {split} features for "
                             f"{data.counts[split]} images")
    else:
        logits, labels = inference.run_batched(
            inference.forward(model), ds, data.counts[split],
            progress=f"Evaluating on the {split} split")
    return {"test_split": split, "evaluated_on": (
        "cached base features" if features is not None
        else "the whole classifier"), **classification_metrics(
            labels, logits, data.class_names)}


# Rows of cached features per call of the head in `evaluate`: bounded, as
# the whole classifier's pass is, so a large split never goes to the
# device at once.
HEAD_BATCH = 4096


def _head_logits(model, features):
    """The classifier's logits from its pooled base features (its head
    layers, inference mode), in batches of HEAD_BATCH rows."""
    head = build_head_model(model)
    return np.concatenate([
        np.asarray(head(features[i:i + HEAD_BATCH], training=False),
                   np.float32)
        for i in range(0, max(len(features), 1), HEAD_BATCH)])


def classification_metrics(y_true, logits, class_names):
    """Accuracy, loss, per-class precision/recall/F1, confusion matrix."""
    logits = np.asarray(logits, np.float64)
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    y_pred = logits.argmax(1)
    ids = list(range(len(class_names)))
    # By index: classification_report's dict writes its own 'accuracy',
    # 'macro avg' and 'weighted avg' over classes of those names.
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0)
    tested = support > 0
    return {
        "num_test": int(len(y_true)),
        "test_accuracy": float((y_pred == y_true).mean()),
        # The mean recall over the classes scored: on imbalanced data,
        # answering the majority class always scores high accuracy and
        # 1 / classes here. Classes without an image to score are named
        # (their precision, recall and F1 read 0: not measured).
        "balanced_accuracy": float(recall[tested].mean()) if tested.any()
        else 0.0,
        "classes_not_tested": [n for n, t in zip(class_names, tested,
                                                 strict=True) if not t],
        "test_loss": float(-log_probs[np.arange(len(y_true)), y_true].mean()),
        "per_class": {name: {"precision": float(precision[i]),
                             "recall": float(recall[i]),
                             "f1-score": float(f1[i]),
                             "support": int(support[i])}
                      for i, name in enumerate(class_names)},
        "confusion_matrix": sk_metrics.confusion_matrix(
            y_true, y_pred, labels=ids).tolist(),
    }


class StageLog(keras.callbacks.CSVLogger):
    """A stage's per-epoch log, `logs/<stage>.csv`, appended to across
    resumes, each epoch on one row as in a run never interrupted.

    It runs before the epoch's backup (`EpochBackup`, the stage's last
    callback): a kill between the two leaves a row for an epoch that the
    rerun trains again, and the first epoch a fit begins cuts the rows
    from that epoch on (a row torn by a crash first: `repair_csv`).
    Written after the backup, a kill between them lost the epoch's row
    for good, and metrics.json's history missed it (shorter than the
    stage, out of step with its best epoch)."""

    def __init__(self, csv_path):
        super().__init__(csv_path, append=True)
        self._begun = False
        self.epochs_run = 0  # epochs this process trained (and logged)

    def on_train_begin(self, logs=None):
        repair_csv(self.filename)
        super().on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        if not self._begun:
            # The file is open for appending (O_APPEND): the next row goes
            # to its end, wherever the cut leaves it.
            cut_csv(self.filename, epoch)
            self._begun = True

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.epochs_run += 1


class StageBoard(keras.callbacks.TensorBoard):
    """TensorBoard events of one stage, `logs/tensorboard/<stage>/`, whose
    epochs go on from the run's earlier stage: a fine-tune stage's first
    epoch is the step after the head's last (`first_epoch`: the head's
    epochs), so the stages' curves lie end to end. Each stage's epochs
    began at step 0, and the fine-tune curve lay on top of the head's."""

    def __init__(self, log_dir, first_epoch=0):
        super().__init__(log_dir)
        self._first_epoch = first_epoch

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(self._first_epoch + epoch, logs)


def repair_csv(csv_path):
    """Cuts a stage's CSV log back to its last complete line: a row torn
    by a crash (no line end) would otherwise merge with the next one."""
    if not os.path.isfile(csv_path):
        return
    with open(csv_path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def cut_csv(csv_path, epoch):
    """Cuts a stage's CSV log before its first row of `epoch` or later
    (rows are appended in the order the epochs ran: every later one goes
    too)."""
    if not os.path.isfile(csv_path):
        return
    with open(csv_path, "rb+") as f:
        offset = 0
        for line in f.read().splitlines(keepends=True):
            first = line.split(b",", 1)[0].strip()
            if first.isdigit() and int(first) >= epoch:
                f.truncate(offset)
                return
            offset += len(line)


def read_history(csv_path):
    """Reads a stage's CSV log; an epoch logged twice (a crash between the
    log and the backup, in a log written before `StageLog` cut such rows)
    keeps its last row, and a row that does not parse (torn by a crash) is
    skipped."""
    if not os.path.isfile(csv_path):
        return {}
    rows = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(row.get("epoch"))
                for key, value in row.items():
                    if key != "epoch" and value not in (None, ""):
                        float(value)
            except (TypeError, ValueError):
                continue  # a header again, or a torn row
            rows[epoch] = row
    history = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            if key != "epoch" and value not in (None, ""):
                history.setdefault(key, []).append(round(float(value), 6))
    return history


def export_manifest(approach, metrics):
    """The run's part of the export's manifest.json."""
    return {
        "backbone": metrics["backbone"],
        "approach": approach,
        "metrics": {k: metrics[k] for k in ("test_split", "num_test",
                                            "test_accuracy", "test_loss")},
        "data": {"counts": metrics["counts"],
                 "class_counts": metrics["class_counts"],
                 "files": sum(metrics["counts"].values()),
                 "bad_files": metrics["bad_files"]},
    }

