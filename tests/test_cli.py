"""End to end through the command line: configs/smoke.cfg on generated
images, the workdir it leaves, the export reloaded, resume, and bad input
answered with one clear message (no traceback) and an intact workdir."""

import csv
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ON_GPU_HOST, REPO, run_cli, write_image_folder

import tl_keras
from tl_keras import cli
from tl_keras import data as data_lib


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, image_folder):
    workdir = str(tmp_path_factory.mktemp("smoke") / "run")
    result = run_cli("--flagfile=configs/smoke.cfg",
                     f"--data_dir={image_folder}", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_smoke_run_writes_the_workdir(smoke_run):
    workdir, result = smoke_run
    for path in ["flags.cfg", "config.json", "split.json", "metrics.json",
                 "model.keras", "export/saved_model.pb",
                 "export/assets/labels.txt",
                 "checkpoints/head/best.trainable.npz",
                 "checkpoints/head/done.json",
                 "checkpoints/finetune/best.weights.h5",
                 "logs/head.csv", "logs/finetune.csv"]:
        assert os.path.isfile(os.path.join(workdir, path)), path
    assert os.listdir(os.path.join(workdir, "logs", "tensorboard", "head"))
    # The backup used for mid-stage resume is removed once a stage is done.
    assert not os.path.exists(
        os.path.join(workdir, "checkpoints", "head", "backup"))
    assert "Epoch 2/2" in result.stdout
    assert "Test accuracy" in result.stdout


def test_split_json_lists_every_file_once(smoke_run, image_folder):
    workdir, _ = smoke_run
    with open(os.path.join(workdir, "split.json")) as f:
        split = json.load(f)
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    assert set(split) == {"train", "val", "test"}
    assert {k: len(v) for k, v in split.items()} == metrics["counts"]
    listed = [path for pairs in split.values() for path, _ in pairs]
    on_disk = [os.path.join(root, name)
               for root, _, names in os.walk(image_folder) for name in names]
    assert sorted(listed) == sorted(on_disk)  # each file in one split
    for pairs in split.values():
        for path, label in pairs:  # the label is the file's class folder
            assert os.path.basename(os.path.dirname(path)) == (
                metrics["class_names"][label])


def test_metrics_hold_the_required_fields(smoke_run, image_folder):
    workdir, _ = smoke_run
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["approach"] == "finetune"
    assert metrics["num_classes"] == 3
    assert metrics["class_names"] == ["class_0", "class_1", "class_2"]
    assert metrics["num_train"] == 24
    assert set(metrics["stages"]) == {"head", "finetune"}
    assert len(metrics["stages"]["head"]["history"]["val_accuracy"]) == 2
    assert len(metrics["stages"]["finetune"]["history"]["loss"]) == 1
    assert 0 <= metrics["test_accuracy"] <= 1
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == metrics["num_test"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(
        metrics["test_accuracy"])
    assert set(metrics["per_class"]["class_0"]) >= {"precision", "recall",
                                                    "f1-score"}
    if not ON_GPU_HOST:  # the CPU default; on GPUs XLA may be on
        assert metrics["hardware"]["jit_compile"] is False


def test_export_matches_the_model(smoke_run):
    workdir, _ = smoke_run
    model = keras.saving.load_model(os.path.join(workdir, "model.keras"))
    served = tf.saved_model.load(os.path.join(workdir, "export"))
    serve = served.signatures["serving_default"]
    assert serve.structured_input_signature[1]["images"].dtype == tf.uint8
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 50, 37, 3), dtype=np.uint8)
    scores = serve(images=tf.constant(images))["scores"].numpy()
    assert scores.shape == (4, 3) and scores.dtype == np.float32
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=1e-5)
    resized = data_lib.resize_images(images, 32).numpy().astype("float32")
    expected = tf.nn.softmax(model.predict(resized, verbose=0)).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    again = serve(images=tf.constant(images))["scores"].numpy()
    np.testing.assert_array_equal(scores, again)
    labels = open(os.path.join(workdir, "export/assets/labels.txt")).read()
    assert labels.split() == ["class_0", "class_1", "class_2"]


def test_same_command_again_is_a_no_op(smoke_run):
    workdir, _ = smoke_run
    metrics = os.path.join(workdir, "metrics.json")
    mtime = os.path.getmtime(metrics)
    # flags.cfg is reusable as a flagfile (parsed as run.py parses it; the
    # run itself in-process, as the command line would call it).
    config = cli.config_from_args([f"--flagfile={workdir}/flags.cfg"])
    assert tl_keras.train(config)["complete"]
    assert os.path.getmtime(metrics) == mtime


class Crash(Exception):
    pass


def _crash_in_finetune_after(monkeypatch, epoch, stage="finetune"):
    """Makes the run crash at the end of `stage`'s epoch `epoch` (0-based,
    after its logs and backup); returns the original TensorBoard hook."""
    original = keras.callbacks.TensorBoard.on_epoch_end

    def crash_in_finetune(self, current, logs=None):
        original(self, current, logs)
        if self.log_dir.endswith(stage) and current == epoch:
            raise Crash()

    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_epoch_end",
                        crash_in_finetune)
    return original


def test_interrupted_run_resumes_where_it_stopped(tiny_config, monkeypatch):
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
    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_epoch_end",
                        original)
    metrics = tl_keras.train(config)
    # The head stage did not run again; fine-tuning ran only epoch 3.
    assert list(csv.DictReader(open(os.path.join(logs, "head.csv")))) == (
        head_rows)
    rows = list(csv.DictReader(open(os.path.join(logs, "finetune.csv"))))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert len(metrics["stages"]["finetune"]["history"]["loss"]) == 3
    assert metrics["complete"]


def test_torn_resume_state_is_survived(tiny_config, monkeypatch):
    """Resume state torn by a crash or a full disk: the newest backup is
    unreadable and the stage's CSV log ends in half a row. The rerun
    skips the bad backup (going on from the one before it, or the stage's
    start), cuts the torn row, and completes."""
    config = tiny_config.replace(epochs=2, finetune_epochs=3)
    original = _crash_in_finetune_after(monkeypatch, 1)
    with pytest.raises(Crash):
        tl_keras.train(config)
    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_epoch_end",
                        original)
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


def test_arrays_run_through_the_api(tmp_path, tiny_config):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 20, 20, 3), dtype=np.uint8)
    y = np.arange(30) % 2
    x[y == 1, :10] = 255  # a learnable difference
    config = tiny_config.replace(data_dir="", mode="train",
                                 approach="transfer", epochs=1,
                                 workdir=str(tmp_path / "arrays"))
    data = tl_keras.from_arrays(x, y, config, 32, class_names=["a", "b"])
    metrics = tl_keras.train(config, data=data)
    assert metrics["class_names"] == ["a", "b"]
    assert os.path.isfile(os.path.join(config.runtime.workdir, "export",
                                       "saved_model.pb"))


@pytest.mark.parametrize("built_with, trained_with, field", [
    (dict(augment="flip,mixup"), dict(augment="flip"), "augment"),
    (dict(augment="flip"), dict(augment="flip,cutmix"), "augment"),
    (dict(batch_size=4), dict(batch_size=8), "batch_size"),
    (dict(image_size=24), dict(), "image_size"),
])
def test_data_built_for_another_config_is_refused(tmp_path, tiny_config,
                                                  built_with, trained_with,
                                                  field):
    # `train(config, data=...)` with data built under other settings: mixed
    # labels sent to a sparse loss, or images of another size, would fail
    # deep inside Keras or train wrongly. A clear error, nothing written.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 20, 20, 3), dtype=np.uint8)
    y = np.arange(30) % 2
    config = tiny_config.replace(data_dir="", mode="train",
                                 approach="transfer", epochs=1,
                                 workdir=str(tmp_path / "arrays"))
    built = config.replace(**built_with)
    data = tl_keras.from_arrays(x, y, built, built.model.image_size)
    # compare and advise check before the advisor measures or writes.
    for entry in (tl_keras.train, tl_keras.compare, tl_keras.advise):
        with pytest.raises(tl_keras.InputError) as e:
            entry(config.replace(**trained_with), data=data)
        assert f"Invalid {field}." in str(e.value), entry.__name__
        assert "Received" in str(e.value)
        assert not os.path.exists(config.runtime.workdir), entry.__name__


# Bad input through the CLI: exit code != 0, one clear line, no traceback.
BAD = [
    (["--data_dir=/nonexistent"], "no such folder"),
    (["--approach=transferr"], "approach"),
    (["--unfreeze=top"], "Invalid unfreeze"),
    (["--weights=/nonexistent.weights.h5"], "no such file"),
    (["stray_positional"], "Unexpected positional argument"),
    (["--epochs=0"], "Invalid epochs"),
    (["--no_such_flag=1"], "no_such_flag"),
    (["--epochs=many"], "Invalid flag: flag --epochs=many"),
    # One of tl_keras 0.1's advisor thresholds, gone in 0.2: says why.
    (["--advisor_tie_se=1"], "--advisor_tie_se: removed in tl_keras 0.2"),
]


@pytest.mark.parametrize("args, fragment", BAD,
                         ids=[a[0].split("=")[0] for a, _ in BAD])
def test_bad_input_gets_a_clear_error(tmp_path, image_folder, args,
                                      fragment):
    result = run_cli("--flagfile=configs/smoke.cfg",
                     f"--data_dir={image_folder}",
                     f"--workdir={tmp_path / 'w'}", *args)
    assert result.returncode == 2  # flag errors too (absl's own: 1)
    assert fragment in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # A failed first try leaves no half-made workdir behind.
    assert not os.path.exists(tmp_path / "w")


# In-process from here on: the command line turns each InputError into
# exit status 2 and one line (test_bad_input_gets_a_clear_error).

def test_unknown_backbone_leaves_no_workdir(tmp_path, tiny_config):
    config = tiny_config.replace(backbone="resnet5")
    with pytest.raises(tl_keras.InputError,
                       match="Unknown backbone 'resnet5'"):
        tl_keras.train(config)
    assert not os.path.exists(config.runtime.workdir)


def test_single_class_and_mismatched_weights(tmp_path, tiny_config):
    one = write_image_folder(str(tmp_path / "one"), num_classes=1)
    config = tiny_config.replace(data_dir=one, workdir=str(tmp_path / "w1"))
    with pytest.raises(tl_keras.InputError, match="at least 2 class"):
        tl_keras.train(config)
    other = tl_keras.build_backbone("mobilenet_v2", "none", 32)
    weights = str(tmp_path / "other.weights.h5")
    other.base.save_weights(weights)
    data = write_image_folder(str(tmp_path / "two"), num_classes=2)
    config = config.replace(data_dir=data, workdir=str(tmp_path / "w2"),
                            weights=weights)
    with pytest.raises(tl_keras.InputError,
                       match="does not match backbone 'compact_cnn'"):
        tl_keras.train(config)
    assert not (tmp_path / "w1").exists() and not (tmp_path / "w2").exists()


def test_workdir_of_another_run_is_kept(smoke_run, image_folder,
                                        monkeypatch):
    monkeypatch.chdir(REPO)  # configs/ paths resolve from here
    workdir, _ = smoke_run
    before = sorted(os.listdir(workdir))
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = f.read()
    config = cli.config_from_args([
        "--flagfile=configs/smoke.cfg", f"--data_dir={image_folder}",
        f"--workdir={workdir}", "--epochs=5"])
    with pytest.raises(tl_keras.InputError, match="epochs: 2 -> 5"):
        tl_keras.train(config)
    assert sorted(os.listdir(workdir)) == before
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert f.read() == metrics


def test_unrelated_folder_is_not_used_as_workdir(tmp_path, tiny_config):
    workdir = tmp_path / "mine"
    workdir.mkdir()
    (workdir / "thesis.txt").write_text("precious")
    with pytest.raises(tl_keras.InputError, match="holds no tl_keras run"):
        tl_keras.train(tiny_config.replace(workdir=str(workdir)))
    assert os.listdir(workdir) == ["thesis.txt"]
    assert (workdir / "thesis.txt").read_text() == "precious"


def test_bad_files_are_counted_in_metrics(tmp_path, tiny_config):
    root = write_image_folder(str(tmp_path / "d"), num_classes=2,
                              formats=("png",))
    (tmp_path / "d" / "class_0" / "broken.png").write_bytes(b"\x89PNG junk")
    config = tiny_config.replace(data_dir=root, approach="transfer",
                                 epochs=1, workdir=str(tmp_path / "w"))
    metrics = tl_keras.train(config)
    assert metrics["bad_files"] == 1
    assert metrics["bad_file_paths"][0].endswith("broken.png")
    assert sum(metrics["counts"].values()) == 24


def test_overwrite_moves_the_old_run_aside(tmp_path, tiny_config):
    config = tiny_config.replace(approach="transfer", epochs=1,
                                 workdir=str(tmp_path / "w"))
    tl_keras.train(config)
    tl_keras.train(config.replace(seed=3, overwrite=True))
    aside = [p for p in os.listdir(tmp_path) if p.startswith("w.replaced-")]
    assert len(aside) == 1
    with open(tmp_path / aside[0] / "config.json") as f:
        assert json.load(f)["seed"] == 42
    with open(tmp_path / "w" / "config.json") as f:
        assert json.load(f)["seed"] == 3


def test_a_live_run_locks_its_workdir(tiny_config):
    import socket

    workdir = tiny_config.runtime.workdir
    lock = workdir + ".lock"
    # A live holder: this test's own process, as another run would be.
    with open(lock, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                   "since": "earlier"}, f)
    for config in (tiny_config, tiny_config.replace(overwrite=True)):
        with pytest.raises(tl_keras.InputError,
                           match=f"another tl_keras run uses it \\(pid "
                                 f"{os.getpid()}"):
            tl_keras.train(config)
    assert not os.path.exists(workdir)  # nothing written, nothing moved
    # A holder that is gone (a process that has exited, on this host) is
    # stale: taken over.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with open(lock, "w") as f:
        json.dump({"pid": gone.pid, "host": socket.gethostname(),
                   "since": "earlier"}, f)
    metrics = tl_keras.train(tiny_config.replace(epochs=1,
                                                 finetune_epochs=1))
    assert metrics["complete"] and not os.path.exists(lock)


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
    with open(os.path.join(data_dir, "class_0", "zz_new.png"), "wb") as f:
        f.write(open(path, "rb").read())
    try:
        with pytest.raises(tl_keras.InputError, match="1 added"):
            tl_keras.train(config)
    finally:
        os.remove(os.path.join(data_dir, "class_0", "zz_new.png"))
    # The same images again: it resumes and completes.
    assert tl_keras.train(config)["complete"]


def _killed_and_resumed(config, tmp_path, monkeypatch):
    """Trains `config` whole (in tmp_path/whole), then again killed after
    fine-tune epoch 1 and resumed; asserts the two end with the same
    weights and returns (whole, resumed) metrics."""
    whole = tl_keras.train(config.replace(
        workdir=str(tmp_path / "whole")))
    original = _crash_in_finetune_after(monkeypatch, 1)
    with pytest.raises(Crash):
        tl_keras.train(config)
    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_epoch_end",
                        original)
    resumed = tl_keras.train(config)
    a = keras.models.load_model(os.path.join(config.runtime.workdir,
                                             "model.keras"))
    b = keras.models.load_model(str(tmp_path / "whole" / "model.keras"))
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    return whole, resumed


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
    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_epoch_end",
                        original)
    metrics = tl_keras.train(config)
    assert len(metrics["stages"]["head"]["history"]["loss"]) == 3
    assert len(metrics["stages"]["finetune"]["history"]["loss"]) == 2
