"""--mixed_precision on CPU: both 16-bit policies train, logits stay float32,
float16 gets dynamic loss scaling, the export serves float32 scores, and the
process-wide Keras policy is restored afterwards.

CPUs gain no speed from 16-bit compute (that is why `auto` picks float32
here); these tests check the numerics and the plumbing, which are the same
code path as on a GPU.
"""

import json
import os

import keras
import numpy as np
import pytest
from conftest import (
    class_image,
    cpu_only,
    interrupt_before_training,
    tflite_scores,
)

import tl_keras
from tl_keras import distribute, models
from tl_keras.distribute import strategy


@pytest.mark.parametrize("policy, compute, scaled", [
    ("mixed_float16", "float16", True),
    ("mixed_bfloat16", "bfloat16", False),
])
def test_policy_builds_16_bit_model_with_float32_logits(policy, compute,
                                                        scaled):
    with strategy._PolicyScope(policy):
        backbone = models.build_backbone("compact_cnn", "none", 32)
        model = models.build_classifier(backbone, 3, 0.2)
        models.compile_for_stage(model, 1e-3)
    assert keras.config.dtype_policy().name == "float32"  # restored
    conv = models.get_base(model).layers[1]
    assert conv.compute_dtype == compute
    assert conv.variable_dtype == "float32"  # master weights stay float32
    assert model.get_layer("logits").compute_dtype == "float32"
    logits = model(np.zeros((2, 32, 32, 3), np.float32), training=False)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert isinstance(model.optimizer,
                      keras.optimizers.LossScaleOptimizer) == scaled


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.slow
def test_mixed_precision_run_trains_and_exports_float32(tiny_config, policy):
    config = tiny_config.replace(mixed_precision=policy, augment="none",
                                 epochs=2, finetune_epochs=1,
                                 export_tflite=True)
    metrics = tl_keras.train(config)
    assert keras.config.dtype_policy().name == "float32"
    assert metrics["hardware"]["mixed_precision"] == policy
    for stage in metrics["stages"].values():
        assert np.all(np.isfinite(stage["history"]["loss"]))
    assert np.isfinite(metrics["test_loss"])
    model = keras.models.load_model(os.path.join(config.runtime.workdir,
                                                 "model.keras"))
    assert model.get_layer("logits").compute_dtype == "float32"
    rng = np.random.default_rng(1)
    images = np.stack([np.asarray(class_image(i % 3, rng, 32))
                       for i in range(6)])
    exported = tl_keras.load_exported(os.path.join(config.runtime.workdir,
                                                   "export"))
    served = exported.predict(images)
    assert served["scores"].dtype == np.float32
    direct = keras.ops.convert_to_numpy(keras.ops.softmax(
        model(images.astype(np.float32), training=False)))
    # 16-bit activations: served and direct scores agree to 16-bit
    # precision (they are the same graph, run twice).
    np.testing.assert_allclose(served["scores"], direct, atol=1e-2)
    # TFLite takes no 16-bit ops (the conversion failed at every Conv2D,
    # after training): the file computes in float32, with the weights.
    np.testing.assert_allclose(tflite_scores(os.path.join(
        config.runtime.workdir, "export", "model.tflite"),
        images.astype(np.float32)), direct, atol=1e-2)
    with open(os.path.join(config.runtime.workdir, "config.json")) as f:
        assert json.load(f)["mixed_precision"] == policy


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.slow
def test_every_augmentation_runs_under_mixed_precision(tiny_config, policy):
    # MixUp and CutMix mixed 16-bit images with float32 labels (a
    # TypeError before the first step); augmentation computes in float32
    # whatever the policy (auto picks mixed_float16 on recent GPUs).
    for augment in ("flip,rotation,zoom,mixup", "randaugment,cutmix"):
        config = tiny_config.replace(
            mixed_precision=policy, augment=augment, approach="transfer",
            epochs=1, workdir=f"{tiny_config.runtime.workdir}-{augment}")
        metrics = tl_keras.train(config)
        assert np.all(np.isfinite(metrics["stages"]["head"]["history"][
            "loss"]))
    assert keras.config.dtype_policy().name == "float32"


@cpu_only
def test_auto_precision_is_float32_on_cpu():
    assert distribute.resolve_precision("auto") == "float32"
    assert distribute.resolve_precision("mixed_float16") == "mixed_float16"


def test_float32_copy_for_tflite_keeps_input_statistics():
    # EfficientNet B0-B7's input Normalization divides by tensors copied
    # from its variables when a file loads them; the float32 copy that
    # TFLite converts got its weights by set_weights, which left it on
    # mean 0, variance 1 (an ImageNet EfficientNet's TFLite file scored
    # unnormalised images).
    from tl_keras.export import tflite
    with strategy._PolicyScope("mixed_float16"):
        model = keras.Sequential([keras.Input((4, 4, 3)),
                                  keras.layers.Normalization(),
                                  keras.layers.Conv2D(2, 1)])
    norm = model.layers[0]
    norm.adapt_mean.assign([100.0, 120.0, 90.0])
    norm.adapt_variance.assign([900.0, 400.0, 2500.0])
    norm.finalize_state()
    copy = tflite.float32_model(model)
    assert copy is not model and copy.layers[1].compute_dtype == "float32"
    images = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3))
    np.testing.assert_allclose(
        np.asarray(copy(images)),
        np.asarray(model(images), dtype="float32"), rtol=0.02, atol=0.02)


@pytest.mark.slow
def test_a_resume_in_another_precision_is_said(tiny_config, monkeypatch,
                                               caplog):
    # --mixed_precision=auto resolves per machine: a run started on a GPU
    # (mixed_float16) and resumed on a CPU (float32) went on in float32
    # without a word. run.json keeps the precision it started in; here
    # the GPU start is stood in for by that record.
    config = tiny_config.replace(epochs=1, finetune_epochs=1)
    interrupt_before_training(config, monkeypatch)
    path = os.path.join(config.runtime.workdir, "run.json")
    record = json.load(open(path))
    assert record["precision"] == "float32"
    with open(path, "w") as f:
        json.dump({**record, "precision": "mixed_float16"}, f)
    caplog.set_level("WARNING", logger="tl_keras")
    assert tl_keras.train(config)["complete"]
    assert ("The run started in mixed_float16 precision and resumes in "
            "float32 (--mixed_precision=auto resolves per machine)") in (
        caplog.text)
    assert json.load(open(path)) == {**record, "precision": "mixed_float16"}
