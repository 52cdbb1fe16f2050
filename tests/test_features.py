"""Cached features: the head trained on features computed once equals the
head trained through the frozen base every epoch, on the same data, seed
and order."""

import os

import keras
import numpy as np
import pytest

import tl_keras


@pytest.fixture(scope="module")
def pretrained_base(tmp_path_factory, image_folder):
    """A compact_cnn trained from scratch, so its features are real."""
    workdir = str(tmp_path_factory.mktemp("base") / "run")
    tl_keras.train(tl_keras.Config(
        data_dir=image_folder, workdir=workdir, backbone="compact_cnn",
        weights="none", image_size=32, approach="scratch", epochs=2,
        batch_size=8, augment="none"))
    return os.path.join(workdir, "model.keras")


def head_run(base, image_folder, workdir, cache):
    config = tl_keras.Config(
        data_dir=image_folder, workdir=workdir, backbone=base,
        weights="none", approach="transfer", epochs=3, batch_size=8,
        learning_rate=0.01, dropout=0.0, augment="none",
        feature_cache=cache)
    metrics = tl_keras.train(config)
    model = keras.saving.load_model(os.path.join(workdir, "model.keras"))
    return metrics, model


def test_cached_head_equals_full_loop(pretrained_base, image_folder,
                                      tmp_path):
    cached, cached_model = head_run(pretrained_base, image_folder,
                                    str(tmp_path / "cached"), True)
    full, full_model = head_run(pretrained_base, image_folder,
                                str(tmp_path / "full"), False)
    assert cached["stages"]["head"]["feature_cache"] is True
    assert full["stages"]["head"]["feature_cache"] is False
    np.testing.assert_allclose(
        cached["stages"]["head"]["history"]["loss"],
        full["stages"]["head"]["history"]["loss"], rtol=1e-4)
    for a, b in zip(cached_model.get_layer("logits").weights,
                    full_model.get_layer("logits").weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    # The result is the whole classifier, base unchanged.
    for a, b in zip(cached_model.get_layer("backbone").weights,
                    full_model.get_layer("backbone").weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert cached["test_accuracy"] == full["test_accuracy"]


@pytest.mark.parametrize("changes", [
    dict(augment="flip"),  # augmented views differ every epoch
    dict(augment="none", cache_budget_mb=0),  # features exceed the budget
])
def test_full_loop_when_features_cannot_be_cached(pretrained_base,
                                                  image_folder, tmp_path,
                                                  changes):
    config = tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone=pretrained_base, weights="none", approach="transfer",
        epochs=1, batch_size=8, **changes)
    metrics = tl_keras.train(config)
    assert metrics["stages"]["head"]["feature_cache"] is False
