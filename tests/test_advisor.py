"""The advisor: LogME against a direct evaluation of its formula, kNN and
probe sanity, the decision table, and --mode=advise / rank /
--approach=auto end to end on generated images (weights=None bases
pretrained here, no download)."""

import json
import os

import keras
import numpy as np
import pytest

import tl_keras
from tl_keras import advisor, models
from tl_keras import data as data_lib
from tl_keras.advisor import measurement
from tl_keras.advisor.scores import score_features


def logme_direct(features, labels):
    """The LogME formula evaluated directly: matrix inverse and
    log-determinant per class, MacKay's fixed point from alpha = beta = 1
    (slow; the reference for the SVD form)."""
    f = np.asarray(features, np.float64)
    n, d = f.shape
    ftf = f.T @ f
    s = np.linalg.eigvalsh(ftf)
    scores = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        for _ in range(100):
            a = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.solve(a, f.T @ y)
            gamma = np.sum(beta * s / (alpha + beta * s))
            new_alpha = gamma / (m @ m)
            new_beta = (n - gamma) / np.sum((f @ m - y)**2)
            converged = abs(new_alpha / new_beta - alpha / beta) / (
                alpha / beta) < 1e-3
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        a = alpha * np.eye(d) + beta * ftf
        m = beta * np.linalg.solve(a, f.T @ y)
        evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha)
                    - n / 2 * np.log(2 * np.pi)
                    - beta / 2 * np.sum((f @ m - y)**2)
                    - alpha / 2 * m @ m - np.linalg.slogdet(a)[1] / 2)
        scores.append(evidence / n)
    return float(np.mean(scores))


@pytest.mark.parametrize("n, d, classes", [(60, 8, 3), (12, 30, 4),
                                           (200, 16, 5)])
def test_logme_svd_form_equals_direct_formula(n, d, classes):
    rng = np.random.default_rng(n + d)
    labels = np.arange(n) % classes
    features = rng.normal(size=(n, d)) + labels[:, None] * 0.3
    fast = advisor.logme(features, labels)
    np.testing.assert_allclose(fast, logme_direct(features, labels),
                               rtol=1e-6)


def test_logme_ranks_separable_features_above_noise():
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 3
    centers = rng.normal(size=(3, 32)) * 3
    separable = centers[labels] + rng.normal(size=(300, 32))
    noise = rng.normal(size=(300, 32))
    assert advisor.logme(separable, labels) > advisor.logme(noise, labels)


def test_knn_and_probe_are_high_on_clusters_and_chance_on_noise():
    rng = np.random.default_rng(1)
    labels = np.arange(200) % 4
    centers = rng.normal(size=(4, 16)) * 4
    clusters = centers[labels] + rng.normal(size=(200, 16))
    noise = rng.normal(size=(200, 16))
    assert advisor.knn_accuracy(clusters, labels) > 0.95
    assert advisor.knn_accuracy(noise, labels) < 0.45
    assert advisor.linear_probe(clusters[:150], labels[:150],
                                clusters[150:], labels[150:]) > 0.95
    assert advisor.linear_probe(noise[:150], labels[:150], noise[150:],
                                labels[150:]) < 0.5


def test_knn_leave_one_out_by_hand():
    # 1-D points; each point's 3 nearest others decide.
    features = np.array([[1, 0], [1, 0.1], [1, 0.2], [0, 1], [0.1, 1],
                         [0.2, 1], [1, 0.3]])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    # The last point sits in class 0's cluster: it is the one miss.
    assert advisor.knn_accuracy(features, labels, k=3) == pytest.approx(6 / 7)


def measurements(median, probe, earlier_probe=None, reference_probe=None,
                 classes=5):
    m = {"images_per_class": {"median": median}, "chance": 1 / classes,
         "last": {"probe_accuracy": probe, "knn_accuracy": probe,
                  "logme": 0.0}, "problems": []}
    if earlier_probe is not None:
        m["earlier"] = {"probe_accuracy": earlier_probe}
    if reference_probe is not None:
        m["reference"] = {"probe_accuracy": reference_probe}
    return m


@pytest.mark.parametrize(
    "median, probe, earlier, reference, approach, unfreeze, rule", [
        (10, 0.9, None, None, "finetune", "all", "small + similar"),
        (10, 0.3, None, None, "transfer", "all", "small + different"),
        (500, 0.9, None, None, "finetune", "3", "large + similar"),
        (500, 0.3, None, None, "finetune", "all", "large + different"),
        (5000, 0.22, None, None, "scratch", "all",
         "large + different, features near chance"),
        # The earlier layer is better: far from the pretraining domain.
        (500, 0.9, 0.99, None, "finetune", "all", "large + different"),
        # Random-init features of the same architecture do as well (gain
        # 0.85 vs 0.875): the pretraining brings nothing, at any size.
        (10, 0.9, None, 0.88, "scratch", "all", "pretraining adds nothing"),
        (500, 0.9, None, 0.88, "scratch", "all", "pretraining adds nothing"),
        # Gain 0.875 vs 0.5: the pretraining helps, the usual rules apply.
        (500, 0.9, None, 0.6, "finetune", "3", "large + similar"),
        (10, 0.3, None, 0.2, "transfer", "all", "small + different"),
        # 15 of 25 right over chance 0.2 is a gain of exactly 0.5 (in
        # floating point 0.49999999999999994 before rounding): similar.
        (5, 0.6, None, 0.16, "finetune", "all", "small + similar"),
    ])
def test_decision_table(median, probe, earlier, reference, approach,
                        unfreeze, rule):
    decision = advisor.decide(measurements(median, probe, earlier, reference),
                              advisor.Thresholds(), num_blocks=9)
    assert decision["approach"] == approach
    assert decision["rule"] == rule
    assert decision["unfreeze"] == unfreeze  # "3": the top third of 9
    assert str(median) in decision["reason"]
    assert ("random-init" in decision["reason"]) == (reference is not None)


@pytest.mark.parametrize("median, probe, reference, scratch, approach, rule", [
    # A short scratch run matches the frozen features' probe: scratch, at
    # any size.
    (10, 0.8, 0.3, 0.8, "scratch", "scratch catches up"),
    (500, 0.9, 0.6, 0.96, "scratch", "scratch catches up"),
    # Below the probe: the usual rules.
    (10, 0.8, 0.3, 0.76, "finetune", "small + similar"),
    (500, 0.3, 0.2, 0.28, "finetune", "large + different"),
    # "Pretraining adds nothing" is the first reason given.
    (10, 0.9, 0.88, 0.95, "scratch", "pretraining adds nothing"),
])
def test_decision_with_a_scratch_run(median, probe, reference, scratch,
                                     approach, rule):
    m = measurements(median, probe, reference_probe=reference)
    # A flat run: its best is all there is (no climb to project).
    m["scratch"] = {"epochs": 4, "images": 50, "val_accuracy": scratch,
                    "val_accuracy_curve": [scratch] * 4, "seconds": 1.0}
    decision = advisor.decide(m, advisor.Thresholds(), num_blocks=9)
    assert (decision["approach"], decision["rule"]) == (approach, rule)
    assert (f"4-epoch scratch run on 50 images reaches validation "
            f"accuracy {scratch:.3f}") in decision["reason"]
    # Without the scratch run's measurement the rule cannot apply.
    del m["scratch"]
    assert advisor.decide(m, advisor.Thresholds(), 9)["rule"] != (
        "scratch catches up")


def test_scratch_run_within_a_standard_error_of_the_probe_ties():
    # A run of the advisor bench (many + similar): the scratch run 0.877,
    # the probe 0.893, on the same 300 validation images; scratch then
    # won the compare by 4 points. One standard error of the difference,
    # each accuracy Agresti-Coull adjusted (p~ = (k + 2) / (n + 4)):
    # p~ = 0.8720 and 0.8878, sqrt((0.8720 * 0.1280 + 0.8878 * 0.1122)
    # / 304) = 0.0264.
    assert advisor.scratch_tie(0.877, 0.893, 300) == pytest.approx(
        0.0264, abs=1e-4)
    m = measurements(500, 0.893, reference_probe=0.4)
    m["num_val"] = 300
    m["scratch"] = {"epochs": 8, "images": 300, "val_accuracy": 0.877,
                    "val_accuracy_curve": [0.877] * 8, "seconds": 1.0}
    decision = advisor.decide(m, advisor.Thresholds(), num_blocks=9)
    assert decision["rule"] == "scratch catches up"
    assert "less 0.026 (1 standard error" in decision["reason"]
    # 0 standard errors: at least the probe, as before.
    strict = advisor.Thresholds(tie_se=0.0)
    assert advisor.decide(m, strict, 9)["rule"] == "large + similar"
    # 0.80 is 3.2 standard errors below on 300 images: no tie ...
    m["scratch"].update(val_accuracy=0.80, val_accuracy_curve=[0.80] * 8)
    assert advisor.decide(m, advisor.Thresholds(), 9)["rule"] == (
        "large + similar")
    # ... but on 25 images the estimates are too coarse to tell (0.105).
    m["num_val"] = 25
    assert advisor.decide(m, advisor.Thresholds(), 9)["rule"] == (
        "scratch catches up")
    assert advisor.scratch_tie(0.8, 0.893, 0) == 0.0  # no count recorded


# Scratch-run curves from bench/advisor_situations.py (seed 0): some +
# similar (20 digits per class, 100 validation images; scratch then beat
# finetune by 8-10 points), few + similar (25 images; scratch then lost
# to finetune by 16-28 points).
CLIMBING = [0.2, 0.2, 0.2, 0.2, 0.32, 0.58, 0.72, 0.56]
FLAT = [0.2] * 8


def test_scratch_projection_continues_the_climb_one_rise_ahead():
    # Best of the first half 0.2, of the second 0.72; less one standard
    # error of 0.72 on 100 images (0.0444): a rise of 0.4756 per half run,
    # two halves per run length; the default horizon is half a run.
    assert advisor.scratch_projection(CLIMBING, 100) == 1.0  # capped
    assert advisor.scratch_projection(CLIMBING, 100, horizon=1.0) == 1.0
    assert advisor.scratch_projection(CLIMBING, 100, horizon=0.1) == (
        pytest.approx(0.72 + 0.2 * 0.4756, abs=1e-4))
    assert advisor.scratch_projection(CLIMBING, 100, horizon=0) == 0.72
    assert advisor.scratch_projection(FLAT, 25) == 0.2
    assert advisor.scratch_projection([0.5], 25) == 0.5
    # Two more right of 25 at the end is within the noise of 0.28
    # (standard error 0.0859): no climb.
    assert advisor.scratch_projection(FLAT[:-1] + [0.28], 25) == 0.28
    # A real climb on 25 images: 0.2 -> 0.6 less 0.0915, so 0.6 + 0.3085.
    assert advisor.scratch_projection(FLAT[:-1] + [0.6], 25) == (
        pytest.approx(0.9085, abs=1e-3))
    assert advisor.scratch_projection(FLAT[:-1] + [0.6], 25, 1.0) == 1.0
    assert advisor.scratch_projection(FLAT[:-1] + [0.4], 25) == (
        pytest.approx(0.4 + (0.2 - 0.0915), abs=1e-3))


def test_a_climbing_scratch_run_catches_up():
    m = measurements(20, 0.85, reference_probe=0.43)
    m["num_val"] = 100
    m["scratch"] = {"epochs": 8, "images": 100, "val_accuracy": 0.72,
                    "val_accuracy_curve": CLIMBING, "seconds": 1.0}
    decision = advisor.decide(m, advisor.Thresholds(), num_blocks=4)
    assert (decision["approach"], decision["rule"]) == (
        "scratch", "scratch catches up")
    assert "1.000 within 4 more epochs" in decision["reason"]
    assert "is headed to match" in decision["reason"]
    # Horizon 0: the run's best only (0.72, more than a standard error
    # (0.0573) below 0.85): the size and similarity rules decide.
    best_only = advisor.Thresholds(scratch_horizon=0)
    assert advisor.decide(m, best_only, 4)["rule"] == "small + similar"
    # A flat run at chance does not catch up.
    m["scratch"].update(val_accuracy=0.2, val_accuracy_curve=FLAT)
    decision = advisor.decide(m, advisor.Thresholds(), num_blocks=4)
    assert decision["rule"] == "small + similar"
    assert "more epochs" not in decision["reason"]


@pytest.mark.parametrize("reference, rule", [
    # few + different in the bench: random-init features 0.84 on 25
    # gratings (gain 0.8), pretrained 1.0; scratch then won in 4 of 4 runs.
    (0.84, "random features suffice"),
    # Gain 0.5: random features help, not enough to call the task easy.
    (0.6, "small + similar"),
])
def test_random_features_that_separate_the_classes_pick_scratch(
        reference, rule):
    m = measurements(5, 1.0, reference_probe=reference)
    m["num_val"] = 25
    decision = advisor.decide(m, advisor.Thresholds(), num_blocks=4)
    assert decision["rule"] == rule
    assert (decision["approach"] == "scratch") == (reference == 0.84)
    assert ("the untrained architecture already separates"
            in decision["reason"]) == (reference == 0.84)
    # At 1 the rule is off, even for perfect random features.
    off = advisor.Thresholds(random_gain=1.0)
    assert advisor.decide(m, off, 4)["rule"] == "small + similar"
    m["reference"]["probe_accuracy"] = 1.0
    off = advisor.Thresholds(random_gain=1.0, reference_margin=0.0)
    assert advisor.decide(m, off, 4)["rule"] == "small + similar"


def test_a_gain_within_a_standard_error_of_the_threshold_is_similar():
    # few + similar in a bench run: the probe 0.56 on 25 validation images
    # (14 right), gain 0.45 against 0.5; one standard error of the gain is
    # sqrt(p~ (1 - p~) / 29) / 0.8 = 0.1154 with p~ = 16 / 29 (Agresti-
    # Coull). Finetune was best there.
    assert advisor.gain_se(0.56, 0.2, 25) == pytest.approx(0.1154, abs=1e-4)
    m = measurements(5, 0.56, reference_probe=0.16)
    m["num_val"] = 25
    decision = advisor.decide(m, advisor.Thresholds(), num_blocks=4)
    assert (decision["approach"], decision["rule"]) == (
        "finetune", "small + similar")
    assert "similar from 0.5 less 0.12 (1 standard error on 25" in (
        decision["reason"])
    strict = advisor.Thresholds(tie_se=0.0)
    assert advisor.decide(m, strict, 4)["rule"] == "small + different"
    # On 300 images the same gain is 1.4 standard errors short: different.
    m["num_val"] = 300
    assert advisor.decide(m, advisor.Thresholds(), 4)["rule"] == (
        "small + different")
    assert advisor.gain_se(0.56, 0.2, 0) == 0.0


def test_an_accuracy_of_1_on_few_images_is_not_certain():
    # Held-out bench run (seed 2), few + different: the probe 1.0 and the
    # scratch run 0.96 on 25 validation images; scratch then won the
    # compare by 1.4 points. The plain binomial variance of 1.0 is 0 (a
    # tie of 0.039, just missed); Agresti-Coull: 27/29 and 26/29 -> 0.0736.
    assert advisor.accuracy_variance(1.0, 25) > 0
    assert advisor.accuracy_variance(0.0, 25) == pytest.approx(
        advisor.accuracy_variance(1.0, 25))
    assert advisor.accuracy_variance(0.5, 0) == 0.0
    assert advisor.scratch_tie(0.96, 1.0, 25) == pytest.approx(0.0736,
                                                               abs=1e-4)
    m = measurements(5, 1.0, reference_probe=0.72)
    m["num_val"] = 25
    m["scratch"] = {"epochs": 8, "images": 25, "val_accuracy": 0.96,
                    "val_accuracy_curve": [0.2, 0.4, 0.92, 0.96, 0.92, 0.92,
                                           0.92, 0.92], "seconds": 1.0}
    decision = advisor.decide(m, advisor.Thresholds(), num_blocks=4)
    assert decision["rule"] == "scratch catches up"


def test_size_rule_when_no_score():
    m = {"images_per_class": {"median": 3}, "chance": 0.5, "last": {},
         "problems": ["last: the sample (4 images) is too small"]}
    decision = advisor.decide(m, advisor.Thresholds(), num_blocks=4)
    assert decision["rule"] == "size only"
    assert decision["approach"] == "transfer"
    assert "too small" in decision["reason"]


def test_non_finite_features_are_a_clear_error():
    bad = np.ones((20, 4))
    bad[3, 1] = np.nan
    with pytest.raises(tl_keras.InputError, match="NaN or Inf"):
        score_features(bad, np.arange(20) % 2, bad, np.arange(20) % 2, 0,
                        "last", [])


def test_advise_then_auto_run(pretrained_base, image_folder, tmp_path):
    config = tl_keras.Config(
        mode="advise", data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone=pretrained_base, weights="none", approach="auto",
        epochs=2, finetune_epochs=1, batch_size=8, augment="none")
    record = advisor.advise(config)
    stored = json.load(open(tmp_path / "run" / "decision.json"))
    for key in ("measurements", "thresholds", "situation", "approach",
                "unfreeze", "rule", "reason"):
        assert key in stored
    m = stored["measurements"]
    for key in ("logme", "knn_accuracy", "probe_accuracy"):
        assert key in m["last"]
    assert m["earlier_layer"] and "probe_accuracy" in m["earlier"]
    assert "probe_accuracy" in m["reference"]  # the random-init reference
    if "scratch" in m:
        # The short scratch run: a fifth of --epochs=2, rounded up, on all
        # 24 training images (fewer than --advisor_sample).
        assert m["scratch"]["epochs"] == 1 and m["scratch"]["images"] == 24
        assert m["scratch"]["val_accuracy_curve"] == [m["scratch"][
            "val_accuracy"]]
        assert 0 <= m["scratch"]["val_accuracy"] <= 1
    else:  # skipped: the decision was scratch before it
        assert record["rule"] == "pretraining adds nothing"
    assert m["chance"] == pytest.approx(1 / 3)
    # The same measurements and decision on a second call.
    again = advisor.advise(config)
    assert again["measurements"]["reference"] == m["reference"]
    assert again["approach"] == record["approach"]
    # 12 images per class is small data.
    assert record["rule"] in ("small + similar", "small + different",
                              "pretraining adds nothing",
                              "random features suffice",
                              "scratch catches up")
    # The auto run (in the same workdir) trains what the advisor chose.
    metrics = tl_keras.train(config.replace(mode="train"))
    assert metrics["approach"] == record["approach"]
    assert metrics["decision"]["rule"] == record["rule"]
    assert list(metrics["stages"]) == {
        "transfer": ["head"], "finetune": ["head", "finetune"],
        "scratch": ["scratch"]}[record["approach"]]
    assert json.load(open(tmp_path / "run" / "decision.json"))["run"]


def test_auto_picks_finetune_for_large_similar_data(pretrained_base,
                                                    image_folder, tmp_path):
    # The thresholds make 12 images per class 'large' and any features
    # 'similar' (and never 'no better than random', nor random features
    # good enough to pick scratch, nor a scratch run that catches up).
    config = tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone=pretrained_base, weights="none", approach="auto",
        epochs=1, finetune_epochs=1, batch_size=8, augment="none",
        advisor_large_per_class=5, advisor_similar_gain=0.0,
        advisor_random_gain=1.0, advisor_scratch_fraction=0.0,
        advisor_reference_margin=0.0)
    metrics = tl_keras.train(config)
    assert metrics["approach"] == "finetune"
    assert metrics["decision"]["rule"] == "large + similar"
    assert list(metrics["stages"]) == ["head", "finetune"]
    assert metrics["stages"]["finetune"]["unfreeze"] == metrics[
        "decision"]["unfreeze"]


def test_rank_orders_backbones(pretrained_base, image_folder, tmp_path,
                               capsys):
    config = tl_keras.Config(
        mode="rank", data_dir=image_folder, workdir=str(tmp_path / "rank"),
        backbones=f"compact_cnn,{pretrained_base}", weights="none",
        image_size=32, batch_size=8, augment="none")
    rows = advisor.rank(config)
    assert sorted(r["backbone"] for r in rows) == sorted(
        ["compact_cnn", pretrained_base])
    # Ranked by mean rank over the three scores, each rank consistent
    # with its score.
    assert [r["mean_rank"] for r in rows] == sorted(
        r["mean_rank"] for r in rows)
    for key in ("logme", "knn_accuracy", "probe_accuracy"):
        best = min(rows, key=lambda r: r["ranks"][key])
        assert best[key] == max(r[key] for r in rows)
    assert "Backbones ranked" in capsys.readouterr().out
    stored = json.load(open(tmp_path / "rank" / "ranking.json"))
    assert [r["backbone"] for r in stored["ranking"]] == [
        r["backbone"] for r in rows]


def test_rank_unknown_backbone_fails_before_work(image_folder, tmp_path):
    config = tl_keras.Config(
        mode="rank", data_dir=image_folder, workdir=str(tmp_path / "rank"),
        backbones="compact_cnn,resnet_9000", weights="none")
    with pytest.raises(tl_keras.InputError, match="resnet_9000"):
        advisor.rank(config)
    assert not os.path.exists(tmp_path / "rank")


def test_class_with_one_image_is_a_clear_error(tmp_path):
    from conftest import write_image_folder

    folder = write_image_folder(str(tmp_path / "images"), num_classes=2,
                                per_class=8, formats=("png",))
    config = tl_keras.Config(
        mode="advise", data_dir=folder, workdir=str(tmp_path / "run"),
        backbone="compact_cnn", weights="none", image_size=32,
        batch_size=4, augment="none", validation_split=0.1,
        test_split=0.1)
    data = tl_keras.make_datasets(config, 32)
    data.class_counts["train"]["class_0"] = 1  # as if one image were left
    with pytest.raises(tl_keras.InputError, match="fewer than 2"):
        advisor.advise(config, data=data)


def _base_weights(path):
    model = keras.models.load_model(path)
    return [np.asarray(w) for w in models.get_base(model).weights]


def test_finetune_that_never_beats_the_head_keeps_the_head(
        pretrained_base, image_folder, tmp_path):
    # A learning rate of 0.9 wrecks the base on the first fine-tune step,
    # so no fine-tune epoch reaches the head's validation score.
    config = tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone=pretrained_base, weights="none", approach="finetune",
        epochs=2, finetune_epochs=2, finetune_learning_rate=0.9,
        batch_size=8, augment="none")
    metrics = tl_keras.train(config)
    head, finetune = metrics["stages"]["head"], metrics["stages"]["finetune"]
    assert finetune["best_epoch"] == 0
    assert finetune["best_val_accuracy"] == head["best_val_accuracy"]
    assert len(finetune["history"]["val_accuracy"]) == 2
    assert max(finetune["history"]["val_accuracy"]) <= head[
        "best_val_accuracy"]
    # The head stage never touches the base: the result's base is the
    # pretrained one, bit for bit.
    for got, want in zip(_base_weights(tmp_path / "run" / "model.keras"),
                         _base_weights(pretrained_base), strict=True):
        np.testing.assert_array_equal(got, want)


def test_scratch_from_a_saved_model_trains_its_architecture(
        pretrained_base, image_folder, tmp_path):
    built = models.build_backbone(pretrained_base, "none")
    fresh = models.reinitialized(built)
    assert (fresh.preprocessing, fresh.image_size) == (
        built.preprocessing, built.image_size)
    pairs = list(zip(fresh.base.weights, built.base.weights, strict=True))
    assert all(a.shape == b.shape for a, b in pairs)
    kernels = [(a, b) for a, b in pairs if len(a.shape) == 4]
    assert kernels and not any(np.allclose(a, b) for a, b in kernels)
    # --approach=scratch with a .keras backbone trains that architecture.
    metrics = tl_keras.train(tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone=pretrained_base, weights="none", approach="scratch",
        epochs=1, batch_size=8, augment="none"))
    assert "random init" in metrics["backbone"]
    assert list(metrics["stages"]) == ["scratch"]


def test_calibration_batch_spans_a_class_ordered_sample():
    import tensorflow as tf

    labels = np.repeat(np.arange(4), 100)  # class order, as from a folder
    ds = tf.data.Dataset.from_tensor_slices(
        (np.arange(400, dtype=np.float32)[:, None], labels)).batch(32)
    x, y = measurement._calibration_batch(ds, 400, 128)
    assert len(y) == 100 and set(y) == {0, 1, 2, 3}  # every 4th image
    np.testing.assert_array_equal(x[:, 0], np.arange(0, 400, 4))
    x, y = measurement._calibration_batch(ds.take(2), 64, 128)  # fewer: all
    np.testing.assert_array_equal(x[:, 0], np.arange(64))


def test_scratch_run_trains_a_copy_and_leaves_the_model_alone(
        pretrained_base, image_folder):
    # The short scratch run trains a fresh random-init copy of the
    # architecture (with augmentation, as a scratch run would); the
    # classifier being measured keeps its weights bit for bit.
    config = tl_keras.Config(
        data_dir=image_folder, workdir="unused", backbone=pretrained_base,
        weights="none", epochs=30, batch_size=8, augment="flip,zoom",
        advisor_sample=20)
    built = models.build_backbone(pretrained_base, "none")
    data = data_lib.make_datasets(config, built.image_size)
    model = models.build_classifier(built, 3, 0.0)
    before = [np.asarray(w) for w in model.weights]
    epochs = advisor.scratch_epochs(config)
    assert epochs == 6  # 0.2 x 30
    run = advisor.scratch_run(model, data, config, epochs)
    assert run["images"] == 20 and run["epochs"] == 6  # the sample only
    assert len(run["val_accuracy_curve"]) == 6
    assert run["val_accuracy"] == max(run["val_accuracy_curve"])
    for got, want in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    # Once it has caught up (here: any accuracy) it stops.
    stopped = advisor.scratch_run(model, data, config, epochs,
                                  enough=lambda accuracy: True)
    assert stopped["epochs"] == 1 and stopped["planned_epochs"] == 6
    assert len(stopped["val_accuracy_curve"]) == 1
    lines = advisor.summary_lines(
        {"sample": 20, "num_classes": 3, "chance": 1 / 3, "problems": [],
         "scratch": stopped},
        {"situation": "s", "rule": "r", "approach": "scratch",
         "unfreeze": "all", "reason": "why"})
    assert any("scratch run (1 of 6 epochs)" in line for line in lines)
    # --advisor_scratch_fraction=0 skips it.
    assert advisor.scratch_epochs(config.replace(
        advisor_scratch_fraction=0.0)) == 0


def test_scratch_run_only_when_it_can_change_the_decision(
        pretrained_base, image_folder, tmp_path, monkeypatch):
    # Without the random-init reference (its rule could decide scratch
    # before the run, on this toy base), the run always happens.
    monkeypatch.setattr(measurement, "_reference_scores", lambda *a, **k: {})
    config = tl_keras.Config(
        mode="advise", data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone=pretrained_base, weights="none", epochs=10, batch_size=8,
        augment="none")
    record = advisor.advise(config)
    m = record["measurements"]
    if record["rule"] != "scratch catches up":  # the run did not decide
        # (it ran, 2 epochs; the decision without it was not scratch)
        assert record["approach"] != "scratch"
    assert m["scratch"]["epochs"] == 2
    lines = "\n".join(advisor.summary_lines(m, record))
    assert "scratch run (2 epochs)" in lines
    # With the reference and a margin of 1, "pretraining adds nothing" is
    # certain: the decision is scratch before any training, and the run is
    # skipped.
    monkeypatch.undo()
    record = advisor.advise(config.replace(advisor_reference_margin=1.0))
    assert record["rule"] == "pretraining adds nothing"
    assert "scratch" not in record["measurements"]
    assert any("skipped" in p for p in record["measurements"]["problems"])
