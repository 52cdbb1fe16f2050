"""--mode=compare: every approach on one split, the report, the best
model exported (selected by test accuracy, as today)."""

import json
import os

import tl_keras
from tl_keras.modes.compare import compare


def test_compare_runs_every_approach_and_reports(pretrained_base,
                                                 image_folder, tmp_path,
                                                 capsys):
    config = tl_keras.Config(
        mode="compare", data_dir=image_folder,
        workdir=str(tmp_path / "cmp"), backbone=pretrained_base,
        weights="none", epochs=1, finetune_epochs=1, batch_size=8,
        augment="none", validation_split=0.2, test_split=0.2)
    summary = compare(config)
    workdir = config.runtime.workdir
    results = summary["results"]
    assert {"scratch", "transfer", "finetune"} <= set(results)
    # The same budget for each: scratch and transfer get both stages'.
    assert results["scratch"]["stage_epochs"] == [2]
    assert results["transfer"]["stage_epochs"] == [2]
    assert results["finetune"]["stage_epochs"] == [1, 1]
    assert "scratch" in capsys.readouterr().out  # the table was printed
    for name in ("report.md", "results.json", "curves.png",
                 "confusion.png", "decision.json"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "results.json")) as f:
        stored = json.load(f)
    assert stored["best"] == summary["best"]
    assert sum(r["advisor_pick"] for r in stored["results"].values()) == 1
    best = stored["best"]
    assert stored["results"][best]["test_accuracy"] == max(
        r["test_accuracy"] for r in stored["results"].values())
    exported = tl_keras.load_exported(os.path.join(workdir, "export"))
    assert exported.manifest["approach"] == stored["results"][best][
        "approach"]
    report = open(os.path.join(workdir, "report.md")).read()
    assert "| approach | test accuracy |" in report
    assert "(advisor's pick)" in report and "![Learning curves]" in report
    png = open(os.path.join(workdir, "curves.png"), "rb").read(8)
    assert png == b"\x89PNG\r\n\x1a\n"
