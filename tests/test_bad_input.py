"""Bad input, each case named in the faults issue: a clear error, or a
warning that names the files and a count in the data's record; never a
traceback, nothing in a workdir or export lost."""

import importlib
import io
import json
import logging
import os
import shutil
import threading
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run_cli, write_image_folder
from PIL import Image

import tl_keras
from tl_keras.data.folders import scan_folder
from tl_keras.modes import predict


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(str(tmp_path / "images"), num_classes=2,
                              per_class=6, formats=("png",))


def _data(folder, **changes):
    config = tl_keras.Config(data_dir=folder, workdir="unused",
                             image_size=32, batch_size=4,
                             validation_split=0.2, test_split=0.2,
                             augment="none", **changes)
    return tl_keras.make_datasets(config, 32)


def test_broken_files_are_skipped_named_and_counted(folder, caplog):
    bad = os.path.join(folder, "class_0")
    with open(os.path.join(bad, "empty.png"), "wb"):
        pass
    good = open(os.path.join(bad, "000.png"), "rb").read()
    with open(os.path.join(bad, "truncated.png"), "wb") as f:
        f.write(good[:len(good) // 2])
    with open(os.path.join(bad, "notes.jpg"), "w") as f:
        f.write("not an image at all")
    # A decompression bomb: 10,000 x 10,000 1-bit pixels in a 12 KB PNG,
    # 100 M pixels once decoded (more than PIL's 89.5 M limit).
    Image.new("1", (10_000, 10_000)).save(os.path.join(bad, "bomb.png"))
    data = _data(folder)
    names = sorted(os.path.basename(p) for p in data.bad_files)
    assert names == ["bomb.png", "empty.png", "notes.jpg", "truncated.png"]
    assert data.counts["train"] + data.counts["val"] + data.counts[
        "test"] == 12


def test_symlinked_folders_are_not_followed_and_said(folder, caplog):
    # A symlink loop (a class folder linking to its parent) would be
    # walked forever; it is not followed, and the log says so.
    os.symlink(folder, os.path.join(folder, "class_0", "loop"))
    files, _, _ = scan_folder(folder)
    assert len(files["train"]) == 12
    assert "symlinked folder" in caplog.text and "loop" in caplog.text


@pytest.mark.slow
def test_non_ascii_class_names_train_and_export(tmp_path):
    root = write_image_folder(str(tmp_path / "images"), num_classes=2,
                              per_class=8, formats=("png",))
    for old, new in (("class_0", "café"), ("class_1", "猫")):
        os.rename(os.path.join(root, old), os.path.join(root, new))
    metrics = tl_keras.train(tl_keras.Config(
        data_dir=root, workdir=str(tmp_path / "run"), backbone="compact_cnn",
        weights="none", image_size=32, approach="transfer", epochs=1,
        batch_size=4, augment="none"))
    assert metrics["class_names"] == ["café", "猫"]
    exported = tl_keras.load_exported(str(tmp_path / "run" / "export"))
    assert exported.class_names == ["café", "猫"]
    out = exported.predict([os.path.join(root, "猫", "000.png")])
    assert out["labels"][0] in ("café", "猫")


@pytest.mark.skipif(os.name != "posix", reason="POSIX byte file names")
def test_non_utf8_names_are_a_clear_error_or_skipped(folder, caplog):
    # A class folder whose name is not UTF-8: an error naming it.
    raw = os.path.join(os.fsencode(folder), b"class_\xff")
    os.makedirs(raw)
    for name in os.listdir(os.path.join(folder, "class_0"))[:3]:
        shutil.copy(os.path.join(folder, "class_0", name),
                    os.fsdecode(os.path.join(raw, os.fsencode(name))))
    with pytest.raises(tl_keras.InputError,
                       match=r"class_\\xff in .* not valid UTF-8"):
        scan_folder(folder)
    shutil.rmtree(raw)
    # A file whose name is not UTF-8: skipped and named in the log.
    src = os.path.join(folder, "class_1", "000.png")
    shutil.copy(src, os.fsdecode(os.path.join(
        os.fsencode(folder), b"class_1", b"bad_\xff.png")))
    files, _, skipped = scan_folder(folder)
    assert len(files["train"]) == 12 and len(skipped) == 1
    assert "not valid UTF-8" in caplog.text


def test_hidden_files_and_nested_folders(folder, caplog):
    # Hidden files (.DS_Store and the like) are left out and counted in
    # the log; images in nested folders belong to their class.
    caplog.set_level(logging.INFO, logger="tl_keras")
    with open(os.path.join(folder, "class_0", ".DS_Store"), "wb") as f:
        f.write(b"\0" * 10)
    nested = os.path.join(folder, "class_1", "more", "deeper")
    os.makedirs(nested)
    shutil.copy(os.path.join(folder, "class_1", "000.png"),
                os.path.join(nested, "x.png"))
    files, _, _ = scan_folder(folder)
    assert len(files["train"]) == 13
    assert "1 hidden file" in caplog.text


def test_an_output_in_a_missing_folder_fails_before_any_work(tmp_path,
                                                             folder):
    config = tl_keras.Config(
        mode="predict", export_dir=str(tmp_path / "export"),
        inputs=folder, output=str(tmp_path / "no" / "such" / "preds.csv"))
    with pytest.raises(tl_keras.InputError,
                       match="Invalid output: its folder .* does not exist"):
        predict.predict_files(config)
    assert not os.path.exists(tmp_path / "no")


def test_a_glob_that_matches_nothing_is_an_error(tmp_path):
    with pytest.raises(tl_keras.InputError, match="matches no image"):
        predict.expand_inputs(str(tmp_path / "*.png"))


@pytest.mark.parametrize("spec", ["{image},", "{image},,{image}", ",", " "])
def test_an_empty_name_in_inputs_is_an_error(tmp_path, spec):
    # It was skipped without a word ('$A,$B' with $B empty).
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(tl_keras.InputError, match="Invalid inputs: an "
                       "empty name matches no image"):
        predict.expand_inputs(spec.format(image=image))


def test_a_class_name_with_a_semicolon_warns_about_the_csv(tmp_path,
                                                           caplog):
    # top_k is 'name:score;...': a ':' in a name still splits at the
    # last one; a ';' cannot be told from the separator, so the log says
    # so and points to the JSON output.
    import csv

    rows = [{"path": "x.png", "label": "a:b", "score": 0.6,
             "top_k": [("a:b", 0.6), ("c", 0.4)], "error": ""}]
    caplog.set_level(logging.INFO, logger="tl_keras")
    predict.write_predictions(rows, str(tmp_path / "p.csv"))
    assert "ambiguous" not in caplog.text
    with open(tmp_path / "p.csv", newline="") as f:
        top = list(csv.DictReader(f))[0]["top_k"]
    assert [e.rsplit(":", 1)[0] for e in top.split(";")] == ["a:b", "c"]
    rows[0]["top_k"] = [("a;b", 0.6), ("c", 0.4)]
    predict.write_predictions(rows, str(tmp_path / "q.csv"))
    assert "Class name(s) with ';' (a;b)" in caplog.text
    assert ".json" in caplog.text


def test_arrays_with_nan_or_inf_are_an_error():
    x = np.full((10, 8, 8, 3), 100.0, np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(tl_keras.InputError,
                       match="Invalid x: .*NaN or Inf.*1 value"):
        tl_keras.from_arrays(x, np.arange(10) % 2, None, 32)


def test_a_dark_frame_among_others_is_an_image():
    # A near-black frame (0s and 1s) is refused only when every image is
    # so (a [0, 1] batch cast to uint8); fractions below 1 with nothing
    # above are refused per image (the cases below).
    x = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), np.uint8)
    x[3] = np.random.default_rng(1).integers(0, 2, (8, 8, 3))
    data = tl_keras.from_arrays(x, np.arange(10) % 2, None, 8)
    assert sum(data.counts.values()) == 10


_X = np.random.default_rng(0).integers(1, 255, (10, 8, 8, 3), np.uint8)
_Y = np.arange(10) % 2


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(x=_X[:0], y=_Y[:0]), "Invalid x. Allowed: a non-empty"),
    (dict(x=[np.zeros((8, 8, 3)), np.zeros((4, 4, 3))], y=[0, 1]),
     "ragged"),
    (dict(y_val=_Y), "Invalid x_val, y_val. Allowed: both or neither"),
    (dict(x_test=_X), "Invalid x_test, y_test"),
    (dict(class_names=["cat", "cat"]), "Invalid class_names.*distinct"),
    (dict(class_names=["cat\ndog", "bird"]), "Invalid class_names"),
    (dict(class_names="ab"), "Invalid class_names"),
    (dict(class_names=["a", "b", "c"]),  # no image of c
     "Invalid y. Allowed: at least one training image of every class"),
    (dict(y=np.where(_Y == 1, 2**32 + 1, 0)), "labels in \\[0, 2\\*\\*31\\)"),
    (dict(y=_Y * 10**6), "Invalid y. Allowed: labels below 100,000"),
    (dict(image_size=0), "Invalid image_size"),
    (dict(config=tl_keras.DataConfig(validation_split=0.0)),
     "Invalid validation_split"),
    # Images scaled to [0, 1] train as black images: refused per image
    # (the whole array's largest value let these through), as uint8 too.
    (dict(x=(_X > 50).astype(np.uint8)),
     r"Invalid x: 10 of 10 image\(s\) have every value in \[0, 1\]"),
    (dict(x=np.concatenate([_X[:1] * 1.0, _X[1:] / 255.0])),
     r"Invalid x: 9 of 10 image\(s\) .*images 1, 2, 3, 4, 5 \.\.\."),
])
def test_bad_arrays_get_a_clear_error(kwargs, fragment):
    args = {"x": _X, "y": _Y, "config": None, "image_size": 16, **kwargs}
    with pytest.raises(tl_keras.InputError, match=fragment):
        tl_keras.from_arrays(**args)


def _array_run(tmp_path, epochs):
    """A scratch run's config on arrays, and 20 images of 2 classes."""
    config = tl_keras.Config(workdir=str(tmp_path / "run"),
                             backbone="compact_cnn", weights="none",
                             image_size=16, approach="scratch",
                             epochs=epochs, batch_size=4, augment="none")
    rng = np.random.default_rng(0)
    return (config, rng.integers(0, 256, (20, 16, 16, 3), np.uint8),
            np.arange(20) % 2)


def test_a_resumed_run_on_other_arrays_is_refused(tmp_path):
    # Folders are checked by path, size and time; arrays by a digest.
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    config, x, y = _array_run(tmp_path, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        tl_keras.train(config, data=tl_keras.from_arrays(x, y, config, 16),
                       callbacks=[Interrupt()])
    other = x.copy()
    other[0, 0, 0, 0] ^= 1
    with pytest.raises(tl_keras.InputError,
                       match="the arrays given differ from those the run"):
        tl_keras.train(config, data=tl_keras.from_arrays(other, y, config,
                                                         16))


@pytest.mark.slow
def test_a_finished_run_on_other_arrays_is_refused_not_read_back(tmp_path):
    # A finished run is read back, not trained again; given other arrays
    # (or other names for its labels) it returned the old run's metrics
    # and export without a word (audit, session 41). Folders were checked.
    config, x, y = _array_run(tmp_path, epochs=1)

    def run(images, labels, names=("cat", "dog"), **changes):
        return tl_keras.train(config.replace(**changes),
                              data=tl_keras.from_arrays(
                                  images, labels, config, 16,
                                  class_names=list(names)))

    first = run(x, y)
    assert run(x, y) == first  # the same arrays: read back
    other = x.copy()
    other[0, 0, 0, 0] ^= 1
    with pytest.raises(tl_keras.InputError, match=(
            r"Invalid data: the arrays given differ from those the run in "
            r".* finished with: their images or labels \(digest\)\. "
            r"Allowed: the same arrays \(the finished run stands\)")):
        run(other, y)
    with pytest.raises(tl_keras.InputError, match=(
            r"finished with: their class names \(the run's: cat, dog\)")):
        run(x, y, names=("dog", "cat"))
    # overwrite=True starts over on them (the old run moved aside).
    again = run(other, y, names=("dog", "cat"), overwrite=True)
    assert again["class_names"] == ["dog", "cat"]
    assert [e for e in os.listdir(tmp_path) if ".replaced-" in e]


def _split_folder(tmp_path, val_files):
    """train/ with two classes of readable images, and val/ holding
    `val_files` {class: [bytes of each file]}."""
    root = tmp_path / "split"
    write_image_folder(str(root / "train"), num_classes=2, per_class=6,
                       formats=("png",))
    for name, contents in val_files.items():
        (root / "val" / name).mkdir(parents=True)
        for i, content in enumerate(contents):
            (root / "val" / name / f"{i}.png").write_bytes(content)
    (root / "val").mkdir(exist_ok=True)
    return str(root)


def test_a_val_folder_without_readable_images_is_an_error(tmp_path):
    # Unreadable files are skipped; a val/ left with nothing would have
    # validated on nothing (best_val_accuracy -1) and still "completed".
    for val_files in ({"class_0": [b"junk"], "class_1": [b"junk"]}, {}):
        root = _split_folder(tmp_path / str(len(val_files)), val_files)
        with pytest.raises(tl_keras.InputError,
                           match="val split's folder holds no readable"):
            _data(root)


def test_a_class_missing_from_val_is_said(tmp_path, caplog):
    one = write_image_folder(str(tmp_path / "one"), num_classes=1,
                             per_class=2, formats=("png",), seed=7)
    good = [open(f"{one}/class_0/00{i}.png", "rb").read() for i in (0, 1)]
    root = _split_folder(tmp_path, {"class_0": good})
    data = _data(root)
    assert data.counts["val"] == 2
    assert "val split has no images of 1 class(es): class_1" in caplog.text


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_keras_cannot_take_is_an_error(seed):
    with pytest.raises(tl_keras.InputError, match="Invalid seed"):
        tl_keras.Config(seed=seed).data.validate()


@pytest.mark.parametrize("inside", ["", "runs/a"])
def test_a_workdir_in_the_data_folder_is_refused(folder, inside):
    # --overwrite would move the images aside; a run's files inside the
    # data folder would become a class folder of the next scan.
    workdir = os.path.join(folder, inside) if inside else folder
    config = tl_keras.Config(data_dir=folder, workdir=workdir,
                             overwrite=True)
    with pytest.raises(tl_keras.InputError,
                       match="Invalid workdir. Allowed: a folder outside"):
        tl_keras.train(config)
    assert sorted(os.listdir(folder)) == ["class_0", "class_1"]


def test_a_workdir_that_is_a_file_is_refused(folder, tmp_path):
    path = tmp_path / "a_file"
    path.write_text("kept")
    config = tl_keras.Config(data_dir=folder, workdir=str(path))
    with pytest.raises(tl_keras.InputError, match="it is a file"):
        tl_keras.train(config)
    with pytest.raises(tl_keras.InputError, match="it is a file"):
        tl_keras.train(config.replace(workdir=str(path) + os.sep))
    with pytest.raises(tl_keras.InputError, match="it is a file"):
        tl_keras.advise(config.replace(mode="advise"))
    assert path.read_text() == "kept"


def test_advise_keeps_a_training_runs_decision(folder, tmp_path):
    from tl_keras.advisor.advise import check_record_place, write_record

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")
    (workdir / "decision.json").write_text('{"approach": "finetune"}')
    config = tl_keras.Config(mode="advise", data_dir=folder,
                             workdir=str(workdir))
    with pytest.raises(tl_keras.InputError, match="holds a training run"):
        tl_keras.advise(config)
    check_record_place(config.replace(overwrite=True))
    # With --overwrite (or after an earlier advise) the old record is
    # moved aside, never lost.
    write_record(str(workdir), "decision.json", {"approach": "scratch"})
    aside = [n for n in os.listdir(workdir) if ".replaced-" in n]
    assert len(aside) == 1
    assert "finetune" in (workdir / aside[0]).read_text()
    # A live run's workdir (its lock held: this test's parent process stands
    # for it) is refused to advise and rank even with --overwrite, before
    # anything is measured or moved.
    import json
    import socket

    with open(str(workdir) + ".lock", "w") as f:
        json.dump({"pid": os.getppid(), "host": socket.gethostname(),
                   "since": "earlier"}, f)
    before = sorted(os.listdir(workdir))
    for mode in ("advise", "rank"):
        with pytest.raises(tl_keras.InputError,
                           match="another tl_keras run uses it"):
            getattr(tl_keras, mode)(config.replace(
                mode=mode, overwrite=True, backbones="compact_cnn",
                weights="none"))  # compact_cnn has no ImageNet weights
    assert sorted(os.listdir(workdir)) == before


def test_settings_a_run_does_not_read_are_said(caplog, monkeypatch,
                                               tmp_path, image_folder):
    # From Python too: tl_keras.train dropped them without a word (the
    # command line warned); the training itself is not needed here.
    from tl_keras.config.reads import warn_unread
    from tl_keras.training import trainer

    monkeypatch.setattr(trainer, "_train_checked", lambda *args: {})
    caplog.set_level(logging.INFO, logger="tl_keras")
    tl_keras.train(tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "w"),
        approach="transfer", unfreeze="2", top_k=5, export_dir="elsewhere",
        learning_rate=0.01, advisor_sample=500, demo_pretrain_epochs=3))
    for flag in ("--unfreeze=2", "--top_k=5", "--export_dir=elsewhere",
                 "--advisor_sample=500", "--demo_pretrain_epochs=3"):
        assert (f"{flag} is not used by --mode=train --approach=transfer"
                in caplog.text)
    assert "learning_rate" not in caplog.text  # every approach reads it
    caplog.clear()
    tl_keras.train(tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "w"),
        approach="scratch", feature_cache=False))
    assert "--feature_cache=False is not used by --mode=train " in (
        caplog.text)
    tl_keras.train(tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "w"),
        approach="scratch", augment="flip", feature_cache_views="3"))
    assert "--feature_cache_views=3 is not used by --mode=train " in (
        caplog.text)
    caplog.clear()
    warn_unread(tl_keras.Config(mode="predict", top_k=5))
    warn_unread(tl_keras.Config(mode="advise", advisor_sample=500))
    assert caplog.text == ""
    # The demo makes its images at its own size; advise and rank export
    # nothing.
    warn_unread(tl_keras.Config(mode="demo", image_size=64))
    warn_unread(tl_keras.Config(mode="rank", export_tflite=True,
                                backbones="compact_cnn"))
    assert "--image_size=64 is not used by --mode=demo" in caplog.text
    assert "--export_tflite=True is not used by --mode=rank" in caplog.text
    # rank trains nothing: a fine-tune config's recipe was dropped
    # without a word (docs/advisor.md runs rank with one).
    caplog.clear()
    warn_unread(tl_keras.Config(mode="rank", unfreeze="6", epochs=7,
                                augment="flip", feature_block="block2",
                                advisor_sample=300))
    for flag in ("--unfreeze=6", "--epochs=7", "--augment=flip",
                 "--feature_block=block2"):
        assert f"{flag} is not used by --mode=rank" in caplog.text
    assert "advisor_sample" not in caplog.text  # rank samples as advise
    # advise and rank measure in this process as it is: the placement
    # flags were dropped without a word.
    caplog.clear()
    warn_unread(tl_keras.Config(mode="advise", distribution="mirrored",
                                jit_compile="true",
                                mixed_precision="mixed_bfloat16"))
    for flag in ("--distribution=mirrored", "--jit_compile=true",
                 "--mixed_precision=mixed_bfloat16"):
        assert f"{flag} is not used by --mode=advise" in caplog.text
    caplog.clear()
    warn_unread(tl_keras.Config(mode="compare", distribution="mirrored"))
    assert caplog.text == ""
    # Weights the base is built without: a scratch run's (none is what it
    # does anyway), and none for a .keras base, which keeps its own. Both
    # were said at INFO only, as if the flag had been used.
    warn_unread(tl_keras.Config(approach="scratch", weights="w.weights.h5"))
    warn_unread(tl_keras.Config(backbone="b.keras", weights="none"))
    warn_unread(tl_keras.Config(mode="advise", backbone="b.keras",
                                weights="none"))
    for used_by in ("train --approach=scratch", "train --approach=finetune",
                    "advise"):
        assert f"is not used by --mode={used_by}." in caplog.text
    assert "--weights=w.weights.h5 is not used" in caplog.text
    caplog.clear()
    warn_unread(tl_keras.Config(approach="scratch", weights="none"))
    warn_unread(tl_keras.Config(mode="rank", weights="none",
                                backbones="b.keras,compact_cnn"))
    assert caplog.text == ""
    # predict and evaluate read --workdir only for <workdir>/export.
    warn_unread(tl_keras.Config(mode="predict", workdir="no_such_run",
                                export_dir="e", inputs="a.png"))
    assert "--workdir=no_such_run is not used by --mode=predict" in (
        caplog.text)


def test_placement_flags_of_compare_and_demo_fail_before_writing(
        tiny_config):
    # compare wrote decision.json, the demo its images, and then met a
    # --distribution this machine cannot run.
    from tl_keras.modes import demo
    config = tiny_config.replace(distribution="tpu")
    with pytest.raises(tl_keras.InputError, match="no TPU is reachable"):
        tl_keras.compare(config.replace(mode="compare"))
    with pytest.raises(tl_keras.InputError, match="no TPU is reachable"):
        demo.run_demo(config.replace(mode="demo", data_dir=""))
    assert not os.path.exists(config.runtime.workdir)


def test_the_placement_resolvers_check_their_settings():
    # Public in tl_keras.distribute: False (a bool) turned XLA on, and
    # any precision name was passed on.
    from tl_keras.distribute import resolve_jit_compile, resolve_precision
    for setting in (False, "False", "off"):
        with pytest.raises(tl_keras.InputError,
                           match="Invalid jit_compile. Allowed: auto | "):
            resolve_jit_compile(setting)
    with pytest.raises(tl_keras.InputError,
                       match="Invalid mixed_precision. Allowed: auto | "):
        resolve_precision("mixed_float8")
    assert resolve_jit_compile("false") is False
    assert resolve_precision("float32") == "float32"


def test_a_flag_twice_in_one_flagfile_is_refused(tmp_path, image_folder):
    flagfile = tmp_path / "twice.cfg"
    flagfile.write_text("--epochs=3\n# a comment\n--epochs=5\n")
    result = run_cli(f"--flagfile={flagfile}", f"--data_dir={image_folder}",
                     f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2
    assert f"--epochs is given twice in {flagfile}" in result.stderr
    # Overriding a flagfile's value on the command line is the way; a
    # repeat on the command line (scripts append overrides) is said, and
    # the last one wins.
    flagfile.write_text("--epochs=3\n")
    result = run_cli(f"--flagfile={flagfile}", "--epochs=2", "--epochs=0",
                     f"--data_dir={image_folder}")
    assert "Invalid epochs" in result.stderr
    assert "--epochs is given more than once on the command line" in (
        result.stderr)
    # The warning waits for --verbosity's level: at -2 (errors only) it
    # was printed before the level was set.
    result = run_cli(f"--flagfile={flagfile}", "--epochs=2", "--epochs=0",
                     f"--data_dir={image_folder}", "--verbosity=-2")
    assert "Invalid epochs" in result.stderr
    assert "more than once" not in result.stderr


@pytest.mark.slow
def test_no_test_split_is_said_with_the_accuracy(tiny_config, caplog):
    # With --test_split=0 and no test/ folder the run scored its
    # validation images, which chose its best epoch, and said only
    # "(val, N images)"; compare's report said more.
    config = tiny_config.replace(approach="scratch", epochs=1,
                                 augment="none", test_split=0)
    caplog.set_level(logging.INFO, logger="tl_keras")
    assert tl_keras.train(config)["test_split"] == "val"
    assert ("No test split: that accuracy is of the validation images, "
            "which chose the best epoch") in caplog.text


def test_only_check_args_checks_the_values(tmp_path, image_folder):
    # absl's --only_check_args exited 0 right after parsing: --epochs=0
    # and a missing --data_dir passed as valid.
    result = run_cli(f"--data_dir={tmp_path / 'nope'}", "--epochs=0",
                     f"--workdir={tmp_path / 'w'}", "--only_check_args")
    assert result.returncode == 2
    assert "Invalid epochs" in result.stderr
    result = run_cli("--flagfile=configs/smoke.cfg", "--only_check_args",
                     f"--data_dir={image_folder}",
                     f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the flags are valid for --mode=train" in result.stderr
    assert "--log_dir" not in result.stderr
    # absl's --log_dir is for its own log files, which tl_keras does not
    # write: the folder stayed empty without a word.
    result = run_cli("--flagfile=configs/smoke.cfg", "--only_check_args",
                     f"--data_dir={image_folder}", f"--log_dir={tmp_path}",
                     f"--workdir={tmp_path / 'w'}")
    assert f"--log_dir={tmp_path} is not used" in result.stderr
    assert os.listdir(tmp_path) == []  # nothing written


def test_files_outside_the_class_folders_are_said(folder, caplog):
    Image.new("RGB", (8, 8)).save(os.path.join(folder, "stray.png"))
    files, _, skipped = scan_folder(folder)
    assert len(files["train"]) == 12
    assert [os.path.basename(p) for p in skipped] == ["stray.png"]
    assert "Ignoring 1 file(s) outside the class folders" in caplog.text


def test_a_symlinked_twin_of_a_class_folder_is_an_error(folder):
    # A link to a sibling class would put the same images in two classes.
    os.symlink(os.path.join(folder, "class_0"),
               os.path.join(folder, "class_2"))
    with pytest.raises(tl_keras.InputError,
                       match="class_0 and class_2 .* are the same folder"):
        scan_folder(folder)


def test_a_class_name_with_a_newline_is_an_error(folder):
    # assets/labels.txt holds one class name per line.
    os.rename(os.path.join(folder, "class_1"),
              os.path.join(folder, "class\n1"))
    with pytest.raises(tl_keras.InputError, match="control characters"):
        scan_folder(folder)


def test_a_png_cut_after_its_pixels_is_unreadable(folder):
    # PIL decodes it; TensorFlow, which trains on it, does not ("Invalid
    # PNG data" mid-training): the check uses TensorFlow's decoder.
    from tl_keras.data.images import find_unreadable

    good = os.path.join(folder, "class_0", "000.png")
    cut = os.path.join(folder, "class_0", "cut.png")
    with open(good, "rb") as f, open(cut, "wb") as out:
        out.write(f.read()[:-20])
    with Image.open(cut) as image:
        image.load()  # PIL takes it
    assert find_unreadable([good, cut]) == [cut]


def test_exif_orientation_is_named_and_not_applied(folder, caplog):
    # A phone photo taken upright is often stored on its side with an
    # EXIF "rotate 90 when shown" (orientation 6). TensorFlow's decoder,
    # which training and serving use, ignores it (as Keras's
    # image_dataset_from_directory does): the check says so, names the
    # file, and still takes it.
    from tl_keras.data.images import decode_image, find_unreadable

    plain = os.path.join(folder, "class_0", "plain.jpg")
    turned = os.path.join(folder, "class_0", "turned.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (20, 10), (200, 30, 30)).save(turned, exif=exif)
    exif[0x0112] = 1
    Image.new("RGB", (20, 10), (200, 30, 30)).save(plain, exif=exif)
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        assert find_unreadable([plain]) == []
    assert "EXIF" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        assert find_unreadable([plain, turned]) == []
    assert "1 image file(s) have an EXIF orientation" in caplog.text
    assert turned in caplog.text and plain not in caplog.text
    with open(turned, "rb") as f:
        assert decode_image(f.read()).shape == (10, 20, 3)  # as stored
    # Once per file and process: a predict loop is not flooded.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        assert find_unreadable([turned]) == []
    assert "EXIF" not in caplog.text
    # A PNG whose EXIF block is malformed (a byte order of "XX": PIL's
    # parser raises) is still readable, and not taken for a rotation.
    broken = os.path.join(folder, "class_0", "broken_exif.png")
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(buffer, "PNG", exif=exif)
    data = buffer.getvalue()
    at = data.index(b"eXIf")
    size = int.from_bytes(data[at - 4:at], "big")
    body = b"XX" + data[at + 6:at + 4 + size]
    chunk = b"eXIf" + body + zlib.crc32(b"eXIf" + body).to_bytes(4, "big")
    with open(broken, "wb") as f:
        f.write(data[:at] + chunk + data[at + 8 + size:])
    with Image.open(broken) as image, pytest.raises(SyntaxError):
        image.getexif()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        assert find_unreadable([broken]) == []
    assert "EXIF" not in caplog.text


def test_a_test_split_that_rounds_to_nothing_is_an_error(folder):
    # 6 images a class x 0.04 rounds to 0: the run would have reported
    # the validation accuracy as its test result. (Validation keeps at
    # least one image of a class of 3 or more.)
    config = tl_keras.Config(data_dir=folder, workdir="unused",
                             augment="none", test_split=0.04)
    with pytest.raises(tl_keras.InputError,
                       match="Invalid test_split: it leaves no images"):
        tl_keras.make_datasets(config, 32)


def test_a_class_a_carved_split_misses_is_said(tmp_path, caplog):
    root = write_image_folder(str(tmp_path / "few"), num_classes=2,
                              per_class=8, formats=("png",))
    for name in sorted(os.listdir(os.path.join(root, "class_1")))[2:]:
        os.remove(os.path.join(root, "class_1", name))
    data = _data(root)
    assert data.class_counts["test"]["class_1"] == 0
    assert "test split has no images of 1 class(es): class_1" in caplog.text


@pytest.mark.parametrize("backbones, fragment", [
    # An empty name was dropped without a word.
    (",", "none empty"),
    ("compact_cnn,", "none empty"),
    ("compact_cnn,,compact_cnn.keras", "none empty"),
    ("compact_cnn,compact_cnn", "comma-separated distinct"),
    # Refused before compact_cnn is measured, not after.
    ("compact_cnn,/no/such/base.keras", "no such file"),
])
def test_rank_checks_every_candidate_first(folder, tmp_path, backbones,
                                           fragment):
    config = tl_keras.Config(mode="rank", data_dir=folder,
                             workdir=str(tmp_path / "rank"),
                             backbones=backbones, weights="none")
    with pytest.raises(tl_keras.InputError,
                       match=f"Invalid backbones.*{fragment}"):
        tl_keras.rank(config)
    assert not os.path.exists(tmp_path / "rank")


def test_rank_from_python_checks_its_names_whatever_the_mode(folder,
                                                             tmp_path):
    # A Config left at mode='train' skips Config.validate's rank checks:
    # rank() said "Unknown backbone ''".
    for backbones in ("", "compact_cnn,,compact_cnn.keras"):
        with pytest.raises(tl_keras.InputError,
                           match="Invalid backbones.*none empty"):
            tl_keras.rank(tl_keras.Config(
                data_dir=folder, workdir=str(tmp_path / "rank"),
                backbones=backbones, weights="none"))
    assert not os.path.exists(tmp_path / "rank")


@pytest.mark.parametrize("first, second, changes, fragment", [
    # compact_cnn has no ImageNet weights; mobilenet_v2 takes >= 32 px.
    ("base", "compact_cnn", dict(weights="imagenet", image_size=32),
     "Invalid weights for compact_cnn"),
    ("compact_cnn", "mobilenet_v2", dict(weights="none", image_size=16),
     "Invalid image_size for mobilenet_v2"),
])
def test_rank_checks_every_candidates_weights_and_size_first(
        request, folder, tmp_path, monkeypatch, first, second, changes,
        fragment):
    # The later candidate was refused only after the ones before it were
    # measured, and nothing was kept (audit).
    ranking = importlib.import_module("tl_keras.advisor.rank")

    def measured(*args, **kwargs):
        raise AssertionError("a candidate measured before all were checked")

    monkeypatch.setattr(ranking, "measure", measured)
    if first == "base":  # a .keras base keeps its own weights
        first = request.getfixturevalue("pretrained_base")
    config = tl_keras.Config(mode="rank", data_dir=folder,
                             workdir=str(tmp_path / "rank"),
                             backbones=f"{first},{second}", **changes)
    with pytest.raises(tl_keras.InputError, match=fragment):
        tl_keras.rank(config)
    assert not os.path.exists(tmp_path / "rank")


def test_an_advisor_sample_below_the_classes_is_an_error():
    # A random sample that small leaves classes out of every measurement.
    from tl_keras.advisor import check_sample

    def data(classes):
        names = [str(i) for i in range(classes)]
        return SimpleNamespace(class_names=names, class_counts={
            "train": dict.fromkeys(names, 2)})

    config = tl_keras.Config(advisor_sample=10)
    check_sample(config, data(10))
    with pytest.raises(tl_keras.InputError,
                       match="Invalid advisor_sample. Allowed: at least "
                             "the number of classes \\(12\\)"):
        check_sample(config, data(12))


def test_an_auto_run_refuses_a_class_too_small_before_writing(tmp_path):
    # The advisor's "fewer than 2 training images" came after an auto run
    # had written its workdir, and the rerun on the corrected folder was
    # refused as changed images (audit, session 41).
    folder = tmp_path / "images"
    write_image_folder(str(folder), num_classes=3, per_class=8,
                       formats=("png",))
    for extra in sorted(os.listdir(folder / "class_2"))[1:]:
        os.remove(folder / "class_2" / extra)
    base = dict(data_dir=str(folder), backbone="compact_cnn",
                weights="none", image_size=32, epochs=1, finetune_epochs=1,
                batch_size=8, augment="none")
    for mode, approach in (("train", "auto"), ("compare", "finetune")):
        config = tl_keras.Config(workdir=str(tmp_path / mode), mode=mode,
                                 approach=approach, **base)
        run = tl_keras.train if mode == "train" else tl_keras.compare
        with pytest.raises(tl_keras.InputError,
                           match="class\\(es\\) class_2 have fewer than 2 "
                                 "training images"):
            run(config)
        assert not os.path.exists(config.runtime.workdir), mode


@pytest.mark.parametrize("names, problem", [
    (["a", "b"], "3 names, one per output"),  # a broken export before
    (["a", "b", "c", "d"], "3 names, one per output"),
    (["a", "a", "b"], "distinct"),
    ("abc", "distinct"),  # a string is not three names
    (["a", "b\nx", "c"], "printable"),  # labels.txt would have 4 lines
    ({"a", "b", "c"}, "in label order"),  # a set's order is the hash seed's
])
def test_export_refuses_class_names_that_do_not_fit(tmp_path, names,
                                                     problem):
    model = tl_keras.build_classifier(
        tl_keras.build_backbone("compact_cnn", "none", 32), 3)
    with pytest.raises(tl_keras.InputError,
                       match=f"Invalid class_names. Allowed: .*{problem}"):
        tl_keras.export_saved_model(model, str(tmp_path / "e"), names)
    assert not os.listdir(tmp_path)


def test_from_arrays_names_the_split_and_refuses_a_set(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    # A validation label the training set lacks is named as y_val's (it
    # was reported as the training set missing classes 3, 4 and 5).
    with pytest.raises(tl_keras.InputError,
                       match=r"Invalid y_val. .*\(0 to 2\).*label 5"):
        tl_keras.from_arrays(x, y, None, 32, x_val=x[:3],
                             y_val=np.array([0, 1, 5]))
    with pytest.raises(tl_keras.InputError, match="in label order"):
        tl_keras.from_arrays(x, y, None, 32, class_names={"a", "b", "c"})
    # 0 x 0 images were taken, then failed inside TF after the workdir
    # was written.
    with pytest.raises(tl_keras.InputError, match="at least 1 x 1 pixel"):
        tl_keras.from_arrays(np.zeros((6, 0, 0, 3), np.uint8), y, None, 32)
    data = tl_keras.from_arrays(
        x, y, tl_keras.Config(test_split=0), 32, x_val=255 - x[:3],
        y_val=np.array([0, 1, 2]), class_names=np.array(["a", "b", "c"]))
    assert data.class_names == ["a", "b", "c"]


def test_train_checks_its_arguments_before_writing(tmp_path, folder):
    import keras

    config = tl_keras.Config(data_dir=folder, workdir=str(tmp_path / "w"),
                             backbone="compact_cnn", weights="none",
                             image_size=32, epochs=1, finetune_epochs=1)
    cases = [
        (dict(config=config.to_dict()), "Invalid config. Allowed: a "
                                        "tl_keras.Config"),
        (dict(data=folder), "Invalid data. Allowed: an ImageData"),
        # Not a list (an AttributeError deep in a stage, after the
        # workdir was written), and a function that is not a callback.
        (dict(callbacks=keras.callbacks.EarlyStopping()),
         "Invalid callbacks. Allowed: a list of keras.callbacks.Callback"),
        (dict(callbacks=[lambda *a: None]), "Invalid callbacks"),
        (dict(callbacks=None), "Invalid callbacks"),
        # It trained, whatever the mode said.
        (dict(config=config.replace(mode="evaluate")),
         "Invalid mode. Allowed: train .*Received: mode='evaluate'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(tl_keras.InputError, match=message):
            tl_keras.train(**{"config": config, **kwargs})
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("entry", ["compare", "advise", "rank",
                                   "make_datasets", "from_arrays",
                                   "build_classifier"])
def test_every_entry_point_names_a_config_of_the_wrong_kind(entry, folder):
    # train refused a dict; compare, advise, rank, make_datasets and
    # from_arrays raised AttributeError ("'dict' object has no attribute
    # 'validate'" / "'data'"), build_classifier given a name "'str' object
    # has no attribute 'image_size'".
    from tl_keras.data import make_datasets

    config = tl_keras.Config(data_dir=folder, workdir="unused")
    wrong = {"compare": lambda: tl_keras.compare(config.to_dict()),
             "advise": lambda: tl_keras.advise(None),
             "rank": lambda: tl_keras.rank(config.model),
             "make_datasets": lambda: make_datasets(config.to_dict(), 32),
             "from_arrays": lambda: tl_keras.from_arrays(_X, _Y, "cfg", 32),
             "build_classifier": lambda: tl_keras.build_classifier(
                 "compact_cnn", 3)}[entry]
    field = "backbone" if entry == "build_classifier" else "config"
    with pytest.raises(tl_keras.InputError, match=f"Invalid {field}. "):
        wrong()


def test_data_given_in_memory_records_no_data_dir(tmp_path, folder,
                                                  caplog):
    # config.json and flags.cfg named the folder that was not read: a
    # flagfile reused from the run trained on the folder instead.
    import json

    x = np.random.default_rng(0).integers(0, 255, (24, 8, 8, 3), np.uint8)
    config = tl_keras.Config(data_dir=folder, workdir=str(tmp_path / "w"),
                             backbone="compact_cnn", weights="none",
                             image_size=32, approach="transfer", epochs=1,
                             augment="none")
    data = tl_keras.from_arrays(x, np.arange(24) % 2, config, 32)
    caplog.set_level(logging.INFO, logger="tl_keras")
    assert tl_keras.train(config, data=data)["complete"]
    assert f"data_dir={folder!r} is not read" in caplog.text
    with open(tmp_path / "w" / "config.json") as f:
        assert json.load(f)["data_dir"] == ""
    # The same call resumes (is complete), not refused as other settings.
    assert tl_keras.train(config, data=data)["complete"]


def test_data_read_from_another_folder_is_refused(tmp_path, folder):
    # It trained on the other folder's images while config.json and
    # flags.cfg recorded data_dir; rerun, the run was refused as "images
    # changed". An empty data_dir records the folder the data came from.
    from tl_keras.data import make_datasets
    from tl_keras.data.given import given_data_config

    other = write_image_folder(str(tmp_path / "other"), num_classes=2,
                               per_class=6, formats=("png",))
    config = tl_keras.Config(data_dir=folder, workdir=str(tmp_path / "w"),
                             backbone="compact_cnn", weights="none",
                             image_size=32, approach="scratch", epochs=1,
                             augment="none")
    data = make_datasets(config.replace(data_dir=other).data, 32)
    with pytest.raises(tl_keras.InputError,
                       match=f"Invalid data_dir. Allowed: '{other}', the "
                             f"folder the data passed in was read from"):
        tl_keras.train(config, data=data)
    assert not os.path.exists(tmp_path / "w")
    assert given_data_config(config.replace(data_dir=""), data).data.data_dir \
        == ""  # as before: nothing recorded (a resume compares it)
    same = os.path.join(other, "class_0", "..")  # the folder, spelled apart
    assert given_data_config(config.replace(data_dir=same),
                             data).data.data_dir == same


@pytest.mark.parametrize("changes, size, field", [
    (dict(batch_size=0), 32, "batch_size"),  # a TF InvalidArgumentError
    (dict(validation_split=1.5), 32, "validation_split"),  # "too few"
    ({}, "32", "image_size"),  # a TypeError
    ({}, 0, "image_size"),  # taken
])
def test_make_datasets_checks_its_config(folder, changes, size, field):
    from tl_keras.data import make_datasets

    with pytest.raises(tl_keras.InputError, match=f"Invalid {field}"):
        make_datasets(tl_keras.Config(data_dir=folder, **changes), size)


def test_split_folders_inside_the_class_folders_are_an_error(tmp_path):
    # cat/train/, cat/test/: the test images would be trained on.
    for name in ("cat", "dog"):
        for split, n in (("train", 4), ("test", 2)):
            write_image_folder(str(tmp_path / "d" / name / split),
                               num_classes=1, per_class=n, formats=("png",))
    with pytest.raises(tl_keras.InputError) as e:
        scan_folder(str(tmp_path / "d"))
    message = str(e.value)
    assert "cat/test, cat/train, dog/test, dog/train" in message
    assert "Allowed: train/<class>/" in message and "not <class>/train/" in (
        message) and "Received: data_dir=" in message


def test_a_split_folder_named_like_its_class_is_said(folder, caplog):
    # One class only: a nested folder of the class, said in the log.
    write_image_folder(os.path.join(folder, "class_0", "test"),
                       num_classes=1, per_class=2, formats=("png",))
    files, _, _ = scan_folder(folder)
    assert len(files["train"]) == 14
    assert "class_0 holds folders named like splits (test)" in caplog.text


def test_a_split_folder_that_is_another_split_folder_is_an_error(tmp_path):
    # test/ a symlink to val/: the test score would be on the val images.
    root = tmp_path / "d"
    for split in ("train", "val"):
        write_image_folder(str(root / split), num_classes=2, per_class=3,
                           formats=("png",))
    os.symlink(root / "val", root / "test")
    with pytest.raises(tl_keras.InputError,
                       match="split folders test and val .* are the same "
                             "folder"):
        scan_folder(str(root))


@pytest.mark.parametrize("make_link", [os.symlink, os.link])
@pytest.mark.parametrize("link, target, left_out", [
    # One image, two classes: both left out (which label is right?).
    ("class_0/dup.png", "class_1/001.png", ("class_0/dup.png",
                                            "class_1/001.png")),
    # Trained on and tested: the test one left out.
    ("test/class_0/dup.png", "train/class_0/001.png",
     ("test/class_0/dup.png",)),
])
def test_an_image_linked_into_two_classes_or_splits_is_a_copy(
        tmp_path, link, target, left_out, make_link):
    # By a symlink or a hard link (one file by two names, as `cp -l` or a
    # DVC cache makes), as a byte-for-byte copy is (a hard link was two
    # images, one trained on and the other tested; a symlink refused the
    # whole folder).
    root = tmp_path / "d"
    for seed, split in enumerate(
            ("train", "test") if link.startswith("test/") else ("",)):
        write_image_folder(str(root / split), num_classes=2, per_class=3,
                           formats=("png",), seed=seed)
    make_link(root / target, root / link)
    data = _data(str(root))
    assert sorted(os.path.relpath(p, root) for p in data.copy_files) == (
        sorted(left_out))
    kept = {p for pairs in data.files.values() for p, _ in pairs}
    assert not kept & set(data.copy_files)


def test_a_class_folder_linked_into_another_split_is_an_error(tmp_path):
    # test/class_0 -> val/class_0 was refused as images in two splits,
    # then (links read as copies) its images were left out of test with
    # a warning, and test lost the class.
    root = tmp_path / "d"
    for seed, split in enumerate(("train", "val", "test")):
        write_image_folder(str(root / split), num_classes=2, per_class=3,
                           formats=("png",), seed=seed)
    shutil.rmtree(root / "test" / "class_0")
    os.symlink(root / "val" / "class_0", root / "test" / "class_0")
    with pytest.raises(tl_keras.InputError,
                       match="class folders .*test/class_0 and .*val/class_0 "
                             "are the same folder .* in two splits"):
        scan_folder(str(root))


def test_one_folder_by_two_spellings_takes_one_lock(tmp_path):
    # A symlink to a locked workdir (or 'runs/d/.') took a lock of its
    # own, and the second run trained into the first's folder.
    from tl_keras import io as tl_io

    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    def other_run(spelling, errors):  # another thread: another run
        try:
            with tl_io.workdir_lock(str(spelling)):
                pass
        except tl_keras.InputError as e:
            errors.append(str(e))

    with tl_io.workdir_lock(str(real)):
        for spelling in (tmp_path / "link", f"{real}/.", f"{real}/"):
            errors = []
            thread = threading.Thread(target=other_run,
                                      args=(spelling, errors))
            thread.start()
            thread.join()
            assert errors and "another tl_keras run uses it" in errors[0]
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]  # no ..lock


def test_a_resumed_workdir_that_cannot_be_written_is_refused(tmp_path,
                                                             monkeypatch):
    # Made read-only between a killed run and its rerun: the rerun took
    # the lock, then failed writing config.json (a traceback). Only the
    # folder above the workdir was probed. (The test runs as root, whom
    # a chmod does not stop: the probe is stood in for.)
    from tl_keras import io as tl_io

    workdir = tmp_path / "run"
    workdir.mkdir()
    probe = tl_io.unwritable
    monkeypatch.setattr(tl_io, "unwritable", lambda path: (
        "read-only" if os.path.dirname(os.path.abspath(path)) == str(workdir)
        else probe(path)))
    with pytest.raises(tl_keras.InputError, match="Invalid workdir: "
                                                  "read-only"):
        tl_keras.Config(data_dir=str(tmp_path), workdir=str(workdir),
                        ).validate(require_data_dir=False)


def test_tf_config_a_run_ignores_is_said_and_a_bool_index_refused(
        monkeypatch, caplog):
    from tl_keras.distribute import strategy
    from tl_keras.distribute.cluster import parse_tf_config

    cluster = {"worker": ["localhost:1", "localhost:2"]}
    # True counted as index 1 (worker-True), then waited for its peer.
    with pytest.raises(tl_keras.InputError, match="task index True"):
        parse_tf_config(json.dumps({"cluster": cluster, "task": {
            "type": "worker", "index": True}}))
    # Worker 1 of 2 trained alone into the chief's workdir, silently.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {
        "type": "worker", "index": 1}}))
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        assert strategy._resolve_kind("one_device")[0] == "one_device"
    assert "TF_CONFIG is set but --distribution=one_device" in caplog.text


def test_a_run_resumes_under_another_spelling_of_its_folders(tmp_path):
    # 'runs/t' -> 'runs/t/' was "a run with other settings", and the
    # --overwrite the error suggested would have started it over.
    from tl_keras.config import config_differences

    stored = tl_keras.Config(workdir=str(tmp_path / "t"),
                             data_dir=str(tmp_path / "d")).to_dict()
    for workdir, data_dir in ((f"{tmp_path}/t/", f"{tmp_path}/./d"),
                              (f"{tmp_path}/x/../t", f"{tmp_path}/d/")):
        assert config_differences(stored, tl_keras.Config(
            workdir=workdir, data_dir=data_dir)) == []
    assert config_differences(stored, tl_keras.Config(
        workdir=str(tmp_path / "t"), data_dir=str(tmp_path / "e")))


def test_overwrite_of_the_same_run_is_said_and_a_linked_run_moves(
        tmp_path, caplog):
    # --overwrite on this same run was ignored without a word; on a
    # symlinked workdir it moved the link, and the run then wrote into a
    # new folder in the link's place, not the link's target.
    from tl_keras import io as tl_io
    from tl_keras.training.workdir import check_workdir, claim_workdir

    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    os.symlink(real, link)
    config = tl_keras.Config(workdir=str(link), data_dir=str(tmp_path),
                             overwrite=True)
    tl_io.write_json(str(real / "config.json"), config.to_dict())
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        assert check_workdir(config) is None
    assert "--overwrite: " in caplog.text and "this same run" in caplog.text
    other = config.replace(epochs=3)
    assert check_workdir(other)  # another run: moved aside
    claim_workdir(other, "other settings")
    assert os.path.islink(link) and os.path.realpath(link) == str(real)
    assert json.load(open(real / "config.json"))["epochs"] == 3
    moved = [n for n in os.listdir(tmp_path) if n.startswith("real.")]
    assert len(moved) == 1


def test_a_lock_left_under_this_process_pid_is_taken_over(tmp_path,
                                                          caplog):
    # A container restarted with the pid its killed run had: the rerun
    # was refused as "another tl_keras run" naming its own pid.
    import socket

    from tl_keras import io as tl_io

    workdir = tmp_path / "run"
    (tmp_path / "run.lock").write_text(json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(),
        "since": "2026-01-01 00:00:00"}))
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        with tl_io.workdir_lock(str(workdir)):
            pass
    assert "Taking over the stale lock" in caplog.text


def test_two_runs_taking_over_one_stale_lock_do_not_both_hold_it(
        tmp_path, monkeypatch):
    # Two reruns that both judged one stale lock stale removed it in turn:
    # the second removed the lock the first had just taken, and both ran
    # in one workdir. Threads stand in for the two runs (another thread of
    # this process is another run to the lock); the second waits, after
    # judging the old lock stale, until the first holds the lock.
    import socket
    import subprocess
    import sys
    import time

    from tl_keras import io as tl_io

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    workdir = str(tmp_path / "run")
    (tmp_path / "run.lock").write_text(json.dumps({
        "pid": gone.pid, "host": socket.gethostname(), "since": "earlier"}))
    judged, first_holds = threading.Barrier(2, timeout=10), threading.Event()
    seen, original = set(), tl_io._is_stale

    def is_stale(holder, path):
        stale = original(holder, path)
        if threading.get_ident() not in seen:  # its look at the old lock
            seen.add(threading.get_ident())
            if judged.wait():  # the second of the two waits for the first
                first_holds.wait(timeout=10)
        return stale

    held, errors = [], []

    def rerun():
        try:
            with tl_io.workdir_lock(workdir):
                held.append(threading.get_ident())
                first_holds.set()
                time.sleep(0.5)
        except tl_keras.InputError as e:
            errors.append(str(e))

    monkeypatch.setattr(tl_io, "_is_stale", is_stale)
    threads = [threading.Thread(target=rerun) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(held) == 1, (held, errors)
    assert len(errors) == 1 and "another tl_keras run uses it" in errors[0]
    assert sorted(os.listdir(tmp_path)) == []  # lock and guard removed


def test_a_takeover_guard_left_by_a_killed_run_is_removed(tmp_path):
    # A run killed while it held the takeover guard would block every
    # rerun's takeover: a guard older than 10 s is removed.
    import socket
    import subprocess
    import sys
    import time

    from tl_keras import io as tl_io

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "run.lock").write_text(json.dumps({
        "pid": gone.pid, "host": socket.gethostname(), "since": "earlier"}))
    guard = tmp_path / "run.lock.takeover"
    guard.write_text("")
    os.utime(guard, (time.time() - 60,) * 2)
    with tl_io.workdir_lock(str(tmp_path / "run")):
        assert json.loads((tmp_path / "run.lock").read_text())[
            "pid"] == os.getpid()
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.slow
def test_a_hand_built_image_data_is_checked_before_anything_is_written(
        tmp_path):
    # ImageData is public; one built by hand failed inside Keras after the
    # workdir was written (unbatched, uint8, one-hot, grey, no val), or
    # hung (an infinite train) (audit, session 41). Its element specs
    # are checked first.
    import dataclasses

    import tensorflow as tf

    config = tl_keras.Config(workdir=str(tmp_path / "run"),
                             backbone="compact_cnn", weights="none",
                             image_size=16, approach="scratch", epochs=1,
                             batch_size=4, augment="none")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 16, 16, 3), np.uint8)
    good = tl_keras.from_arrays(x, np.arange(20) % 2, config, 16)
    cases = {
        "data.shuffle": dict(shuffle=None),
        "data.val": dict(val=None),
        "data.train": dict(train=good.train.unbatch()),
        "data.test": dict(test=good.val.map(
            lambda i, y: (tf.cast(i, tf.uint8), y))),
        "data.val ": dict(val=good.val.map(
            lambda i, y: (i[..., :1], y))),
        "data.val  ": dict(val=good.val.map(
            lambda i, y: (i, tf.one_hot(y, 2, dtype=tf.int32)))),
        "data.train ": dict(train=good.train.repeat()),
    }
    for field, change in cases.items():
        with pytest.raises(tl_keras.InputError,
                           match=rf"Invalid {field.strip()}\. Allowed"):
            tl_keras.train(config, data=dataclasses.replace(good, **change))
        assert not os.path.exists(config.runtime.workdir), field
    # What the spec does not know (a numpy_function's output) is not
    # refused.
    unknown = good.val.map(lambda i, y: (tf.numpy_function(
        lambda t: t, [i], tf.float32), y))
    from tl_keras.data.given import _check_pipelines
    _check_pipelines(dataclasses.replace(good, val=unknown))
    tl_keras.train(config, data=good)  # the checks pass what a run takes


def test_arrays_given_twice_are_kept_once_as_folder_copies_are(caplog):
    # x_test holding training images was scored as test images, and an
    # image under two labels trained both (audit, session 41); folders'
    # byte-for-byte copies were already left out and said.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 16, 16, 3), np.uint8)
    y = np.arange(20) % 2
    x_test = np.concatenate([x[:3], rng.integers(0, 256, (5, 16, 16, 3),
                                                 np.uint8)])
    y_test = np.concatenate([y[:3], np.arange(5) % 2])
    x_two = np.concatenate([x, x[:1]])  # x[0] again, under the other label
    y_two = np.concatenate([y, 1 - y[:1]])
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        data = tl_keras.from_arrays(x_two, y_two, None, 16, x_test=x_test,
                                    y_test=y_test)
    assert data.counts["test"] == 5  # the three training images left out
    assert data.counts["train"] + data.counts["val"] == 19  # x[0] twice
    text = caplog.text
    assert ("Leaving out 2 image(s) given again (identical pixels, the same "
            "label), kept once") in text
    assert "x_test[1] = x[1], x_test[2] = x[2]" in text
    assert ("Leaving out 3 image(s) given under two or more labels" in text
            and "x[0] (0) = x[20] (1) = x_test[0] (0)" in text)
    # The Keras idiom of validating on the test set: kept, and said.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        data = tl_keras.from_arrays(x, y, None, 16, x_val=x_test[3:],
                                    y_val=y_test[3:], x_test=x_test[3:],
                                    y_test=y_test[3:])
    assert data.counts["test"] == data.counts["val"] == 5
    assert "x_test holds x_val's images" in caplog.text
    # Blank images under both labels: the copies are named, not y.
    with pytest.raises(tl_keras.InputError, match=(
            r"Invalid x\. .*class\(es\) 0, 1 left without one")):
        tl_keras.from_arrays(np.zeros((12, 16, 16, 3), np.uint8),
                             np.arange(12) % 2, None, 16)
    with pytest.raises(tl_keras.InputError, match=(
            r"Invalid x_test\. Allowed: images that are not all copies of "
            r"training images .* Received: x_test='3 images")):
        tl_keras.from_arrays(x, y, None, 16, x_test=x[5:8], y_test=y[5:8])


@pytest.mark.slow
def test_a_finished_folder_run_given_arrays_is_refused(tiny_config):
    # data.json of a folder run has no arrays digest: given arrays under
    # the same class names, it returned the folder run's metrics (review,
    # session 41).
    config = tiny_config.replace(approach="scratch", epochs=1,
                                 augment="none")
    metrics = tl_keras.train(config)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 32, 32, 3), np.uint8)
    arrays = tl_keras.from_arrays(x, np.arange(30) % 3, config, 32,
                                  class_names=metrics["class_names"])
    with pytest.raises(tl_keras.InputError,
                       match="the run trained on a folder's images"):
        tl_keras.train(config.replace(data_dir=""), data=arrays)
