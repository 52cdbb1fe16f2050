"""Bad input, each case named in the faults issue: a clear error, or a
warning that names the files and a count in the data's record; never a
traceback, nothing in a workdir or export lost."""

import logging
import os
import shutil

import numpy as np
import pytest
from conftest import write_image_folder
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


def test_arrays_with_nan_or_inf_are_an_error():
    x = np.full((10, 8, 8, 3), 100.0, np.float32)
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(tl_keras.InputError,
                       match="Invalid x: .*NaN or Inf.*1 value"):
        tl_keras.from_arrays(x, np.arange(10) % 2, None, 32)
