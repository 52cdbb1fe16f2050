"""Resume state within a stage: the weights and optimizer after each
epoch (`EpochBackup`), removed once the stage is done."""

import contextlib
import logging
import os
import shutil
import warnings

import keras

from tl_keras import io

log = logging.getLogger("tl_keras")


class EpochBackup(keras.callbacks.Callback):
    """Mid-stage resume state: after each epoch, the model's weights and
    optimizer state in one file named by the epoch it ends
    (`epoch-000003.weights.h5`), written atomically (`io.commit`); older
    ones are then removed. On a rerun the newest file that loads sets the
    weights and the epoch to go on from.

    Keras's BackupAndRestore keeps the epoch in a second file written
    after the weights, without fsync: an empty metadata file (disk full,
    power loss) broke every later rerun, and a kill between the two files
    replayed an epoch on weights that had already trained it. One file
    named by its epoch cannot disagree with itself.
    """

    def __init__(self, backup_dir, place=None):
        super().__init__()
        self.backup_dir = backup_dir
        # A multi-worker run's `Placement`: every worker goes on from the
        # chief's epoch and weights (see `restore`).
        self.place = place
        # Once `restorer()` is called, that callback restores instead.
        self._restorer = None

    def restorer(self):
        """A callback that restores this backup at the train's beginning
        instead of this one, to place before the callbacks that must see
        the restored run from their own on_train_begin on (the backup
        itself, saving at each epoch's end, stays last)."""
        self._restorer = self._restorer or _Restorer(self)
        return self._restorer

    def _files(self):
        """[(epoch, path)] of the complete backups, newest first."""
        if not os.path.isdir(self.backup_dir):
            return []
        found = []
        for name in os.listdir(self.backup_dir):
            if name.startswith("epoch-") and name.endswith(".weights.h5"):
                with contextlib.suppress(ValueError):
                    found.append((int(name[6:-11]),
                                  os.path.join(self.backup_dir, name)))
        return sorted(found, reverse=True)

    def on_train_begin(self, logs=None):
        if self._restorer is None:
            self.restore()

    def restore(self):
        """Loads the newest backup into the model and sets the epoch its
        fit goes on from (for every worker: the chief's)."""
        # fit() starts at model._initial_epoch when it is set, and nothing
        # in Keras clears it: a resumed stage's epoch would carry over to
        # the next stage's fit on the same model.
        self.model._initial_epoch = None
        place = self.place
        if place is None or place.task.num_workers <= 1:
            self.model._initial_epoch = self._restore() or None
            return
        # Several workers: the chief's backup decides for every worker (its
        # epoch, weights and optimizer state), whatever a worker's own
        # folder holds (one epoch behind, lost, or from another run). The
        # optimizer is built on every worker first: building creates
        # variables, which is a collective (the chief's initial values
        # are broadcast).
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        epoch = place.from_chief(
            [self._restore() if place.task.is_chief else 0])[0]
        place.sync_from_chief(self.model.weights
                              + self.model.optimizer.variables)
        if epoch and not place.task.is_chief:
            log.info("Resuming the stage after epoch %d, the chief's", epoch)
        self.model._initial_epoch = epoch or None

    def _restore(self):
        """Loads the newest readable backup; returns its epoch (0: none)."""
        for epoch, path in self._files():
            try:
                if not self.model.optimizer.built:
                    self.model.optimizer.build(self.model.trainable_variables)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*optimizer.*")
                    self.model.load_weights(path)
            except Exception as e:  # noqa: BLE001 - h5py/Keras raise many
                log.warning("Skipping the unreadable backup %s (%s)", path,
                            type(e).__name__)
                continue
            log.info("Resuming the stage after epoch %d", epoch)
            return epoch
        return 0

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.backup_dir, exist_ok=True)
        path = os.path.join(self.backup_dir,
                            f"epoch-{epoch + 1:06d}.weights.h5")
        tmp = io.temp_path(path)
        self.model.save_weights(tmp)
        io.commit(tmp, path)
        for older, old_path in self._files():
            if older < epoch + 1:
                os.remove(old_path)

    def on_train_end(self, logs=None):
        # The stage's fit finished. The backups stay until the stage is
        # marked done (`remove_backups`): killed in between, the rerun
        # resumes after the last epoch instead of training the stage again.
        self.model._initial_epoch = None


class _Restorer(keras.callbacks.Callback):
    """`EpochBackup.restorer`: its restore, at the train's beginning."""

    def __init__(self, backup):
        super().__init__()
        self.backup = backup

    def on_train_begin(self, logs=None):
        self.backup.restore()


def backup_dir(stage_dir):
    """Where a stage's `EpochBackup` files are."""
    return os.path.join(stage_dir, "backup")


def remove_backups(stage_dir):
    """Deletes a stage's backups (once its done.json is written)."""
    shutil.rmtree(backup_dir(stage_dir), ignore_errors=True)
