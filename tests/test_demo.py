"""The offline demo: scikit-learn's digits as image folders, a pretrained
base, and three approaches on the target task."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import REPO, run_cli
from PIL import Image

import tl_keras
from tl_keras import io
from tl_keras.modes import demo


def test_digits_become_image_folders(tmp_path):
    source, target = demo.materialize_digits(str(tmp_path), 3, seed=0)
    assert sorted(os.listdir(source)) == [
        f"{d}_rot{a:03d}" for d in range(5) for a in (0, 90, 180, 270)]
    assert sorted(os.listdir(target)) == ["test", "train", "val"]
    for split, n in (("train", 3), ("val", 3)):
        for digit in "56789":
            assert len(os.listdir(os.path.join(target, split, digit))) == n
    test_files = sum(len(os.listdir(os.path.join(target, "test", d)))
                     for d in "56789")
    upright = sum(len(os.listdir(os.path.join(source, f"{d}_rot000")))
                  for d in "01234")
    assert test_files == 1797 - upright - 30
    # Each source image appears in all four orientations.
    assert sorted(os.listdir(os.path.join(source, "3_rot000"))) == sorted(
        os.listdir(os.path.join(source, "3_rot270")))
    folder = os.path.join(source, "0_rot000")
    path = os.path.join(folder, sorted(os.listdir(folder))[0])
    image = np.asarray(Image.open(path))
    assert image.shape == (32, 32) and image.dtype == np.uint8
    # Deterministic: the same seed writes the same pixels.
    again, _ = demo.materialize_digits(str(tmp_path / "again"), 3, seed=0)
    np.testing.assert_array_equal(
        image, np.asarray(Image.open(path.replace(source, again))))


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """One drawing (3 labels per class, seed 0), copied by each test."""
    root = str(tmp_path_factory.mktemp("drawn") / "data")
    demo.materialize_digits(root, 3, seed=0)
    return root


def _files(root):
    """{relative path: mtime} of every file under `root`."""
    return {os.path.relpath(os.path.join(d, f), root):
            os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, names in os.walk(root) for f in names}


def _demo_config(workdir, **changes):
    return tl_keras.Config(
        mode="demo", workdir=str(workdir), epochs=1, finetune_epochs=1,
        batch_size=64, demo_labels_per_class=3, demo_pretrain_epochs=1,
        augment="none", seed=0).replace(**changes)


def test_a_drawing_is_never_mixed_with_another(drawn, tmp_path):
    before = _files(drawn)
    # Other settings (a rerun with another --seed used to redraw every
    # image into the same folders, and a larger labels-per-class left
    # stale files behind, some in two splits).
    for labels, seed in ((3, 7), (5, 0)):
        with pytest.raises(tl_keras.InputError, match=(
                f"demo_labels_per_class=3, seed=0, not "
                f"demo_labels_per_class={labels}, seed={seed}")):
            demo.materialize_digits(drawn, labels, seed=seed)
    # A folder the demo did not draw is not written into.
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(tl_keras.InputError, match="not drawn by the demo"):
        demo.materialize_digits(str(foreign), 3, seed=0)
    assert os.listdir(foreign) == ["notes.txt"]
    assert _files(drawn) == before  # nothing rewritten
    # The same settings read the drawing back.
    source, _ = demo.materialize_digits(drawn, 3, seed=0)
    assert source == os.path.join(drawn, "source") and _files(drawn) == before


def test_a_killed_drawing_leaves_no_half_folder(drawn, tmp_path,
                                                monkeypatch):
    root = str(tmp_path / "data")
    scene, calls = demo._scene, []

    def dies(pixels, rng):
        calls.append(1)
        if len(calls) == 50:
            raise KeyboardInterrupt
        return scene(pixels, rng)

    monkeypatch.setattr(demo, "_scene", dies)
    with pytest.raises(KeyboardInterrupt):
        demo.materialize_digits(root, 3, seed=0)
    assert not os.path.exists(root)  # only the hidden, temporary folder
    monkeypatch.setattr(demo, "_scene", scene)
    demo.materialize_digits(root, 3, seed=0)  # drawn again, whole
    assert sorted(os.listdir(tmp_path)) == ["data"]
    assert set(_files(root)) == set(_files(drawn))


@pytest.mark.parametrize("where", ["data", "pretrain", "compare"])
def test_the_demo_refuses_another_demo_before_any_work(drawn, tmp_path,
                                                      where):
    workdir = tmp_path / "demo"
    config = _demo_config(workdir)
    shutil.copytree(drawn, workdir / "data")
    if where == "data":  # drawn with seed 0; this run asks for seed 7
        config = config.replace(seed=7)
        expect = "its data/ folder: its images were drawn with"
    elif where == "pretrain":  # an earlier pretraining of 2 epochs
        (workdir / "pretrain").mkdir()
        io.write_json(str(workdir / "pretrain" / "config.json"),
                      demo._pretrain_config(config).replace(
                          epochs=2).to_dict())
        expect = "its pretraining run has other settings"
    else:  # an earlier compare's scratch run with another learning rate
        (workdir / "scratch").mkdir()
        io.write_json(str(workdir / "scratch" / "config.json"),
                      demo._compare_config(config).replace(
                          mode="train", workdir=str(workdir / "scratch"),
                          approach="scratch", learning_rate=0.5).to_dict())
        expect = "its scratch run has other settings"
    before = _files(workdir)
    with pytest.raises(tl_keras.InputError, match=expect):
        demo.run_demo(config)
    assert _files(workdir) == before  # nothing drawn, trained or moved
    # --overwrite moves the whole workdir aside (never deleting it); the
    # demo then starts in an empty one (checked here without training).
    demo._claim_workdir(config.replace(overwrite=True))
    assert not workdir.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(
        "demo.replaced-")]
    assert len(aside) == 1 and _files(aside[0]) == before


@pytest.mark.slow  # 50 s: pretraining, then four runs
def test_short_demo_runs_all_three_approaches(tmp_path, capsys):
    config = tl_keras.Config(mode="demo", workdir=str(tmp_path / "demo"),
                             backbone="compact_cnn", weights="none",
                             image_size=32, epochs=1, finetune_epochs=1,
                             batch_size=64, demo_labels_per_class=2,
                             demo_pretrain_epochs=1,
                             augment="none")
    summary = demo.run_demo(config)
    # The three approaches, plus the advisor's pick as 'auto' when it
    # trains from an earlier block.
    rows = set(summary["results"])
    assert {"scratch", "transfer", "finetune"} <= rows
    assert rows <= {"scratch", "transfer", "finetune", "auto"}
    picks = [name for name, r in summary["results"].items()
             if r["advisor_pick"]]
    assert len(picks) == 1 and ("auto" in rows) == (picks == ["auto"])
    with open(os.path.join(config.runtime.workdir, "demo.json")) as f:
        assert json.load(f)["results"] == summary["results"]
    with open(os.path.join(config.runtime.workdir, "finetune",
                           "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["num_train"] == 10 and metrics["approach"] == "finetune"
    assert metrics["backbone"].endswith(os.path.join("pretrain",
                                                     "model.keras"))
    assert "scratch" in capsys.readouterr().out
    # The comparison's own outputs are tested in tests/test_compare.py.
    assert os.path.isfile(os.path.join(config.runtime.workdir, "report.md"))
    # The same demo again resumes: every run is read back, none refused.
    again = demo.run_demo(config)
    assert {k: r["test_accuracy"] for k, r in again["results"].items()} == {
        k: r["test_accuracy"] for k, r in summary["results"].items()}


@pytest.mark.slow
def test_demo_config_end_to_end(tmp_path):
    """configs/demo.cfg as the README runs it (a few minutes on 2 CPUs)."""
    workdir = str(tmp_path / "demo")
    result = run_cli("--flagfile=configs/demo.cfg", f"--workdir={workdir}",
                     timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "approach" in result.stdout and "test acc" in result.stdout
    assert "Report with plots" in result.stdout
    with open(os.path.join(workdir, "demo.json")) as f:
        results = json.load(f)["results"]
    # 5 classes (chance 0.2), 25 labels. Measured in five runs: scratch
    # 0.60-0.73, transfer and finetune 0.69-0.80; one run of this test
    # failed a bound of 0.5 for all three (which one was not kept).
    # Scratch, the noisiest (its validation curve swings 0.2-0.6), gets
    # twice chance; the pretrained approaches keep 0.5.
    assert results["scratch"]["test_accuracy"] > 0.4, results
    for name in ("transfer", "finetune"):
        assert results[name]["test_accuracy"] > 0.5, results
    assert os.path.isdir(os.path.join(REPO, "configs"))
