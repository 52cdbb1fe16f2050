"""Resume: a run killed in the middle of a stage and started again
continues where it stopped, survives torn resume state, refuses images
that changed in between, and ends as the run that was never interrupted
(augmentation, dropout and every stateful fine-tune option included).

In a file of its own, beside tests/test_cli.py, so that pytest-xdist's
per-file scheduling (--dist loadfile) spreads these whole runs over both
workers."""

import csv
import json
import logging
import os
import re
import shutil

import keras
import numpy as np
import pytest
from conftest import interrupt_before_training, write_image_folder
from PIL import Image

import tl_keras
from tl_keras.training.backups import EpochBackup


class Crash(Exception):
    pass


def _crash_in_finetune_after(monkeypatch, epoch, stage="finetune"):
    """Makes the run crash at the end of `stage`'s epoch `epoch` (0-based,
    after its logs and backup); returns the original backup hook."""
    original = EpochBackup.on_epoch_end

    def crash_in_finetune(self, current, logs=None):
        original(self, current, logs)
        if self.backup_dir.endswith(os.path.join(stage, "backup")) and (
                current == epoch):
            raise Crash()

    monkeypatch.setattr(EpochBackup, "on_epoch_end", crash_in_finetune)
    return original


class _SeesBackups(keras.callbacks.Callback):
    """Lists the stage's backups at each epoch end."""

    def __init__(self, folder):
        super().__init__()
        self.folder, self.at_epoch_end, self.starts_at = folder, [], []

    def on_train_begin(self, logs=None):
        # The epoch the fit goes on from, once the backup is restored.
        self.starts_at.append(self.model._initial_epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.at_epoch_end.append(sorted(os.listdir(self.folder)))


def test_interrupted_run_resumes_where_it_stopped(tiny_config, monkeypatch,
                                                  caplog):
    """A crash in the middle of the fine-tune stage; the rerun skips the
    head stage and continues fine-tuning from the last finished epoch."""
    config = tiny_config.replace(epochs=2, finetune_epochs=3)
    original = _crash_in_finetune_after(monkeypatch, 1)
    with pytest.raises(Crash):
        tl_keras.train(config)
    logs = os.path.join(config.runtime.workdir, "logs")
    assert os.path.isdir(os.path.join(config.runtime.workdir, "checkpoints",
                                      "finetune", "backup"))
    head_rows = list(csv.DictReader(open(os.path.join(logs, "head.csv"))))
    monkeypatch.setattr(EpochBackup, "on_epoch_end", original)
    caplog.set_level(logging.INFO, logger="tl_keras")
    backups = os.path.join(config.runtime.workdir, "checkpoints", "finetune",
                           "backup")
    seen = _SeesBackups(backups)
    metrics = tl_keras.train(config, callbacks=[seen])
    # A user's callback runs before the epoch's backup, as the run's own
    # logs do: a kill between them replays the epoch, and the callback
    # sees it again (it ran after the backup: a kill there lost it).
    assert seen.at_epoch_end == [["epoch-000002.weights.h5"]]
    # ...and from its on_train_begin on it sees the restored run.
    assert seen.starts_at == [2]
    assert "Resuming the run in" in caplog.text
    # The head stage did not run again; fine-tuning ran only epoch 3.
    assert list(csv.DictReader(open(os.path.join(logs, "head.csv")))) == (
        head_rows)
    rows = list(csv.DictReader(open(os.path.join(logs, "finetune.csv"))))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert len(metrics["stages"]["finetune"]["history"]["loss"]) == 3
    assert metrics["complete"]
    # What each stage's seconds_this_process covers: the head's 2 epochs
    # (done before the crash, read back), and the rerun's 1.
    assert metrics["stages"]["head"]["epochs_this_process"] == 2
    assert metrics["stages"]["finetune"]["epochs_this_process"] == 1
    # Finished: it says so, not "Resuming" first (it said both).
    caplog.clear()
    assert tl_keras.train(config) == metrics
    assert "is already complete" in caplog.text
    assert "Resuming" not in caplog.text


@pytest.mark.slow
def test_torn_resume_state_is_survived(tiny_config, monkeypatch):
    """Resume state torn by a crash or a full disk: the newest backup is
    unreadable and the stage's CSV log ends in half a row. The rerun
    skips the bad backup (going on from the one before it, or the stage's
    start), cuts the torn row, and completes."""
    config = tiny_config.replace(epochs=2, finetune_epochs=3)
    original = _crash_in_finetune_after(monkeypatch, 1)
    with pytest.raises(Crash):
        tl_keras.train(config)
    monkeypatch.setattr(EpochBackup, "on_epoch_end", original)
    backup = os.path.join(config.runtime.workdir, "checkpoints", "finetune",
                          "backup")
    assert sorted(os.listdir(backup)) == ["epoch-000002.weights.h5"]
    with open(os.path.join(backup, "epoch-000003.weights.h5"), "wb") as f:
        f.write(b"")  # an empty newer file, as a full disk leaves
    csv_path = os.path.join(config.runtime.workdir, "logs", "finetune.csv")
    with open(csv_path, "a") as f:
        f.write("2,0.5")  # half a row
    metrics = tl_keras.train(config)
    assert metrics["complete"]
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]  # epoch 3 only
    assert len(metrics["stages"]["finetune"]["history"]["loss"]) == 3
    assert not os.path.exists(backup)  # removed once the stage finished


@pytest.mark.slow
def test_resume_refuses_images_that_changed(tiny_config, monkeypatch):
    from tl_keras.training import stages

    # An interrupted run (killed in its first stage) ...
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    config = tiny_config.replace(epochs=1, finetune_epochs=1)
    with monkeypatch.context() as patch:
        patch.setattr(stages, "run_stage", crash)
        from tl_keras.training import trainer

        patch.setattr(trainer, "run_stage", crash)
        with pytest.raises(KeyboardInterrupt):
            tl_keras.train(config)
    workdir = config.runtime.workdir
    assert os.path.isfile(os.path.join(workdir, "data.json"))
    # ... whose images then change: one modified, one added.
    data_dir = config.data.data_dir
    first = sorted(os.listdir(os.path.join(data_dir, "class_0")))[0]
    path = os.path.join(data_dir, "class_0", first)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(tl_keras.InputError,
                       match=r"its images changed since the run .*1 "
                             r"modified \(e.g. .*" + first):
        tl_keras.train(config)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # (a new image: a copy of one it has would be left out as a copy)
    Image.fromarray(np.full((20, 20, 3), 77, np.uint8)).save(
        os.path.join(data_dir, "class_0", "zz_new.png"))
    try:
        with pytest.raises(tl_keras.InputError, match="1 added"):
            tl_keras.train(config)
    finally:
        os.remove(os.path.join(data_dir, "class_0", "zz_new.png"))
    # The same images again: it resumes and completes.
    assert tl_keras.train(config)["complete"]


@pytest.mark.slow
def test_a_finished_run_refuses_images_that_changed(tmp_path,
                                                    image_folder):
    # A finished run said "already complete; nothing to do" on a folder
    # with a class added and an image removed, even with --overwrite, and
    # its export kept the old classes.
    data_dir = str(tmp_path / "images")
    shutil.copytree(image_folder, data_dir)
    config = tl_keras.Config(
        data_dir=data_dir, workdir=str(tmp_path / "w"),
        backbone="compact_cnn", weights="none", image_size=32,
        approach="scratch", epochs=1, batch_size=8)
    tl_keras.train(config)
    with open(os.path.join(data_dir, "class_0", "notes.txt"), "w") as f:
        f.write("not an image")  # skipped, as the run skipped it
    assert tl_keras.train(config)["complete"]  # the same images: done
    new_class = write_image_folder(str(tmp_path / "new"), num_classes=1,
                                   per_class=12, seed=9)
    shutil.move(os.path.join(new_class, "class_0"),
                os.path.join(data_dir, "class_3"))
    removed = os.path.join(data_dir, "class_0",
                           sorted(os.listdir(os.path.join(
                               data_dir, "class_0")))[0])
    os.remove(removed)
    with pytest.raises(tl_keras.InputError,
                       match=r"changed since the run in .* finished: 12 "
                             r"added .*class_3.*; 1 removed \(e.g. "
                             + re.escape(removed) + r"\)\. Allowed"):
        tl_keras.train(config)
    # --overwrite: the old run is moved aside and a new one trains on
    # the images as they are now.
    metrics = tl_keras.train(config.replace(overwrite=True))
    assert metrics["class_names"] == [f"class_{i}" for i in range(4)]
    assert [p for p in os.listdir(tmp_path) if p.startswith("w.replaced-")]


@pytest.mark.slow
def test_resume_refuses_a_weights_file_that_changed(tiny_config, tmp_path,
                                                   monkeypatch):
    # The head stage keeps only the head's weights: a resumed run builds
    # its base from --weights again, so a file replaced in between gave a
    # run of two bases without a word.

    built = tl_keras.build_backbone("compact_cnn", "none", 32)
    weights = str(tmp_path / "base.weights.h5")
    built.base.save_weights(weights)
    config = tiny_config.replace(weights=weights, epochs=1,
                                 finetune_epochs=1, augment="none")

    interrupt_before_training(config, monkeypatch)
    os.replace(weights, str(tmp_path / "kept.weights.h5"))
    keras.utils.set_random_seed(1)
    tl_keras.build_backbone("compact_cnn", "none", 32).base.save_weights(
        weights)
    with pytest.raises(tl_keras.InputError,
                       match=r"Invalid weights: the file .* is not the one "
                             r"the run .* started with"):
        tl_keras.train(config)
    os.replace(str(tmp_path / "kept.weights.h5"), weights)
    assert tl_keras.train(config)["complete"]  # the same file: resumed


def _killed_and_resumed(config, tmp_path, monkeypatch):
    """Trains `config` whole (in tmp_path/whole), then again killed after
    fine-tune epoch 1 and resumed; asserts the two end with the same
    weights and returns (whole, resumed) metrics."""
    whole = tl_keras.train(config.replace(
        workdir=str(tmp_path / "whole")))
    original = _crash_in_finetune_after(monkeypatch, 1)
    with pytest.raises(Crash):
        tl_keras.train(config)
    monkeypatch.setattr(EpochBackup, "on_epoch_end", original)
    resumed = tl_keras.train(config)
    a = keras.models.load_model(os.path.join(config.runtime.workdir,
                                             "model.keras"))
    b = keras.models.load_model(str(tmp_path / "whole" / "model.keras"))
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    return whole, resumed


@pytest.mark.slow
def test_a_resumed_run_is_the_same_run_with_augmentation_and_dropout(
        tiny_config, tmp_path, monkeypatch):
    # Augmentation (flip, rotation, zoom) and head dropout on; the feature
    # cache off so every epoch draws augmentations. Killed after fine-tune
    # epoch 1 and resumed, the run ends with the weights of a run that was
    # never interrupted: each epoch's random state comes from (seed,
    # stage, epoch), not from where a process happened to start.
    config = tiny_config.replace(epochs=2, finetune_epochs=3, dropout=0.5,
                                 feature_cache=False)
    whole, resumed = _killed_and_resumed(config, tmp_path, monkeypatch)
    assert resumed["stages"]["finetune"]["history"] == whole["stages"][
        "finetune"]["history"]


@pytest.mark.slow
def test_a_resumed_ema_and_gradual_stage_is_the_same_run(tiny_config,
                                                         tmp_path,
                                                         monkeypatch):
    # Every fine-tune recipe option that keeps state across epochs: the
    # EMA average (an optimizer variable), gradual unfreezing (its gates
    # open by epoch), layer-wise rates, warmup then cosine (by the
    # optimizer's step count), AdamW, L2-SP. Killed after fine-tune epoch
    # 1 of 3 (the average swapped in for that epoch's checkpoint and back
    # out before its backup) and resumed, the run ends with the weights
    # and losses of a run never interrupted. Slow: two whole runs.
    config = tiny_config.replace(
        epochs=2, finetune_epochs=3, unfreeze="3", ema=0.9,
        gradual_unfreeze=1, lr_decay=0.5, lr_schedule="cosine",
        warmup_epochs=1, optimizer="adamw", weight_decay=0.01, l2sp=0.01,
        finetune_learning_rate=1e-3)
    whole, resumed = _killed_and_resumed(config, tmp_path, monkeypatch)
    history = resumed["stages"]["finetune"]["history"]
    assert len(history["loss"]) == 3
    for key, values in whole["stages"]["finetune"]["history"].items():
        np.testing.assert_allclose(history[key], values, rtol=1e-5,
                                   atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_a_stage_after_a_resumed_one_trains_all_its_epochs(tiny_config,
                                                           monkeypatch):
    # Killed after head epoch 2 of 3 (on images: the cache is off), the
    # head stage resumes at epoch 3; the fine-tune stage after it must
    # still train its 2 epochs from the first (Keras keeps the resumed
    # start epoch on the model).
    config = tiny_config.replace(epochs=3, finetune_epochs=2,
                                 feature_cache=False)
    original = _crash_in_finetune_after(monkeypatch, 1, stage="head")
    with pytest.raises(Crash):
        tl_keras.train(config)
    monkeypatch.setattr(EpochBackup, "on_epoch_end", original)
    metrics = tl_keras.train(config)
    assert len(metrics["stages"]["head"]["history"]["loss"]) == 3
    assert len(metrics["stages"]["finetune"]["history"]["loss"]) == 2


@pytest.mark.slow
def test_a_run_started_before_copies_were_left_out_resumes_with_them(
        tmp_path):
    # A run started by an older tl_keras trained on byte-for-byte copies
    # too: resumed, each copy read as an image removed since (and its
    # carved splits as images moved), and it was refused though nothing
    # had changed. It now resumes on its images as it started, on every
    # resume. Its split.json and data.json are written as the older
    # version wrote them: from its data, copies included, no "copies".

    from tl_keras.data.pipelines import make_datasets
    from tl_keras.training import run_data

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    data_dir = write_image_folder(str(tmp_path / "d"), num_classes=2,
                                  per_class=8, formats=("png",))
    copy = os.path.join(data_dir, "class_0", "zz_copy.png")
    shutil.copy(os.path.join(data_dir, "class_0", "000.png"), copy)
    config = tl_keras.Config(
        data_dir=data_dir, workdir=str(tmp_path / "w"),
        backbone="compact_cnn", weights="none", image_size=16,
        approach="scratch", epochs=3, batch_size=4, augment="none",
        test_split=0.0)
    with pytest.raises(KeyboardInterrupt):
        tl_keras.train(config, callbacks=[Interrupt()])
    workdir = config.runtime.workdir
    record_path = os.path.join(workdir, "data.json")
    with open(record_path) as f:
        assert json.load(f)["copies"] == [copy]
    older = make_datasets(config.data, 16, keep_copies=True)
    assert older.copy_files is None and sum(older.counts.values()) == 17
    run_data.record_data(workdir, older)
    with pytest.raises(KeyboardInterrupt):  # resumed, not refused
        tl_keras.train(config, callbacks=[Interrupt()])
    with open(record_path) as f:
        assert "copies" not in json.load(f)  # so the next resume keeps it
    metrics = tl_keras.train(config)
    assert metrics["complete"] and metrics["copy_files"] == 0
    assert sum(metrics["counts"].values()) == 17


def _tensorboard_epochs(workdir, stage):
    """The epochs of `stage`'s training loss in its TensorBoard events."""
    import tensorflow as tf
    from tensorflow.core.util.event_pb2 import Event

    folder = os.path.join(workdir, "logs", "tensorboard", stage, "train")
    events = [Event.FromString(record.numpy()) for name in os.listdir(folder)
              for record in tf.data.TFRecordDataset(os.path.join(folder,
                                                                 name))]
    return sorted({event.step for event in events
                   for value in event.summary.value
                   if value.tag == "epoch_loss"})


@pytest.mark.slow  # 20-30 s: three runs (the default suite's budget)
def test_killed_after_or_before_an_epochs_backup_keeps_its_history(
        tmp_path, monkeypatch):
    # Killed right after an epoch's backup, before its CSV row and
    # TensorBoard summary (the order was checkpoint, backup, logs): the
    # rerun went on after that epoch, which logs/scratch.csv, metrics.json's
    # history and TensorBoard never got (epochs 1, 2 of 0-2). Now the
    # backup comes last: killed after it, everything is written; killed
    # just before it (after TensorBoard, the last of the others), the rerun
    # replays the epoch and cuts its logged row. One workdir is killed at
    # both, the rerun dying at the second, then finishes as the whole run.
    config = tl_keras.Config(
        workdir=str(tmp_path / "run"), backbone="compact_cnn",
        weights="none", image_size=16, approach="scratch", epochs=3,
        batch_size=4, augment="none")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 16, 16, 3), np.uint8), np.arange(20) % 2

    def train(config):
        return tl_keras.train(config, data=tl_keras.from_arrays(
            x, y, config, 16))["stages"]["scratch"]

    for callback, epoch in ((EpochBackup, 0),
                            (keras.callbacks.TensorBoard, 1)):
        def crash_after(self, index, logs=None, original=callback.on_epoch_end,
                        epoch=epoch):
            original(self, index, logs)
            if index == epoch:
                raise Crash()

        with monkeypatch.context() as patch:
            patch.setattr(callback, "on_epoch_end", crash_after)
            with pytest.raises(Crash):
                train(config)
    got = train(config)
    want = train(config.replace(workdir=str(tmp_path / "whole")))
    with open(os.path.join(config.runtime.workdir, "logs",
                           "scratch.csv")) as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2"]
    assert got["best_epoch"] == want["best_epoch"]
    assert got["history"].keys() == want["history"].keys()
    for key, values in want["history"].items():
        np.testing.assert_allclose(got["history"][key], values, atol=1e-5,
                                   err_msg=key)
    assert _tensorboard_epochs(config.runtime.workdir, "scratch") == [0, 1, 2]
