"""Stage checkpoints: the best weights of a stage, kept across resumes."""

import contextlib
import logging
import math
import os
import warnings
import zipfile

import keras
import numpy as np

from tl_keras import io
from tl_keras.advisor.statistics import accuracy_variance
from tl_keras.errors import InputError
from tl_keras.models.classifier import head_state, weights_of_norm

log = logging.getLogger("tl_keras")


class StageCheckpoint(keras.callbacks.Callback):
    """Keeps the best epoch of a stage, atomically, across resumes: of
    the epochs whose val_accuracy is within one standard error of the
    highest seen, the one with the lowest val_loss (the one-standard-error
    rule of Breiman et al., 1984; `accuracy_noise`, `keeps`).

    On a small validation set accuracy moves in coarse steps and a lead of
    one image is noise: by accuracy first (losses breaking ties only) a
    fine-tune run on 25 validation images kept its head from epoch 5 of
    40 (0.68 at loss 1.23) over epochs 21-31 (0.64 at 0.90-0.95), and
    ended 20 points below transfer on test (bench/RESULTS.md, seed 15).
    By loss alone it kept a scratch model from epoch 1 (uniform scores):
    that model's accuracy is more than a standard error below the best,
    so it is not kept. With no validation count (`val_images` None) the
    rule is accuracy first, ties by loss.

    At the end of training it restores the best weights into the model.
    `start_from` makes the weights the model has now (the head's kept
    epoch, before fine-tuning) the best so far, at epoch 0, and puts in
    the weights the head stage ended with, which the fine-tune trains on
    from (`continue_from_last`).

    With `trainable_only` (the head stage: the frozen base runs in
    inference mode, so only the trainable weights and the head's feature
    statistics change: `classifier.head_state`) it keeps just those, in a
    .npz: for a MobileNetV2 a save takes milliseconds instead
    of 0.7 s, paid at every improving epoch. Its last epoch's are written
    beside them at the end of training (`LAST_HEAD`).
    """

    def __init__(self, stage_dir, stage_name, target=None,
                 trainable_only=False, val_images=None):
        super().__init__()
        self.target = target
        self.val_images = val_images
        self.trainable_only = trainable_only
        self.path = os.path.join(stage_dir, "best.trainable.npz"
                                 if trainable_only else "best.weights.h5")
        self.info_path = os.path.join(stage_dir, "best.json")
        self.stage_name = stage_name
        self.best, self.best_epoch = float("inf"), 0
        self.best_accuracy = -1.0
        self.max_accuracy = -1.0  # of any epoch, kept or not
        self.diverged_at = None  # (epoch, batch) of the first NaN / Inf loss
        self.current_epoch = 0
        if os.path.isfile(self.info_path) and os.path.isfile(self.path):
            info = io.read_json(self.info_path)
            self.best, self.best_epoch = info["val_loss"], info["epoch"]
            self.best_accuracy = info["val_accuracy"]
            self.max_accuracy = info.get("max_val_accuracy",
                                         self.best_accuracy)

    def start_from(self, summary, head_dir=None):
        """Counts the model's current weights (the head's kept epoch),
        which scored `summary`'s best_val_accuracy / best_val_loss, as
        epoch 0 (once per stage: a resumed stage keeps what it has); then
        puts in the model the weights the head stage in `head_dir` ended
        with (`continue_from_last`), which the fit goes on from. Returns
        where it goes on from: 'last epoch' or 'kept epoch'."""
        if not os.path.isfile(self.info_path):
            self.max_accuracy = summary.get("max_val_accuracy",
                                            summary["best_val_accuracy"])
            self._save(summary["best_val_loss"],
                       summary["best_val_accuracy"], 0, self.target)
        if head_dir is None:
            return "kept epoch"
        return continue_from_last(self.target or self.model, head_dir)

    def on_epoch_begin(self, epoch, logs=None):
        self.current_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        """Stops the stage at the first non-finite training loss: a
        diverged model must not train on, nor be kept as the best (on
        imbalanced validation data an all-one-class prediction can
        score well)."""
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = (self.current_epoch + 1, batch + 1)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = float(logs.get("val_loss", float("nan")))
        accuracy = float(logs.get("val_accuracy", float("nan")))
        if self.diverged_at or not all(math.isfinite(float(v)) for v in (
                logs.get("loss", 0.0), value, accuracy)):
            return  # never keep a diverged epoch
        keep = self.keeps(accuracy, value)
        risen = accuracy > self.max_accuracy
        self.max_accuracy = max(self.max_accuracy, accuracy)
        if keep:
            self._save(value, accuracy, epoch + 1, self.target or self.model)
        elif risen:  # a resumed stage measures its band from this epoch
            self._write_info()

    def keeps(self, accuracy, loss):
        """Whether an epoch scoring `accuracy` / `loss` replaces the kept
        one: when the kept one falls more than a standard error below the
        highest accuracy (this epoch is then that highest), or this epoch
        is within a standard error of the highest and has a lower loss.
        Measured against the highest accuracy seen, not the kept epoch's,
        so a chain of lower losses cannot walk the accuracy down.

        Decided epoch by epoch, keeping one set of weights: when a new
        highest accuracy moves the band past the kept epoch, this epoch
        is kept even if an earlier one inside the new band had a lower
        loss (its weights are gone). So the kept epoch is the lowest loss
        in the band since the band last passed the kept one."""
        top = max(self.max_accuracy, accuracy)
        floor = top - accuracy_noise(top, self.val_images) - 1e-9
        if self.best_accuracy < floor:
            return True
        return accuracy >= floor and loss < self.best

    def _save(self, value, accuracy, epoch, model):
        if self.trainable_only:
            _save_head(model, self.path)
        else:
            tmp = io.temp_path(self.path)
            model.save_weights(tmp)
            io.commit(tmp, self.path)
        self.best, self.best_epoch, self.best_accuracy = value, epoch, accuracy
        self._write_info()

    def _write_info(self):
        io.write_json(self.info_path, {
            "val_loss": self.best, "val_accuracy": self.best_accuracy,
            "epoch": self.best_epoch, "max_val_accuracy": self.max_accuracy})

    def on_train_end(self, logs=None):
        model = self.target or self.model
        if self.trainable_only:  # where a fine-tune goes on from
            last = os.path.join(os.path.dirname(self.path), LAST_HEAD)
            # A diverged stage's weights are NaN / Inf (also when a rerun
            # restored them from the epoch's backup, which `diverged_at`
            # does not survive): a fine-tune goes on from the kept head.
            if self.diverged_at or not _finite(head_state(model)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(last)
            else:
                _save_head(model, last)
        self.restore_best(model)

    def restore_best(self, model, done=None):
        """Puts the kept epoch's weights into `model`. `done`: the
        stage's done.json, for a finished stage, whose kept weights must
        be there: without them the run went on, saved and exported the
        weights the model had (a head left random), silently."""
        full = os.path.join(os.path.dirname(self.path), "best.weights.h5")
        if self.trainable_only and not os.path.isfile(self.path) and (
                os.path.isfile(full)):  # a head stage from an older tl_keras
            self.trainable_only, self.path = False, full
        if not os.path.isfile(self.path):
            if done:
                raise InputError(
                    f"Invalid workdir: stage {self.stage_name} is marked "
                    f"done ({done}) but its kept weights {self.path} are "
                    f"missing, so the run would go on from other weights. "
                    f"Allowed: the file put back, or a new --workdir to "
                    f"train anew. Received: no {self.path}")
            return
        try:
            if self.trainable_only:
                _load_head(model, self.path, legacy=True)
                return
            with warnings.catch_warnings():
                # The file also holds the optimizer of the stage that
                # wrote it; after a recompile (new stage, or a resumed
                # process) Keras warns that it skips those variables.
                warnings.filterwarnings("ignore", message=".*optimizer.*")
                model.load_weights(self.path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise InputError(
                f"Invalid workdir: the kept weights of stage "
                f"{self.stage_name}, {self.path}, cannot be read "
                f"(truncated or edited: {e}). Allowed: the file as "
                f"tl_keras wrote it, or a new --workdir to train anew. "
                f"Received: a file of {os.path.getsize(self.path)} bytes"
                ) from None


# The head stage's weights at its end, beside its kept epoch.
LAST_HEAD = "last.trainable.npz"


def continue_from_last(model, head_dir):
    """Puts the head stage's last weights (`LAST_HEAD` in `head_dir`)
    into `model`, as the Keras guide's fine-tune goes on from the head's
    last epoch; the kept head stays the epoch 0 the fine-tune must beat.
    On few validation images the kept head can be an epoch-1 head that
    learned little, and a fine-tune from it went 9 points below one from
    a later epoch (bench/RESULTS.md, recipes seed 27). Without the file
    (a head stage that diverged, or from an older tl_keras) the model
    keeps the kept head. Returns 'last epoch' or 'kept epoch'."""
    path = os.path.join(head_dir, LAST_HEAD)
    if not os.path.isfile(path):
        log.info("Fine-tuning from the head's kept epoch (no last-epoch "
                 "weights in %s)", head_dir)
        return "kept epoch"
    _load_head(model, path)
    log.info("Fine-tuning from the head's last epoch; its kept epoch is "
             "the one to beat")
    return "last epoch"


def _finite(weights):
    return all(np.isfinite(np.asarray(w)).all() for w in weights)


def _save_head(model, path):
    """Writes the head's state (`classifier.head_state`) to a .npz,
    atomically."""
    tmp = io.temp_path(path)
    np.savez(tmp, *[np.asarray(w) for w in head_state(model)])
    io.commit(tmp, path)


def _load_head(model, path, legacy=False):
    """Assigns the head state in the .npz `path` (`_save_head`) to
    `model`; with `legacy`, also a tl_keras 0.1 head checkpoint (the
    trainable weights alone)."""
    with np.load(path) as stored:
        values = [stored[f"arr_{i}"] for i in range(len(stored))]
    weights = head_state(model)
    statistics = weights_of_norm(model)
    trained = weights[:len(weights) - len(statistics)]
    if legacy and len(values) == len(trained) < len(weights):
        # tl_keras 0.1's head checkpoint: its head was trained on raw
        # features, so the standardisation goes back to the identity.
        weights = trained
        for statistic in statistics:
            statistic.assign(np.zeros(statistic.shape) if "mean" in
                             statistic.path else np.ones(statistic.shape))
    if len(values) != len(weights):
        raise InputError(
            f"Invalid checkpoint {path}: it holds {len(values)} arrays, "
            f"this model's head has {len(weights)}. Allowed: a checkpoint "
            f"of this run. Received: {len(values)} arrays")
    for weight, value in zip(weights, values, strict=True):
        weight.assign(value)


def accuracy_noise(accuracy, images):
    """One standard error of an accuracy measured on `images` images: the
    binomial sampling noise of the validation set, with the Agresti-Coull
    adjustment the advisor uses (`advisor.statistics.accuracy_variance`:
    25 of 25 right is not certain, which the plain p (1 - p) / n would
    say). 0 when the count is unknown. On 25 images at 0.68 it is 0.088,
    2.2 images; at 1.0, 0.047; on 1,000 at 0.90, 0.0095."""
    if not images or not 0.0 <= accuracy <= 1.0:
        return 0.0
    return math.sqrt(accuracy_variance(accuracy, images))


def save_model(model, path):
    """Saves `model` as a .keras file atomically (`io.commit`)."""
    tmp = io.temp_path(path)
    model.save(tmp)
    io.commit(tmp, path)


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """--ema: the optimizer's moving average of the trained weights is
    what each validation scores (Keras's `SwapEMAWeights` swaps it in for
    every evaluation) and what the best-epoch checkpoint keeps: it swaps
    the average in at the end of each epoch, before the checkpoint, and
    `swap_back` (a callback placed after the checkpoint) swaps the trained
    weights back before the epoch's backup. So a backup holds the trained
    weights and the average in the optimizer, as during training, and a
    resumed stage goes on from the same state. At the end of the fit Keras
    assigns the average to the weights, then the checkpoint restores the
    best epoch's average: model.keras and the export hold averaged
    weights."""

    def on_epoch_end(self, epoch, logs=None):
        if not self._ema_weights_in_model:
            self._swap_variables()
            self._ema_weights_in_model = True

    def swap_back(self):
        """The callback that swaps the trained weights back in."""
        def back(epoch, logs=None):
            if self._ema_weights_in_model:
                self._swap_variables()
                self._ema_weights_in_model = False
        return keras.callbacks.LambdaCallback(on_epoch_end=back)
