"""--inputs of --mode=predict: files, folders and globs."""

import os

from conftest import write_image_folder

from tl_keras.modes import predict


def test_a_folder_a_glob_matches_is_walked_like_a_named_one(tmp_path):
    root = write_image_folder(str(tmp_path / "shots"), num_classes=2,
                              per_class=2, formats=("png",))
    named = predict.expand_inputs(root)
    assert len(named) == 4
    # shots/* matches the folders class_0 and class_1 only.
    assert predict.expand_inputs(os.path.join(root, "*")) == named
    assert predict.expand_inputs(os.path.join(str(tmp_path), "sho*")) == (
        named)


def test_a_folder_is_listed_as_training_lists_a_class_folder(tmp_path,
                                                            caplog):
    # macOS's AppleDouble twins (`._name.png`, not images) and notebook
    # checkpoints were predicted (or reported unreadable) here, while
    # training leaves hidden files and folders out: now both leave them
    # out, and the log says so.
    root = write_image_folder(str(tmp_path / "shots"), num_classes=2,
                              per_class=2, formats=("png",))
    with open(os.path.join(root, "class_0", "._000.png"), "wb") as f:
        f.write(b"\x00\x05\x16\x07" + bytes(60))
    os.makedirs(os.path.join(root, ".ipynb_checkpoints"))
    with open(os.path.join(root, ".ipynb_checkpoints", "a.png"), "wb") as f:
        f.write(b"copy")
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not an image")
    with caplog.at_level("INFO", logger="tl_keras"):
        found = predict.expand_inputs(root)
    assert [os.path.basename(p) for p in found] == ["000.png", "001.png"] * 2
    assert "Left out 1 hidden file(s)" in caplog.text
    assert "Skipping 1 hidden folder(s)" in caplog.text
    assert "Skipping 1 file(s) without an image extension" in caplog.text
    # A hidden file named on its own is still what was asked for.
    named = os.path.join(root, "class_0", "._000.png")
    assert predict.expand_inputs(named) == [named]


def test_a_double_star_glob_spans_folders(tmp_path):
    # glob without recursive=True took '**' as '*': 'photos/**/*.png'
    # scored only the files one folder down, the rest left out silently.
    from PIL import Image

    for name in ("a.png", "x/d.png", "x/y/c.png"):
        path = tmp_path / "photos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(path)
    photos = str(tmp_path / "photos")
    everything = sorted(os.path.join(photos, name)
                        for name in ("a.png", "x/d.png", "x/y/c.png"))
    assert predict.expand_inputs(os.path.join(photos, "**", "*.png")) == (
        everything)
    # a folder '**' matches is listed once, not once per folder above it
    assert predict.expand_inputs(os.path.join(photos, "**")) == everything
