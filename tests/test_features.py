"""Cached features: the head trained on features computed once equals the
head trained through the frozen base every epoch, on the same data, seed
and order."""

import os
import shutil

import keras
import numpy as np
import pytest

import tl_keras
from tl_keras import data as data_lib
from tl_keras import inference, io, models
from tl_keras.models.classifier import standardize_head
from tl_keras.training import feature_cache


def head_run(base, image_folder, workdir, cache, **changes):
    config = tl_keras.Config(
        data_dir=image_folder, workdir=workdir, backbone=base,
        weights="none", approach="transfer", epochs=3, batch_size=8,
        learning_rate=0.01, feature_cache=cache,
        **{"augment": "none", "dropout": 0.0, **changes})
    metrics = tl_keras.train(config)
    model = keras.saving.load_model(os.path.join(workdir, "model.keras"))
    return metrics, model


def assert_same_training(run_a, run_b, layers, rtol, atol):
    """Two (metrics, model) runs: the head stage's losses, and the named
    layers' weights, equal to tolerance."""
    np.testing.assert_allclose(run_a[0]["stages"]["head"]["history"]["loss"],
                               run_b[0]["stages"]["head"]["history"]["loss"],
                               rtol=rtol)
    for layer in layers:
        for a, b in zip(run_a[1].get_layer(layer).weights,
                        run_b[1].get_layer(layer).weights, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=atol)


def test_cached_head_equals_full_loop(pretrained_base, image_folder,
                                      tmp_path):
    cached, cached_model = head_run(pretrained_base, image_folder,
                                    str(tmp_path / "cached"), True)
    full, full_model = head_run(pretrained_base, image_folder,
                                str(tmp_path / "full"), False)
    assert cached["stages"]["head"]["feature_cache"] is True
    assert full["stages"]["head"]["feature_cache"] is False
    assert_same_training((cached, cached_model), (full, full_model),
                         ["logits"], rtol=1e-4, atol=1e-5)
    # The result is the whole classifier, base unchanged.
    for a, b in zip(cached_model.get_layer("backbone").weights,
                    full_model.get_layer("backbone").weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert cached["test_accuracy"] == full["test_accuracy"]


@pytest.mark.parametrize("test_split, changes", [
    (0.2, {}),
    (0.0, {}),
    # Dropout must be off and the test features of the images as they
    # are (not an augmented view's) for the numbers to match.
    (0.2, dict(dropout=0.3, augment="flip,rotation",
               feature_cache_views=2)),
])
def test_transfer_evaluates_on_cached_features(pretrained_base,
                                               image_folder, tmp_path,
                                               monkeypatch, test_split,
                                               changes):
    """A transfer run's base is frozen to the end, so the features of
    the split it is evaluated on (the test split, or without one the
    validation set) are cached with the others and only the head runs on
    them: the same metrics as the whole classifier, without a second pass
    of the base."""
    from types import SimpleNamespace

    from tl_keras.training import metrics as metrics_lib

    def no_forward(model):
        raise AssertionError("the evaluation ran the whole classifier")

    # Only the evaluation's pass is refused (the export traces its own).
    monkeypatch.setattr(metrics_lib, "inference", SimpleNamespace(
        forward=no_forward, run_batched=inference.run_batched))
    run, model = head_run(pretrained_base, image_folder,
                          str(tmp_path / "run"), True, test_split=test_split,
                          **changes)
    split = "test" if test_split else "val"
    plan = run["stages"]["head"]["feature_cache_plan"]
    assert plan["evaluation"] == split
    assert plan["views"] == (2 if "augment" in changes else 1)
    assert run["test_split"] == split
    assert run["evaluated_on"] == "cached base features"
    monkeypatch.undo()
    config = tl_keras.Config(data_dir=image_folder, workdir="unused",
                             test_split=test_split, batch_size=8)
    whole = metrics_lib.evaluate(model, data_lib.make_datasets(config, 32))
    assert whole["evaluated_on"] == "the whole classifier"
    assert whole["test_split"] == split
    assert run["test_accuracy"] == whole["test_accuracy"]
    assert run["confusion_matrix"] == whole["confusion_matrix"]
    np.testing.assert_allclose(run["test_loss"], whole["test_loss"],
                               rtol=1e-5)


@pytest.mark.parametrize("approach, budget_rows, test, split, rows", [
    ("transfer", 1000, 10, "test", 100),  # the test features held too
    ("transfer", 1000, None, "val", 90),  # no test split: the val features
    ("transfer", 95, 10, None, 90),  # train + val fit, with test they do not
    ("transfer", 89, 10, None, 90),  # spilled: no test features
    ("finetune", 1000, 10, None, 90),  # the base changes after the head
])
def test_evaluation_split_of_the_plan(approach, budget_rows, test, split,
                                      rows):
    from types import SimpleNamespace

    from tl_keras.training.cache_plan import cache_plan

    channels = 2**18  # 1 MiB a row: the budget in rows of train + val (90)
    data = SimpleNamespace(test=None if test is None else (),
                           counts={"train": 80, "val": 10, "test": test},
                           train_ordered=(), shuffle=())
    model = SimpleNamespace(get_layer=lambda name: SimpleNamespace(
        output=SimpleNamespace(shape=(None, channels))))
    training = SimpleNamespace(approach=approach, feature_cache=True)
    data_config = SimpleNamespace(augmentations=lambda: (),
                                  cache_budget_mb=budget_rows)
    plan, why = cache_plan(training, data_config, "head", data, model)
    assert why is None
    assert plan["evaluation"] == split
    assert plan["spill"] == (budget_rows < 90)
    assert plan["mib"] == rows  # what the run holds, test features too
    # A multi-worker run's other workers never evaluate: no test features.
    worker, _ = cache_plan(training, data_config, "head", data, model,
                           evaluates=False)
    assert worker["evaluation"] is None
    assert worker["mib"] == min(rows, 90)
    assert {**worker, "evaluation": split, "mib": rows} == plan


@pytest.mark.slow
def test_finetune_evaluates_the_whole_classifier(pretrained_base,
                                                 image_folder, tmp_path):
    # A fine-tune changes the base after the head stage, so its cached
    # features are stale for the final model: none are kept for it.
    config = tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone=pretrained_base, weights="none", approach="finetune",
        epochs=1, finetune_epochs=1, batch_size=8, augment="none")
    metrics = tl_keras.train(config)
    plan = metrics["stages"]["head"]["feature_cache_plan"]
    assert plan["views"] == 1 and plan["evaluation"] is None


@pytest.mark.slow
def test_full_loop_with_augmentation_and_no_views(pretrained_base,
                                                  image_folder, tmp_path):
    config = tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone=pretrained_base, weights="none", approach="transfer",
        epochs=1, batch_size=8, augment="flip", feature_cache_views=0)
    metrics = tl_keras.train(config)
    assert metrics["stages"]["head"]["feature_cache"] is False
    # metrics.json says why the head went through the base every epoch.
    assert metrics["stages"]["head"]["full_loop_reason"] == (
        "augmentation is on and --feature_cache_views=0")


@pytest.mark.slow
def test_spilled_features_equal_in_memory(pretrained_base, image_folder,
                                          tmp_path):
    """Beyond the budget the features go to a file; training on them is
    the same as training on features in memory (and on the full loop, by
    the test above)."""
    in_memory, model_a = head_run(pretrained_base, image_folder,
                                  str(tmp_path / "memory"), True)
    spilled, model_b = head_run(pretrained_base, image_folder,
                                str(tmp_path / "spill"), True,
                                cache_budget_mb=0)
    plan = spilled["stages"]["head"]["feature_cache_plan"]
    assert plan["spill"] and plan["views"] == 1
    assert not in_memory["stages"]["head"]["feature_cache_plan"]["spill"]
    # A spilled cache keeps no test features: the evaluation runs the
    # whole classifier, and gives the same numbers.
    assert plan["evaluation"] is None
    assert spilled["test_accuracy"] == in_memory["test_accuracy"]
    assert_same_training((spilled, model_b), (in_memory, model_a),
                         ["logits"], rtol=1e-6, atol=1e-6)
    # The file is removed once the head stage is done.
    assert not os.path.exists(str(tmp_path / "spill" / "features"))


@pytest.mark.slow
def test_augmented_views(pretrained_base, image_folder, tmp_path):
    config = tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone=pretrained_base, weights="none", approach="transfer",
        epochs=3, batch_size=8, augment="flip,rotation",
        feature_cache_views=2)
    data = data_lib.make_datasets(config, 32)
    classifier = models.build_classifier(
        models.build_backbone(pretrained_base, "none"), 3, 0.0)
    x, y, val_x, val_y, test = feature_cache._features_in_memory(
        classifier, data, config.data, 2)
    assert test is None  # only asked for by a transfer run's plan
    assert x.shape == (2, data.counts["train"], 128)
    assert len(y) == data.counts["train"] and len(val_y) == len(val_x)
    assert np.abs(x[0] - x[1]).max() > 1e-3  # the views differ
    # The first view is the images as they are (the validation set's
    # extractor), the second an augmented draw.
    clean, clean_y = feature_cache.extract_features(
        feature_cache.feature_extractor(classifier), data.train_ordered,
        data.counts["train"], "training")
    np.testing.assert_allclose(x[0], clean, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, clean_y)
    again, *_ = feature_cache._features_in_memory(
        classifier, data, config.data, 2)
    np.testing.assert_array_equal(x, again)  # and are reproducible
    # whatever batch the forward pass takes (4 per usable CPU core): the
    # views were augmented inside it, and one core gave other views than
    # two (0.12 apart on features of mean size 0.24; audit, session 41).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "inference_batch_size", lambda: 4)
        one_core, *_ = feature_cache._features_in_memory(
            classifier, data, config.data, 2)
    np.testing.assert_allclose(one_core, x, rtol=1e-5, atol=1e-5)
    metrics = tl_keras.train(config)
    assert metrics["stages"]["head"]["feature_cache_plan"]["views"] == 2
    assert np.all(np.isfinite(metrics["stages"]["head"]["history"]["loss"]))
    # The head's feature statistics are the full loop's (of the images as
    # they are, which validation sees), not an augmented view's: taken
    # from one they left the clean validation features off centre (about
    # 5 points on HED-VGG16, bench/RESULTS.md).
    loop = tl_keras.train(config.replace(workdir=str(tmp_path / "loop"),
                                         feature_cache_views=0, epochs=1))
    assert loop["stages"]["head"]["feature_cache_plan"] is None
    views_norm, loop_norm = (
        keras.models.load_model(str(tmp_path / run / "model.keras"))
        .get_layer("feature_norm").get_weights()
        for run in ("run", "loop"))
    for a, b in zip(views_norm, loop_norm, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    augmented = models.build_classifier(
        models.build_backbone(pretrained_base, "none"), 3, 0.0)
    standardize_head(augmented, x[1])
    assert not np.allclose(augmented.get_layer("feature_norm").get_weights()[
        0], views_norm[0], atol=1e-4)  # what the augmented view would set


@pytest.mark.slow
def test_spilled_views_equal_in_memory_and_older_ones_are_refused(
        pretrained_base, image_folder, tmp_path):
    # Augmented views spilled to a file train the head as in memory, the
    # statistics from the memory-mapped first view included.
    views = dict(augment="flip", feature_cache_views=2)
    in_memory, model_a = head_run(pretrained_base, image_folder,
                                  str(tmp_path / "memory"), True, **views)
    spilled, model_b = head_run(pretrained_base, image_folder,
                                str(tmp_path / "spill"), True,
                                cache_budget_mb=0, **views)
    assert spilled["stages"]["head"]["feature_cache_plan"]["spill"]
    assert_same_training((spilled, model_b), (in_memory, model_a),
                         ["feature_norm", "logits"], rtol=1e-5, atol=1e-6)
    # A cache spilled before the first view was of the images as they
    # are (its fingerprint has no first_view) is refused, not reused.
    config = tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "old"),
        backbone=pretrained_base, weights="none", approach="transfer",
        batch_size=8, **views)
    data = data_lib.make_datasets(config, 32)
    classifier = models.build_classifier(
        models.build_backbone(pretrained_base, "none"), 3, 0.0)
    feature_cache._spilled_features(classifier, data, config.data, 2,
                                    config.runtime.workdir)
    meta = os.path.join(config.runtime.workdir, "features", "meta.json")
    older = io.read_json(meta)
    del older["fingerprint"]["first_view"]
    io.write_json(meta, older)
    with pytest.raises(tl_keras.InputError,
                       match="differs in: first_view.*first_view = absent"):
        feature_cache._spilled_features(classifier, data, config.data, 2,
                                        config.runtime.workdir)


class Crash(Exception):
    pass


def spilled_run_crashing_after_extraction(base, data_dir, workdir,
                                          monkeypatch):
    """Starts a transfer run whose features spill to the workdir and
    crashes right after they were written; returns its config."""
    config = tl_keras.Config(
        data_dir=data_dir, workdir=workdir, backbone=base, weights="none",
        approach="transfer", epochs=1, batch_size=8, augment="none",
        cache_budget_mb=0)

    def crash(model):
        raise Crash()

    with monkeypatch.context() as m:
        m.setattr(feature_cache, "build_head_model", crash)
        with pytest.raises(Crash):
            tl_keras.train(config)
    return config


@pytest.mark.slow
def test_stale_spilled_features_are_refused(pretrained_base, image_folder,
                                            tmp_path, monkeypatch):
    folder = str(tmp_path / "images")
    shutil.copytree(image_folder, folder)
    config = spilled_run_crashing_after_extraction(
        pretrained_base, folder, str(tmp_path / "run"), monkeypatch)
    cache = os.path.join(config.runtime.workdir, "features")
    assert os.path.isfile(os.path.join(cache, "meta.json"))
    # The images changed before the resume: the cache is stale.
    image = os.path.join(folder, "class_0", os.listdir(
        os.path.join(folder, "class_0"))[0])
    with open(image, "ab") as f:
        f.write(b"\0")
    os.utime(image, ns=(1, 1))
    # The resume's data check sees it first ...
    with pytest.raises(tl_keras.InputError, match="1 modified"):
        tl_keras.train(config)
    # ... and without it (a run from tl_keras 0.1 has no data.json, nor
    # the run.json that came later) the cache's own fingerprint does.
    os.remove(os.path.join(config.runtime.workdir, "data.json"))
    os.remove(os.path.join(config.runtime.workdir, "run.json"))
    with pytest.raises(tl_keras.InputError, match="Invalid feature cache"
                       ".*differs in: images"):
        tl_keras.train(config)
    assert os.path.isfile(os.path.join(cache, "meta.json"))  # not deleted
    # Deleting it, as the message says, lets the run go on.
    shutil.rmtree(cache)
    metrics = tl_keras.train(config)
    assert metrics["stages"]["head"]["feature_cache_plan"]["spill"]


def test_matching_spilled_features_are_reused(pretrained_base,
                                              image_folder, tmp_path,
                                              monkeypatch, caplog):
    config = spilled_run_crashing_after_extraction(
        pretrained_base, image_folder, str(tmp_path / "run"), monkeypatch)
    calls = []
    original = feature_cache.extract_features
    monkeypatch.setattr(feature_cache, "extract_features",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    with caplog.at_level("INFO", logger="tl_keras"):
        tl_keras.train(config)
    assert "Reusing the cached features" in caplog.text
    assert not calls  # nothing was extracted again


@pytest.mark.parametrize("seconds_per_call, fastest", [
    (lambda size: 0.02 + 0.001 * size, 16),  # overhead per call: large
    (lambda size: 0.0005 * size ** 2, 4),  # cost grows per image: small
])
def test_the_forward_batch_is_measured_in_the_pass(monkeypatch,
                                                   seconds_per_call,
                                                   fastest):
    # On CPU a pass tries 1, 2 and 4 units of the per-core batch (here 4)
    # twice each after a tracing call, then runs the rest at the size with
    # the fewest seconds per image; every image is computed once, in order.
    # A fake forward pass that sleeps as a base of either shape would.
    import time

    import tensorflow as tf


    monkeypatch.setattr(inference, "inference_batch_size", lambda: 4)
    sizes = []

    def fn(x):
        sizes.append(int(x.shape[0]))
        time.sleep(seconds_per_call(int(x.shape[0])))
        return x[:, 0] * 2.0

    n = 150
    images = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    ds = tf.data.Dataset.from_tensor_slices(
        (images, np.arange(n))).batch(10)
    outputs, labels = inference.run_batched(fn, ds, n,
                                            progress="Extracting features")
    np.testing.assert_array_equal(outputs, images[:, 0] * 2)
    np.testing.assert_array_equal(labels, np.arange(n))
    assert sizes[:7] == [4, 4, 4, 8, 8, 16, 16]
    assert set(sizes[7:-1]) == {fastest}  # the last batch: what is left
    assert sum(sizes) == n
    # An augmenting pass draws per call: it keeps the fixed batch, so the
    # same seed gives the same views.
    sizes.clear()
    outputs, _ = inference.run_batched(fn, ds, n, measure=False)
    np.testing.assert_array_equal(outputs, images[:, 0] * 2)
    assert set(sizes[:-1]) == {4} and sum(sizes) == n


def test_extraction_shows_plain_progress_lines_without_a_terminal(
        monkeypatch, capsys, caplog):
    # Keras's progress bar redraws with carriage returns, backspaces and
    # colour codes whenever Python runs on Linux: a run writing to a log
    # file filled it with them. Without a terminal an extraction logs a
    # plain line at each quarter of its images (or after PROGRESS_SECONDS
    # without one); a terminal keeps the bar.
    import logging
    import sys

    import tensorflow as tf

    monkeypatch.setattr(inference, "inference_batch_size", lambda: 4)
    n = 100
    ds = tf.data.Dataset.from_tensor_slices(
        (np.ones((n, 3), np.float32), np.arange(n))).batch(10)

    def extract():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tl_keras"):
            feature_cache.extract_features(lambda x: x * 2.0, ds, n,
                                           "training")
        shown = capsys.readouterr()
        return shown.out + shown.err, [
            r.getMessage() for r in caplog.records
            if r.getMessage().endswith("/ 100 images")]

    assert not sys.stdout.isatty()
    printed, lines = extract()
    assert not set(printed) & set("\x1b\r\b"), repr(printed)
    assert 2 <= len(lines) <= 4, lines
    assert lines[-1] == "Extracting training features: 100 / 100 images"
    monkeypatch.setattr(inference, "PROGRESS_SECONDS", 0)
    assert len(extract()[1]) > 4  # a line at every batch
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    printed, lines = extract()
    assert "25/25" in printed and not lines  # the bar, its 25 batches of 4


@pytest.mark.slow
def test_a_spilled_cache_never_outlives_its_stage(pretrained_base,
                                                  image_folder, tmp_path,
                                                  monkeypatch):
    # It was removed only by a try that spilled, right after the stage's
    # done.json (audit, session 41): a resume with a larger
    # --cache_budget_mb (features in memory) left the earlier try's
    # folder for good, and so did a kill between done.json and removal.
    config = spilled_run_crashing_after_extraction(
        pretrained_base, image_folder, str(tmp_path / "run"), monkeypatch)
    workdir = config.runtime.workdir
    assert os.path.isdir(os.path.join(workdir, "features"))
    metrics = tl_keras.train(config.replace(cache_budget_mb=1024))
    assert not metrics["stages"]["head"]["feature_cache_plan"]["spill"]
    assert not os.path.exists(os.path.join(workdir, "features"))
    # A kill after the head's done.json, before the folder went: the
    # rerun skips the done stage and removes it (and a half-written one).
    for name in ("features", "features.tmp"):
        os.makedirs(os.path.join(workdir, name))
    os.remove(os.path.join(workdir, "metrics.json"))
    tl_keras.train(config)
    assert not {"features", "features.tmp"} & set(os.listdir(workdir))


def test_a_disk_without_room_for_spilled_features_is_said_first(
        pretrained_base, image_folder, tmp_path, monkeypatch):
    # The features are memory-mapped: on a full disk the process died
    # of a bus error mid-extraction, naming nothing (audit, session 41,
    # on a 1 MiB tmpfs). A small disk is simulated here.
    config = tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone=pretrained_base, weights="none", approach="transfer",
        batch_size=8, augment="flip", feature_cache_views=3)
    data = data_lib.make_datasets(config, 32)
    classifier = models.build_classifier(
        models.build_backbone(pretrained_base, "none"), 3, 0.0)
    os.makedirs(config.runtime.workdir)
    usage = shutil.disk_usage(config.runtime.workdir)
    monkeypatch.setattr(feature_cache.shutil, "disk_usage",
                        lambda path: usage._replace(free=2**20))
    size = 4 * 128 * (3 * data.counts["train"] + data.counts["val"])
    with pytest.raises(tl_keras.InputError, match=(
            rf"Invalid workdir .*run': the features spill to a file there "
            rf"\({size / 2**20:.1f} MiB beyond --cache_budget_mb\), and its "
            rf"disk has 1.0 MiB free\. Allowed: a workdir on a disk with "
            rf"room")):
        feature_cache._spilled_features(classifier, data, config.data, 3,
                                        config.runtime.workdir)
    assert os.listdir(config.runtime.workdir) == []  # nothing begun
