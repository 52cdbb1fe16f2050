"""End to end through the command line: configs/smoke.cfg on generated
images, the workdir it leaves, the export reloaded, and bad input
answered with one clear message (no traceback) and an intact workdir
(resume: tests/test_resume.py)."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
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
    # Keras's per-epoch lines go to stdout (Keras's choice); tl_keras's log
    # goes to stderr.
    assert "Epoch 2/2" in result.stdout
    assert "Test accuracy" in result.stderr
    assert "Test accuracy" not in result.stdout


def test_tensorboard_stages_lie_end_to_end_and_each_stage_is_one_line(
        smoke_run):
    # Each stage's TensorBoard epochs began at step 0, so the fine-tune
    # curve lay on top of the head's; the log said "Stage 1: head" and
    # then "Stage head: ..." for the same stage.
    workdir, result = smoke_run

    def steps(stage, split):
        folder = os.path.join(workdir, "logs", "tensorboard", stage, split)
        return sorted(
            event.step for name in os.listdir(folder)
            for event in tf.compat.v1.train.summary_iterator(
                os.path.join(folder, name))
            for value in event.summary.value if value.tag == "epoch_loss")

    for split in ("train", "validation"):
        assert steps("head", split) == [0, 1], split  # --epochs=2
        assert steps("finetune", split) == [2], split  # --finetune_epochs=1
    assert "Stage 1 (head): 2 epochs" in result.stderr
    assert "Stage 2 (finetune): 1 epochs" in result.stderr
    assert "Stage 1: head" not in result.stderr
    # The test split's pass shows its progress, as extraction's does.
    assert re.search(r"Evaluating on the test split: (\d+) / \1 images",
                     result.stderr)


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
    # Baked into the data: config.json would record what did not run.
    (dict(augment="none"), dict(augment="flip"), "augment"),
    (dict(validation_split=0.3), dict(), "validation_split"),
    (dict(seed=7), dict(), "seed"),
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
    (["--flagfile="], "--flagfile is empty"),
    (["--seed=-1"], "Invalid seed"),
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
    assert "\nflags:\n" not in result.stderr  # no usage text before it
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


@pytest.mark.slow
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


def test_overwrite_never_moves_the_images_aside(tmp_path, image_folder):
    # A data_dir inside the workdir: --overwrite moved the images aside
    # with the old run, then the run failed reading them.
    workdir = tmp_path / "w"
    shutil.copytree(image_folder, workdir / "images")
    config = tl_keras.Config(
        data_dir=str(workdir / "images"), workdir=str(workdir),
        backbone="compact_cnn", weights="none", image_size=32,
        approach="scratch", epochs=1, overwrite=True)
    with pytest.raises(tl_keras.InputError,
                       match="Invalid overwrite: --overwrite would move the "
                             "workdir .* aside with the images in it"):
        tl_keras.train(config)
    with pytest.raises(tl_keras.InputError, match="Invalid overwrite"):
        tl_keras.compare(config)
    assert sorted(os.listdir(tmp_path)) == ["w"]
    assert sorted(os.listdir(workdir)) == ["images"]


def test_overwrite_never_moves_a_live_run_aside_with_its_folder(
        tiny_config, tmp_path):
    # --workdir=runs --overwrite, where runs/ holds a live run's workdir
    # (its lock beside it): the folder was moved aside, live run and all.
    import socket

    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    lock = runs / "a.lock"
    lock.write_text(json.dumps({"pid": os.getppid(),  # a live process
                                "host": socket.gethostname()}))
    config = tiny_config.replace(workdir=str(runs), overwrite=True)
    for run in (tl_keras.train, tl_keras.compare):
        with pytest.raises(tl_keras.InputError, match=(
                f"Invalid workdir .*: moving it aside would move a live run "
                f"inside it \\(lock file .*a.lock, held by pid "
                f"{os.getppid()}\\)")):
            run(config)
    assert sorted(os.listdir(runs)) == ["a", "a.lock"]
    # A lock whose process is gone does not keep its folder in place,
    # nor another tool's lock file (JSON without a pid and a host).
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(json.dumps({"pid": gone.pid,
                                "host": socket.gethostname()}))
    (runs / "Pipfile.lock").write_text('{"_meta": {"hash": "x"}}')
    (runs / "a" / "other.lock").write_text("[1]")
    aside = tl_keras.io.move_aside(str(runs))
    assert sorted(os.listdir(aside)) == ["Pipfile.lock", "a", "a.lock"]


@pytest.mark.slow
def test_a_live_run_locks_its_workdir(tiny_config):
    import socket

    workdir = tiny_config.runtime.workdir
    lock = workdir + ".lock"
    # A live holder: this test's parent process, as another run would be.
    with open(lock, "w") as f:
        json.dump({"pid": os.getppid(), "host": socket.gethostname(),
                   "since": "earlier"}, f)
    for config in (tiny_config, tiny_config.replace(overwrite=True)):
        with pytest.raises(tl_keras.InputError,
                           match=f"another tl_keras run uses it \\(pid "
                                 f"{os.getppid()}"):
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


def test_a_workdir_lock_nests_in_its_own_process(tmp_path):
    # The demo holds its workdir's lock and runs compare, which takes the
    # same lock, in it: held once, released by the outer holder.
    from tl_keras.io import workdir_lock

    workdir = str(tmp_path / "w")
    with workdir_lock(workdir):
        with workdir_lock(workdir + os.sep):
            assert os.path.isfile(workdir + ".lock")
        assert os.path.isfile(workdir + ".lock")
    assert not os.path.exists(workdir + ".lock")
    with workdir_lock(workdir):  # and can be taken again
        pass
    # Another thread of this process is another run: refused, not nested.
    import threading

    errors = []

    def other():
        try:
            with workdir_lock(workdir):
                pass
        except tl_keras.InputError as e:
            errors.append(str(e))

    with workdir_lock(workdir):
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "another tl_keras run uses it" in errors[0]
    assert not os.path.exists(workdir + ".lock")


@pytest.mark.parametrize("changes, field", [
    (dict(unfreeze="10"), "unfreeze"),  # compact_cnn has 4 blocks
    # 4 blocks one epoch apart: the last would open after the 3rd epoch.
    (dict(gradual_unfreeze=1, finetune_epochs=3), "gradual_unfreeze"),
    (dict(approach="auto", unfreeze="10"), "unfreeze"),
    # One block trains at the full rate: the decay would do nothing.
    (dict(unfreeze="1", lr_decay=0.5), "lr_decay"),
    (dict(feature_block="block1", lr_decay=0.5), "lr_decay"),
    (dict(approach="auto", unfreeze="1", lr_decay=0.5), "lr_decay"),
])
def test_stage_errors_come_before_anything_is_written(tmp_path, tiny_config,
                                                      changes, field):
    # These need the base's blocks; they used to be found after the
    # workdir was claimed (the corrected command was then refused as
    # "other settings"), and compare found them after training scratch
    # and transfer.
    config = tiny_config.replace(**{"approach": "finetune",
                                    "workdir": str(tmp_path / "w"),
                                    **changes})
    for entry in (tl_keras.train, tl_keras.compare):
        with pytest.raises(tl_keras.InputError, match=f"Invalid {field}"):
            entry(config)
        assert not os.path.exists(config.runtime.workdir), entry.__name__


def test_replica_batch_check():
    from types import SimpleNamespace

    from tl_keras.training.stages import check_replica_batch

    config = tl_keras.Config(batch_size=16)
    data = SimpleNamespace(counts={"train": 12})
    check_replica_batch(config, data, SimpleNamespace(replicas=1))
    with pytest.raises(tl_keras.InputError, match="Invalid batch_size: with "
                                                  "2 replicas"):
        check_replica_batch(config, data, SimpleNamespace(replicas=2))
    # The schedule counts the steps run: full batches only with replicas.
    from tl_keras.models.recipe import steps_per_epoch

    assert steps_per_epoch(12, 8) == 2
    assert steps_per_epoch(12, 8, full_only=True) == 1


def test_flags_a_mode_does_not_read_are_reported(caplog):
    # predict read none of these, compare trains every approach, and a
    # frozen base with random weights is worth a word.
    def warnings(*args):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tl_keras"):
            cli._warn_unused(cli.config_from_args(["--workdir=w", *args]))
        return caplog.text

    text = warnings("--mode=predict", "--inputs=a.png", "--epochs=3",
                    "--backbone=mobilenet_v2", "--data_dir=d", "--top_k=2")
    for flag in ("--epochs=3", "--backbone=mobilenet_v2", "--data_dir=d"):
        assert f"{flag} is not used by --mode=predict" in text
    assert "top_k" not in text and "inputs" not in text
    assert "--data_dir" not in warnings("--mode=evaluate", "--data_dir=d")
    assert "--approach=transfer is not used by --mode=compare" in warnings(
        "--mode=compare", "--data_dir=d", "--approach=transfer")
    assert "random weights" in warnings("--data_dir=d", "--weights=none",
                                        "--approach=transfer")
    assert "random weights" not in warnings("--data_dir=d", "--weights=none",
                                            "--approach=scratch")
    # rank ranks --backbones (a .keras file keeps its own weights), not
    # --backbone; the demo builds its own base.
    text = warnings("--mode=rank", "--data_dir=d", "--weights=none",
                    "--backbones=mobilenet_v2,base.keras")
    assert "mobilenet_v2's frozen base has random weights" in text
    assert "base.keras" not in text
    # A hub preset with --weights=none is built without its weights.
    assert "hub:vit's frozen base has random weights" in warnings(
        "--mode=rank", "--data_dir=d", "--weights=none",
        "--backbones=hub:vit")
    assert "random weights" not in warnings(
        "--mode=rank", "--data_dir=d", "--weights=none",
        "--backbones=base.keras")
    text = warnings("--mode=demo", "--backbone=compact_cnn",
                    "--weights=none")
    assert "--backbone=compact_cnn is not used by --mode=demo" in text
    assert "--weights=none is not used by --mode=demo" in text


def test_a_scratch_run_resumes_whatever_fine_tune_settings_it_is_given():
    # It warned that --finetune_epochs was not used, then refused to
    # resume without it ("finetune_epochs: 1 -> 10").
    from tl_keras.config import config_differences

    stored = tl_keras.Config(approach="scratch", finetune_epochs=1,
                             unfreeze="2").to_dict()
    assert config_differences(stored, tl_keras.Config(
        approach="scratch")) == []
    assert config_differences(stored, tl_keras.Config(
        approach="finetune", finetune_epochs=1, unfreeze="2")) == [
        "approach: 'scratch' -> 'finetune'"]
    # Nor whatever else a fixed approach does not read (it warned, then
    # refused "advisor_sample: 500 -> 600"), while a run the advisor
    # decides reads the advisor's settings.
    for approach in ("scratch", "finetune"):
        stored = tl_keras.Config(approach=approach, advisor_sample=500,
                                 demo_pretrain_epochs=3,
                                 feature_cache=False).to_dict()
        assert config_differences(stored, tl_keras.Config(
            approach=approach, advisor_sample=600)) == (
            [] if approach == "scratch" else
            ["feature_cache: False -> True"])
    stored = tl_keras.Config(approach="auto", advisor_sample=500).to_dict()
    assert config_differences(stored, tl_keras.Config(
        approach="auto", advisor_sample=600)) == [
        "advisor_sample: 500 -> 600"]


def test_a_keras_base_resumes_under_either_of_its_own_weights_names():
    # A .keras base keeps the file's weights under 'imagenet' and 'none'
    # alike. A run stored with 'none' was refused a resume under the
    # default ('weights: none -> imagenet'), while one stored with a
    # weights file resumed under 'none' without a word, on another base.
    from tl_keras.config import config_differences

    def differences(stored, current, backbone="base.keras"):
        return config_differences(
            tl_keras.Config(backbone=backbone, weights=stored).to_dict(),
            tl_keras.Config(backbone=backbone, weights=current))

    assert differences("none", "imagenet") == []
    assert differences("imagenet", "none") == []
    assert differences("w.weights.h5", "none") == [
        "weights: 'w.weights.h5' -> 'none'"]
    assert differences("none", "w.weights.h5") == [
        "weights: 'none' -> 'w.weights.h5'"]
    # A registered base is another base under each.
    assert differences("none", "imagenet", backbone="compact_cnn") == [
        "weights: 'none' -> 'imagenet'"]


@pytest.mark.parametrize("args, said", [
    (["--data_dir=tests", "--workdir=runs/a"],
     "tl_keras: interrupted; runs/a keeps what finished (up to the last "
     "completed epoch); the same command resumes from there"),
    (["--mode=compare", "--data_dir=tests", "--workdir=runs/a"],
     "tl_keras: interrupted; runs/a keeps what finished"),
    (["--mode=predict", "--export_dir=e", "--inputs=a.png"],
     "tl_keras: interrupted; --mode=predict writes its results only when "
     "it ends, so none were kept; the same command starts it over")])
def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, args, said):
    # It was a 70-line traceback that said nothing of what was kept.
    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_mode", lambda name: interrupted)
    monkeypatch.chdir(REPO)  # validate() checks that --data_dir is a folder
    flag_values = flags.FlagValues()
    cli.define_flags(flag_values)
    flag_values(["run.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run.py"], flag_values)
    assert exit_info.value.code == cli.EXIT_INTERRUPTED == 130
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(said), err


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    # --image_size=4096 (which the flag allows) ended in a traceback of
    # dozens of lines: "ResourceExhaustedError: OOM when allocating
    # tensor with shape[8,4096,4096,16]". Raised here as TensorFlow does;
    # other errors still raise.
    def out_of_memory(config):
        raise tf.errors.ResourceExhaustedError(  # as in a fit
            None, None, "Graph execution error:\n\nDetected at node x\n"
            "OOM when allocating tensor with shape[8,4096,4096,16] and type "
            "float on /job:localhost/replica:0/task:0\nmore")

    monkeypatch.setattr(cli, "_mode", lambda name: out_of_memory)
    monkeypatch.chdir(REPO)
    flag_values = flags.FlagValues()
    cli.define_flags(flag_values)
    flag_values(["run.py", "--data_dir=tests", "--workdir=runs/a",
                 "--image_size=4096", "--batch_size=8"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run.py"], flag_values)
    assert exit_info.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("tl_keras: error: Out of memory (OOM when "
                          "allocating tensor with shape[8,4096,4096,16]")
    assert "Received: batch_size=8, image_size=4096" in err

    def broken(config):
        raise tf.errors.InternalError(None, None, "not memory")

    monkeypatch.setattr(cli, "_mode", lambda name: broken)
    with pytest.raises(tf.errors.InternalError):
        cli.main(["run.py"], flag_values)


def test_verbosity_sets_the_tl_keras_log_level():
    # absl's --verbosity set absl's own logger only: the tl_keras log kept
    # INFO whatever it said. --logger_levels, more specific, wins.
    loggers = [logging.getLogger(name) for name in ("tl_keras", "absl", "")]
    kept = [logger.level for logger in loggers]

    def level(*args):
        flag_values = flags.FlagValues()
        for name, default in (("verbosity", -1), ("logger_levels", {})):
            absl_flag = type(flags.FLAGS[name])
            flags.DEFINE_flag(absl_flag(name, default, "absl's"),
                              flag_values=flag_values)
        flag_values(["run.py", *args])
        cli.set_log_level(flag_values)
        return logging.getLogger("tl_keras").level

    try:
        assert level() == logging.INFO  # absl's default, raised to 0
        assert level("--verbosity=-1") == logging.WARNING
        assert level("--verbosity=-2") == logging.ERROR
        assert level("--verbosity=1") == logging.DEBUG
        assert level("--verbosity=-2",
                     "--logger_levels=tl_keras:INFO") == logging.INFO
    finally:
        for logger, was in zip(loggers, kept, strict=True):
            logger.setLevel(was)
