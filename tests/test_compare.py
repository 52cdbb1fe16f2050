"""--mode=compare: every approach on one split, the report, the best
model (by validation accuracy) exported, and workdirs it must not use."""

import json
import os
import shutil

import pytest
from conftest import fake_probes

import tl_keras
from tl_keras.modes.compare import check_workdir, compare


@pytest.mark.slow
def test_compare_runs_every_approach_and_reports(pretrained_base,
                                                 image_folder, tmp_path,
                                                 capsys, monkeypatch):
    # The advisor sees block2 as the best layer: its pick, finetune from
    # block2, runs as a fourth row.
    fake_probes(monkeypatch, 0.5, {"block2": 0.95, "block3": 0.6})
    images = shutil.copytree(image_folder, tmp_path / "images")
    config = tl_keras.Config(
        mode="compare", data_dir=str(images),
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
    assert summary["advisor"]["feature_block"] == "block2"
    assert summary["advisor_pick"] == "auto" and results["auto"][
        "approach"] == "finetune" and results["auto"]["stage_epochs"] == [
        1, 1]
    auto = json.load(open(os.path.join(config.runtime.workdir, "auto",
                                       "metrics.json")))
    assert auto["backbone"].endswith("cut after block2")
    assert "scratch" in capsys.readouterr().out  # the table was printed
    for name in ("report.md", "results.json", "curves.png",
                 "confusion.png", "decision.json"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "results.json")) as f:
        stored = json.load(f)
    assert stored["best"] == summary["best"]
    assert sum(r["advisor_pick"] for r in stored["results"].values()) == 1
    best = stored["best"]  # chosen on validation, never on test
    assert stored["results"][best]["val_accuracy"] == max(
        r["val_accuracy"] for r in stored["results"].values())
    exported = tl_keras.load_exported(os.path.join(workdir, "export"))
    assert exported.manifest["approach"] == stored["results"][best][
        "approach"]
    report = open(os.path.join(workdir, "report.md")).read()
    assert "| approach | val accuracy | test accuracy |" in report
    assert "(advisor's pick)" in report and "![Learning curves]" in report
    assert "finetune from block2" in report
    png = open(os.path.join(workdir, "curves.png"), "rb").read(8)
    assert png == b"\x89PNG\r\n\x1a\n"
    # The same command again reads the runs back: each keeps the wall time
    # it took (not the second it takes to read it back), and the advisor's
    # decision is read back too (it was measured again, its time replaced
    # and the record moved aside on every rerun).
    decision = open(os.path.join(workdir, "decision.json")).read()
    again = compare(config)
    for name, row in again["results"].items():
        assert row["seconds"] == results[name]["seconds"], name
        assert row["test_accuracy"] == results[name]["test_accuracy"]
    assert open(os.path.join(workdir, "decision.json")).read() == decision
    assert again["advisor_seconds"] == json.loads(decision)["seconds"]
    assert not [n for n in os.listdir(workdir) if "replaced" in n]
    assert again["seconds"] >= sum(r["seconds"]
                                   for r in results.values())
    # A compare killed before writing results.json: its finished runs
    # showed 0 s; now their stages' recorded time (training only).
    os.remove(os.path.join(workdir, "results.json"))
    again = compare(config)
    for name, row in again["results"].items():
        assert 0 < row["seconds"] <= results[name]["seconds"], name
    # Other settings: refused before the advisor runs or anything is
    # written (decision.json was rewritten, then a sub-run refused).
    decision = open(os.path.join(workdir, "decision.json")).read()
    with pytest.raises(tl_keras.InputError,
                       match="its scratch run has other settings"):
        compare(config.replace(learning_rate=0.003))
    assert open(os.path.join(workdir, "decision.json")).read() == decision
    # Other images: refused too (its finished runs were read back as
    # they were, on the images they trained on).
    first = sorted((images / "class_0").iterdir())[0]
    shutil.copy(first, images / "class_0" / f"new{first.suffix}")
    with pytest.raises(tl_keras.InputError,
                       match=r"the images changed since its scratch run "
                             r"finished \(added\)"):
        compare(config)


def test_compare_refuses_a_train_run_and_foreign_files(tmp_path,
                                                      image_folder):
    config = tl_keras.Config(mode="compare", data_dir=image_folder,
                             workdir=str(tmp_path / "w"),
                             backbone="compact_cnn", weights="none",
                             image_size=32)
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")  # a train run's workdir
    (workdir / "report.md").write_text("my notes")
    with pytest.raises(tl_keras.InputError, match="holds a train run"):
        compare(config)
    (workdir / "config.json").unlink()
    with pytest.raises(tl_keras.InputError,
                       match="report.md or export/ was not written"):
        compare(config)
    assert (workdir / "report.md").read_text() == "my notes"
    (workdir / "thesis.txt").write_text("precious")
    with pytest.raises(tl_keras.InputError,
                       match=r"files compare did not write \(thesis.txt\)"):
        compare(config)
    assert sorted(os.listdir(workdir)) == ["report.md", "thesis.txt"]
    # An evaluate --output named results.json: compare wrote over it.
    for name in ("report.md", "thesis.txt"):
        (workdir / name).unlink()
    (workdir / "results.json").write_text('{"test_accuracy": 0.9}')
    with pytest.raises(tl_keras.InputError,
                       match="its results.json was not written by compare"):
        compare(config)
    assert (workdir / "results.json").read_text() == '{"test_accuracy": 0.9}'


def test_a_live_compare_locks_its_workdir(tmp_path, image_folder):
    import socket

    workdir = tmp_path / "w"
    config = tl_keras.Config(mode="compare", data_dir=image_folder,
                             workdir=str(workdir), backbone="compact_cnn",
                             weights="none", image_size=32)
    # A live holder (this test's parent process, as another compare would
    # be): refused before the base is built or the advisor runs.
    lock = str(workdir) + ".lock"
    with open(lock, "w") as f:
        json.dump({"pid": os.getppid(), "host": socket.gethostname(),
                   "since": "earlier"}, f)
    for each in (config, config.replace(overwrite=True)):
        with pytest.raises(tl_keras.InputError,
                           match=r"another tl_keras run uses it \(pid "):
            compare(each)
    assert not workdir.exists()
    assert os.path.isfile(lock)  # the holder's, left alone


def test_compare_moves_a_workdir_aside_only_once_the_inputs_are_good(
        tmp_path, image_folder):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "thesis.txt").write_text("precious")
    config = tl_keras.Config(mode="compare", data_dir=image_folder,
                             workdir=str(workdir), backbone="resnet5",
                             weights="none", image_size=32, overwrite=True)
    with pytest.raises(tl_keras.InputError, match="Unknown backbone"):
        compare(config)
    assert os.listdir(workdir) == ["thesis.txt"]  # not moved for nothing


def test_compare_keeps_its_own_moved_aside_runs(tmp_path):
    workdir = tmp_path / "w"
    for name in ("decision.json", "scratch", "scratch.replaced-20260101"):
        (workdir / name).mkdir(parents=True)
    config = tl_keras.Config(mode="compare", workdir=str(workdir))
    assert check_workdir(config) is None
    (workdir / "data").mkdir()  # the demo keeps its images there
    assert check_workdir(config, also_in_workdir=("data",)) is None
    with pytest.raises(tl_keras.InputError, match=r"did not write \(data\)"):
        check_workdir(config)
    # --overwrite: the problem is returned, to move the workdir aside
    # once the base and data are known to be good.
    assert "data" in check_workdir(config.replace(overwrite=True))


def test_a_torn_run_config_is_named_and_overwrite_moves_it(tmp_path):
    # A sub-run's config.json cut short: named without --overwrite, and
    # --overwrite moves the compare aside (it raised even then, so the
    # error's own advice did not work; a train run's torn config.json
    # already went this way, through the same check).
    workdir = tmp_path / "w"
    (workdir / "scratch").mkdir(parents=True)
    (workdir / "scratch" / "config.json").write_text('{"mode": "tr')
    config = tl_keras.Config(mode="compare", workdir=str(workdir))
    with pytest.raises(tl_keras.InputError,
                       match=r"Invalid record .*scratch.config\.json: not "
                             r"the JSON object tl_keras wrote"):
        check_workdir(config)
    problem = check_workdir(config.replace(overwrite=True))
    assert "its scratch run has other settings (its config.json is " \
        "unreadable" in problem


def test_compare_rows_validate_before_any_work(tmp_path, image_folder):
    from tl_keras.modes.compare import _fixed_runs

    # The fine-tune stage's layer-wise decay is left out of the scratch
    # and transfer rows (their validation would refuse it) ...
    config = tl_keras.Config(mode="compare", data_dir=image_folder,
                             workdir=str(tmp_path / "w"), lr_decay=0.5)
    for changes in _fixed_runs(4).values():
        config.replace(mode="train", **changes).validate()
    # ... and a row that cannot run fails before the advisor measures.
    bad = config.replace(approach="transfer", finetune_epochs=2,
                         warmup_epochs=2, lr_decay=1.0, epochs=5)
    with pytest.raises(tl_keras.InputError, match="warmup_epochs"):
        compare(bad)
    assert not os.path.exists(tmp_path / "w")


def test_copying_the_export_deletes_what_a_killed_compare_left(tmp_path):
    # A compare killed while copying the best run's export leaves its
    # hidden copy (or replace_dir's old export): the next copy, under the
    # workdir's lock, deletes them; other hidden entries stay.
    from tl_keras.modes.compare import _copy_export

    source = tmp_path / "w" / "finetune" / "export"
    source.mkdir(parents=True)
    (source / "saved_model.pb").write_bytes(b"new")
    for name in (".export-copy-abc", ".export.old-def", ".keep"):
        (tmp_path / "w" / name).mkdir()
        (tmp_path / "w" / name / "saved_model.pb").write_bytes(b"old")
    _copy_export(str(source), str(tmp_path / "w" / "export"))
    assert sorted(os.listdir(tmp_path / "w")) == [
        ".keep", "export", "finetune"]
    assert (tmp_path / "w" / "export" / "saved_model.pb").read_bytes() == (
        b"new")


def test_a_train_run_deletes_the_export_folders_a_kill_left(tmp_path):
    # The half-written export (.export-*) and replace_dir's old export
    # (.export.old-*, left by a kill between the swap and the delete).
    from tl_keras.export.saved_model import remove_stale_exports

    for name in (".export-abc", ".export.old-def", ".keep", "export"):
        (tmp_path / name).mkdir()
    remove_stale_exports(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".keep", "export"]


def test_one_process_modes_refuse_a_multi_worker_cluster(
        tmp_path, image_folder, monkeypatch):
    # Every worker measured, trained and wrote the same report and export
    # (and a compare worker then crashed): refused, naming the field.
    from tl_keras.modes.demo import run_demo

    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["localhost:1", "localhost:2"]},
        "task": {"type": "worker", "index": 0}}))
    config = tl_keras.Config(data_dir=image_folder,
                             workdir=str(tmp_path / "w"),
                             backbones="compact_cnn")
    for mode, entry in (("compare", compare), ("demo", run_demo),
                        ("advise", tl_keras.advise),
                        ("rank", tl_keras.rank)):
        with pytest.raises(tl_keras.InputError,
                           match=f"Invalid distribution: --mode={mode} runs "
                                 f"in one process.*worker-0 of 2 workers"):
            entry(config.replace(mode=mode))
    assert not os.listdir(tmp_path)


def test_macro_f1_leaves_out_classes_without_test_images():
    # A class the test split has no image of counted as F1 0: 0.314 for
    # per-class F1s of 0.941, 0 (no images) and 0 (no images).
    from tl_keras.modes.compare import _row

    stage = {"epochs": 2, "seconds_this_process": 1.0, "trainable_params": 9,
             "history": {"val_accuracy": [0.5, 0.6]},
             "best_val_accuracy": 0.6, "best_val_loss": 1.0}
    metrics = {"approach": "scratch", "stages": {"scratch": stage},
               "num_train": 10, "num_test": 17, "test_split": "test",
               "test_accuracy": 0.9, "confusion_matrix": [],
               "class_names": ["big", "mid", "small"],
               "per_class": {
                   "big": {"f1-score": 0.941, "support": 17},
                   "mid": {"f1-score": 0.5, "support": 3},
                   "small": {"f1-score": 0.0, "support": 0}}}
    assert _row(metrics, 5.0)["macro_f1"] == pytest.approx(0.7205)


def test_images_per_second_counts_the_epochs_its_seconds_cover():
    # After a mid-stage resume a stage's seconds_this_process covers only
    # the epochs that process ran; every epoch's images were counted over
    # them (4 epochs' images over 1 epoch's seconds: 4x too fast).
    from tl_keras.modes.compare import _row

    stage = {"epochs": 4, "epochs_this_process": 1,
             "seconds_this_process": 2.0, "trainable_params": 9,
             "history": {"val_accuracy": [0.5]},
             "best_val_accuracy": 0.5, "best_val_loss": 1.0}
    metrics = {"approach": "scratch", "stages": {"scratch": stage},
               "num_train": 10, "num_test": 1, "test_split": "test",
               "test_accuracy": 1.0, "confusion_matrix": [],
               "class_names": ["a"],
               "per_class": {"a": {"f1-score": 1.0, "support": 1}}}
    assert _row(metrics, 9.0)["images_per_second"] == 5.0
    # Killed after its last epoch's backup: the rerun trained no epoch,
    # and its seconds (the restore) are no speed (it read 0.0).
    stage["epochs_this_process"] = 0
    assert _row(metrics, 9.0)["images_per_second"] is None
    stage["epochs_this_process"] = 1
    del stage["epochs_this_process"]  # a record from before the field
    assert _row(metrics, 9.0)["images_per_second"] == 20.0


@pytest.mark.parametrize("names", [["accuracy", "cat", "dog"],
                                   ["cat", "dog", "macro avg"],
                                   ["weighted avg", "cat", "dog"]])
def test_classes_named_like_report_rows_get_their_own_numbers(names):
    # sklearn's classification_report dict writes 'accuracy', 'macro avg'
    # and 'weighted avg' over classes of those names: per_class held a
    # float (compare then failed on it after every run had trained) or
    # the average of all classes.
    import numpy as np

    from tl_keras.training.metrics import classification_metrics
    y_true = np.array([0, 0, 1, 1, 2, 2])
    logits = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    per_class = classification_metrics(y_true, logits, names)["per_class"]
    expected = [(0.5, 0.5), (2 / 3, 1.0), (1.0, 0.5)]  # precision, recall
    for name, (precision, recall) in zip(names, expected, strict=True):
        got = per_class[name]
        assert got["precision"] == pytest.approx(precision)
        assert got["recall"] == pytest.approx(recall)
        assert got["f1-score"] == pytest.approx(
            2 * precision * recall / (precision + recall))
        assert got["support"] == 2


def test_the_table_says_when_there_was_no_test_split():
    # With --test_split=0 and no test/ folder each run is scored on the
    # validation images that chose the best: the report called those
    # "unbiased estimates, none of them was used to choose".
    from tl_keras.modes.compare_report import format_table
    row = {"advisor_pick": True, "best": True, "val_accuracy": 0.9,
           "test_accuracy": 0.9, "macro_f1": 0.9, "seconds": 1.0,
           "trained_params": 10, "images_per_second": 5.0}
    summary = {"num_train": 30, "num_test": 10, "test_split": "val",
               "epoch_budget": 3, "results": {"scratch": row},
               "advisor": {"approach": "scratch", "situation": "small"},
               "advisor_seconds": 0.5}
    assert "no test split: the test accuracy and macro-F1 are the " \
           "validation images' that chose the best" in format_table(summary)
    assert "no test split" not in format_table({**summary,
                                                "test_split": "test"})


def test_classes_without_test_images_are_said_and_balanced_accuracy_kept():
    # 200 : 3 images carved no test image of the small class; a model
    # answering the majority always scored test accuracy and macro-F1
    # 1.000, and nothing said the class was never tested (audit, session
    # 41). metrics.json names such classes and keeps the mean recall.
    import numpy as np

    from tl_keras.modes.compare_report import format_table
    from tl_keras.training.metrics import classification_metrics
    names = ["big", "small", "mid"]
    y_true = np.array([0, 0, 0, 0, 2])
    metrics = classification_metrics(y_true, np.eye(3)[[0, 0, 0, 0, 0]],
                                     names)
    assert metrics["test_accuracy"] == pytest.approx(0.8)
    assert metrics["balanced_accuracy"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert metrics["classes_not_tested"] == ["small"]
    row = {"advisor_pick": True, "best": True, "val_accuracy": 0.9,
           "test_accuracy": 0.8, "macro_f1": 0.44, "seconds": 1.0,
           "trained_params": 10, "images_per_second": 5.0,
           "classes_not_tested": ["small"]}
    summary = {"num_train": 30, "num_test": 5, "test_split": "test",
               "epoch_budget": 3, "results": {"scratch": row},
               "advisor": {"approach": "scratch", "situation": "small"},
               "advisor_seconds": 0.5}
    assert ("no test image of 1 class(es) (small): the accuracies and "
            "macro-F1 say nothing of them") in format_table(summary)
    row["classes_not_tested"] = []
    assert "say nothing" not in format_table(summary)
