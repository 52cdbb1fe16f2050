"""The fault-injection suite: a run killed with SIGKILL at every kind of
point where it writes or trains, then the same command again, ends as the
run that was never killed.

Each kill is real (tests/fault_task.py: `os.kill(pid, SIGKILL)` inside the
process, no exception, no cleanup) and lands at a known point. One workdir
is killed twelve times in a row, each rerun dying at the next point, then
finishes; its model, history and export are compared with an uninterrupted
run of the same flags in the same way (a subprocess). Default augmentation
(flip, rotation, zoom) and head dropout are on, so the comparison also
covers the random state of a resumed epoch. docs/reliability.md lists the
faults and their outcomes.
"""

import csv
import json
import os
import signal

import keras
import numpy as np
import pytest
from conftest import run_fault_task, write_image_folder

# The head's learning rate is high enough that its kept epoch is not its
# last (checked below): a rerun fine-tuning from the wrong one differs.
FLAGS = ["--backbone=compact_cnn", "--weights=none", "--image_size=32",
         "--approach=finetune", "--epochs=2", "--finetune_epochs=3",
         "--learning_rate=0.3",
         "--finetune_learning_rate=1e-3", "--batch_size=8", "--dropout=0.3",
         "--validation_split=0.2", "--test_split=0.2"]

# (where it dies, TL_KERAS_TEST_FAULT, what must hold right after the kill
# as a path under the workdir that must exist / must not exist). In the
# order a run reaches them, so each rerun resumes and dies at the next.
FAULTS = [
    ("mid-epoch, head stage", "batch:head:2:2",
     ["checkpoints/head/backup/epoch-000001.weights.h5"],
     ["checkpoints/head/done.json"]),
    ("writing an epoch backup (head), before the rename",
     "write:head/backup/epoch-000002:before",
     ["checkpoints/head/backup/.tmp.epoch-000002.weights.h5"],
     ["checkpoints/head/backup/epoch-000002.weights.h5"]),
    ("writing the head's last-epoch weights, before the rename",
     "write:head/last.trainable:before",
     ["checkpoints/head/backup/epoch-000002.weights.h5"],
     ["checkpoints/head/last.trainable.npz", "checkpoints/head/done.json"]),
    ("stage boundary: the head marked done, fine-tune not started",
     "write:head/done.json:after",
     ["checkpoints/head/done.json"], ["checkpoints/finetune"]),
    ("writing the fine-tune stage's first best checkpoint, between its "
     "weights and best.json", "write:finetune/best.json:before",
     ["checkpoints/finetune/best.weights.h5"],
     ["checkpoints/finetune/best.json"]),
    # The stage's epoch 0 is written: the rerun does not write it again,
    # and must still go on from the head's last epoch.
    ("mid-epoch, fine-tune stage, before its first backup",
     "batch:finetune:1:2", ["checkpoints/finetune/best.json"],
     ["checkpoints/finetune/backup/epoch-000001.weights.h5"]),
    ("mid-epoch, fine-tune stage", "batch:finetune:2:1",
     ["checkpoints/finetune/backup/epoch-000001.weights.h5"],
     ["checkpoints/finetune/done.json"]),
    ("writing an epoch backup (fine-tune), before the rename",
     "write:finetune/backup/epoch-000003:before",
     ["checkpoints/finetune/backup/epoch-000002.weights.h5"],
     ["checkpoints/finetune/done.json"]),
    ("between the fine-tune stage's end and its done.json",
     "write:finetune/done.json:before",
     ["checkpoints/finetune/backup/epoch-000003.weights.h5"],
     ["checkpoints/finetune/done.json"]),
    ("writing model.keras, before the rename", "write:run/model.keras:before",
     ["checkpoints/finetune/done.json"], ["model.keras"]),
    ("the export: written, not yet swapped into place",
     "write:run/export:before", ["model.keras"], ["export"]),
    ("writing metrics.json, before the rename",
     "write:run/metrics.json:before", ["export/saved_model.pb"],
     ["metrics.json"]),
]


def epochs_logged(workdir, stage):
    with open(os.path.join(workdir, "logs", f"{stage}.csv")) as f:
        return [row["epoch"] for row in csv.DictReader(f)]


@pytest.mark.slow
def test_killed_anywhere_then_rerun_ends_as_the_uninterrupted_run(tmp_path):
    data_dir = write_image_folder(str(tmp_path / "images"), per_class=16,
                                  formats=("png",))
    whole = str(tmp_path / "whole")
    done = run_fault_task(data_dir, whole, FLAGS)
    assert done.returncode == 0, done.stderr[-3000:]
    workdir = str(tmp_path / "run")
    for where, fault, present, absent in FAULTS:
        killed = run_fault_task(data_dir, workdir, FLAGS, fault)
        assert killed.returncode == -signal.SIGKILL, (
            f"{where}: not killed (exit {killed.returncode})\n"
            + killed.stderr[-3000:])
        for path in present:
            assert os.path.exists(os.path.join(workdir, path)), (where, path)
        for path in absent:
            assert not os.path.exists(os.path.join(workdir, path)), (
                where, path)
        assert os.path.exists(workdir + ".lock")  # a dead holder's lock
    final = run_fault_task(data_dir, workdir, FLAGS)
    assert final.returncode == 0, final.stderr[-3000:]
    assert not os.path.exists(workdir + ".lock")

    got = json.load(open(os.path.join(workdir, "metrics.json")))
    want = json.load(open(os.path.join(whole, "metrics.json")))
    # See FLAGS: the kept head is not the last, the fine-tune went on from
    # the last and kept an epoch of its own.
    assert want["stages"]["head"]["best_epoch"] < 2
    assert "diverged" not in want["stages"]["head"]
    assert want["stages"]["finetune"]["best_epoch"] > 0
    for metrics in (want, got):
        assert metrics["stages"]["finetune"]["started_from"] == (
            "the head's last epoch")
    assert got["complete"] and got["counts"] == want["counts"]
    for stage in ("head", "finetune"):
        # Every epoch logged once, and the same epochs as the whole run's.
        assert epochs_logged(workdir, stage) == epochs_logged(whole, stage)
        for key, values in want["stages"][stage]["history"].items():
            np.testing.assert_allclose(
                got["stages"][stage]["history"][key], values, atol=1e-5,
                err_msg=f"{stage} {key}")
    assert got["test_accuracy"] == want["test_accuracy"]
    a = keras.models.load_model(os.path.join(workdir, "model.keras"))
    b = keras.models.load_model(os.path.join(whole, "model.keras"))
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5,
                                   err_msg=x.path)
    # Nothing half-written is left behind: no temporary export folders
    # from the killed export, the export itself complete.
    assert not [n for n in os.listdir(workdir) if n.startswith(".export-")]
    assert os.path.isfile(os.path.join(workdir, "export", "manifest.json"))
    # The last rerun only finished what was left: both stages were done.
    assert "Stage 2 (finetune) already done" in final.stderr + final.stdout
