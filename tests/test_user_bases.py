"""A user's own base (.keras models, weights files, cuts and --unfreeze)
that tl_keras cannot use as it is: refused at build with an error naming
the field, before the workdir is written. Tiny models at 32 px, offline."""

import logging
import os

import keras
import numpy as np
import pytest
from conftest import run_cli

import tl_keras
from tl_keras import models
from tl_keras.models import recipe

L = keras.layers


def save(model, tmp_path, name):
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    return path


def conv_model(tmp_path, name, shape=(32, 32, 3), first=None):
    """Input -> [first] -> c1 -> p1 -> c2, saved as NAME.keras."""
    inputs = keras.Input(shape)
    x = first(inputs) if first is not None else inputs
    x = L.Conv2D(8, 3, padding="same", name="c1")(x)
    x = L.MaxPooling2D(name="p1")(x)
    x = L.Conv2D(16, 3, padding="same", name="c2")(x)
    return save(keras.Model(inputs, x, name=name), tmp_path, name)


def test_a_base_with_two_outputs_is_refused(tmp_path):
    # The last rank-4 layer was a side branch: the main path was dropped.
    inputs = keras.Input((32, 32, 3))
    a = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
    deep = L.Conv2D(16, 3, strides=2, padding="same", name="deep")(a)
    side = L.Conv2D(4, 1, name="side")(a)
    path = save(keras.Model(inputs, [deep, side]), tmp_path, "twoout")
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.build_backbone(path)
    message = str(e.value)
    assert message.startswith("Invalid backbone")
    assert "2 outputs" in message and "Allowed: a model with one output" in (
        message)
    assert f"Received: backbone={path!r}" in message


def test_a_subclassed_base_is_refused(tmp_path):
    @keras.saving.register_keras_serializable("test_user_bases")
    class Subclassed(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = L.Conv2D(8, 3, padding="same", name="c1")

        def call(self, x):
            return self.conv(x)

    model = Subclassed(name="sub")
    model(np.zeros((1, 32, 32, 3), "float32"))
    path = save(model, tmp_path, "sub")
    with pytest.raises(tl_keras.InputError,  # an AttributeError
                       match="Invalid backbone.*subclassed.*Allowed: a "
                       "Functional or Sequential model"):
        tl_keras.build_backbone(path)


@pytest.mark.parametrize("shape, problem", [
    ((32, 32, 1), "1 channel"),
    ((32, 48, 3), "32 x 48"),
])
def test_a_base_input_other_than_square_rgb_is_refused(tmp_path, shape,
                                                       problem):
    path = conv_model(tmp_path, "odd", shape)
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.build_backbone(path)
    message = str(e.value)
    assert message.startswith("Invalid backbone") and problem in message
    assert f"Received: backbone={path!r}" in message


@pytest.mark.slow
def test_a_gray_base_fails_before_the_workdir_is_written(tmp_path,
                                                         image_folder):
    # It failed deep in training, after config.json and data.json.
    path = conv_model(tmp_path, "gray", (32, 32, 1))
    workdir = tmp_path / "run"
    result = run_cli(f"--data_dir={image_folder}", f"--workdir={workdir}",
                     f"--backbone={path}", "--approach=transfer",
                     "--epochs=1", "--batch_size=8")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "tl_keras: error: Invalid backbone" in result.stderr
    assert "Traceback" not in result.stderr
    assert not workdir.exists() or not os.listdir(workdir)


def test_a_base_of_any_size_says_it_takes_224(tmp_path, caplog):
    path = conv_model(tmp_path, "anysize", (None, None, 3))
    caplog.set_level(logging.INFO, logger="tl_keras")
    assert tl_keras.build_backbone(path).image_size == 224
    assert "image size 224" in caplog.text
    assert "does not fix one" in caplog.text
    caplog.clear()
    assert tl_keras.build_backbone(path, image_size=48).image_size == 48
    assert "image size 224" not in caplog.text


def test_a_size_a_base_of_any_size_cannot_take_is_refused(tmp_path):
    # Its valid-padded strides leave nothing at 12 px: Keras failed when
    # the classifier was built (after the workdir was written).
    inputs = keras.Input((None, None, 3))
    x = inputs
    for i in range(4):
        x = L.Conv2D(4, 3, strides=2, name=f"c{i}")(x)
    path = save(keras.Model(inputs, x), tmp_path, "strided")
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.build_backbone(path, image_size=12)
    message = str(e.value)
    assert message.startswith(
        f"Invalid image_size for backbone {path!r}: it cannot take 12 px")
    assert message.endswith("Received: image_size=12")
    assert tl_keras.build_backbone(path, image_size=32).image_size == 32


def test_a_feature_block_whose_cut_holds_no_weights_is_refused(tmp_path):
    # The head trained on the (rescaled) pixels.
    path = conv_model(tmp_path, "rescale",
                      first=L.Rescaling(1 / 255, name="resc"))
    assert [b for b, _ in tl_keras.build_backbone(path).blocks()] == [
        "stem", "c1", "c2"]
    with pytest.raises(tl_keras.InputError) as e:
        tl_keras.build_backbone(path, feature_block="stem")
    message = str(e.value)
    assert message.startswith("Invalid feature_block")
    assert "holds no weights" in message
    assert "Allowed: one of c1, c2" in message
    assert "Received: feature_block='stem'" in message
    cut = tl_keras.build_backbone(path, feature_block="c1")
    assert cut.base.output.shape == (None, 16, 16, 8)


def test_a_weights_file_with_variables_the_base_lacks_is_said(tmp_path,
                                                              caplog):
    # Keras loaded the two convolutions and ignored the BatchNorm entries
    # without a word. A compiled model's file (optimizer state) and the
    # base's own file are taken without one.
    inputs = keras.Input((32, 32, 3))
    x = L.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.Conv2D(16, 3, padding="same", name="c2")(x)
    bn_weights = str(tmp_path / "bn.weights.h5")
    keras.Model(inputs, x).save_weights(bn_weights)
    plain = conv_model(tmp_path, "plain")
    caplog.set_level(logging.WARNING, logger="tl_keras")
    tl_keras.build_backbone(plain, weights=bn_weights)
    assert "4 variable(s) of the file are not in backbone" in caplog.text
    assert "batch_normalization" in caplog.text
    caplog.clear()
    own = keras.saving.load_model(plain)
    own.compile("adam", "mse")
    own.fit(np.zeros((2, 32, 32, 3)), np.zeros((2,) + own.output_shape[1:]),
            verbose=0)
    own.save_weights(str(tmp_path / "plain.weights.h5"))
    tl_keras.build_backbone(plain, weights=str(tmp_path / "plain.weights.h5"))
    assert "not in backbone" not in caplog.text


def test_unfreeze_counts_the_blocks_that_hold_trained_weights(caplog):
    # densenet121's top block is BatchNorm + ReLU, and BatchNorm stays
    # frozen: --unfreeze=1 trained no base weight (a second head stage).
    built = tl_keras.build_backbone("densenet121", "none", 32)
    blocks = built.blocks()
    assert blocks[-1][0] == "top"
    model = models.build_classifier(built, 3)
    base = models.get_base(model)
    caplog.set_level(logging.INFO, logger="tl_keras")
    models.configure_stage(model, "finetune", blocks, 1)
    assert "--unfreeze=1: fine-tuning conv5_block16, the top 1 block" in (
        caplog.text)
    assert "not counted: top" in caplog.text
    expected = [w for layer in dict(blocks)["conv5_block16"]
                if not isinstance(layer, L.BatchNormalization)
                for w in layer.weights]
    assert base.trainable_weights and len(base.trainable_weights) == len(
        expected)
    tuned = len(blocks) - 1  # every block but 'top'
    models.check_unfreeze(tuned, blocks)
    with pytest.raises(tl_keras.InputError) as e:
        models.check_unfreeze(len(blocks), blocks)
    assert f"Allowed: all or 1..{tuned}" in str(e.value)
    # --lr_decay counts the same blocks: conv5_block16 at the full rate.
    models.configure_stage(model, "head", blocks)  # as a run does
    models.configure_stage(model, "finetune", blocks, 2)
    rates = recipe.layer_multipliers(model, blocks, 0.5)
    assert {rates[w.path] for w in expected} == {1.0}
    assert set(rates.values()) == {1.0, 0.5}
    models.configure_stage(model, "head", blocks)
    models.configure_stage(model, "finetune", blocks, None)  # 'all'
    assert len(base.trainable_weights) == len(
        [w for layer in base.layers
         if not isinstance(layer, L.BatchNormalization)
         for w in layer.trainable_weights])


def test_a_cut_runs_model_serves_as_weights_for_the_same_cut(tmp_path):
    # Its base is the cut one: loaded into the whole base it was refused
    # (20 weights for 26).
    cut = tl_keras.build_backbone("vgg16", "none", 32, feature_block="block4")
    path = save(models.build_classifier(cut, 2), tmp_path, "cut")
    again = tl_keras.build_backbone("vgg16", path, 32, feature_block="block4")
    for a, b in zip(cut.base.weights, again.base.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    whole = tl_keras.build_backbone("vgg16", "none", 32)
    path = save(models.build_classifier(whole, 2), tmp_path, "whole")
    again = tl_keras.build_backbone("vgg16", path, 32, feature_block="block4")
    np.testing.assert_array_equal(again.base.weights[0].numpy(),
                                  whole.base.weights[0].numpy())


def test_a_mobilenet_run_used_as_a_base_keeps_its_blocks(tmp_path):
    # Keras names the base 'mobilenetv2_1.00_32': it matched no family,
    # so a run's model.keras used as --backbone had no blocks (--unfreeze
    # counted conv layers; --feature_block=block_13 was refused).
    built = tl_keras.build_backbone("mobilenet_v2", "none", 32)
    path = str(tmp_path / "run.keras")
    tl_keras.build_classifier(built, 2).save(path)
    again = tl_keras.build_backbone(path, image_size=32)
    assert [name for name, _ in again.blocks()] == [
        name for name, _ in built.blocks()]
    assert "block_13" in [name for name, _ in again.blocks()]
