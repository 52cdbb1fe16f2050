"""export_saved_model's and convert_to_tflite's arguments from Python: a
model that is not tl_keras's own (a softmax head, a sigmoid, a non-square
input), the destination, the switches and the manifest's extra fields.
Small hand-built models, no training run."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tflite_scores

import tl_keras
from tl_keras import export
from tl_keras.export import checks

SIZE = 8


def classifier(activation=None, shape=(SIZE, SIZE, 3), classes=3, seed=0):
    """A Sequential model, as a user would write one (tl_keras's own are
    functional), confident enough for a second softmax to show."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(shape), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes, activation=activation)])
    dense = model.layers[-1]
    dense.set_weights([w * 30 for w in dense.get_weights()])
    return model


def two_outputs():
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, [keras.layers.Dense(3)(pooled),
                                keras.layers.Dense(3)(pooled)])


def pixels(n=4, seed=1):
    return np.random.default_rng(seed).integers(
        0, 256, (n, SIZE, SIZE, 3)).astype(np.uint8)


NAMES = ["a", "b", "c"]


@pytest.mark.parametrize("ending", ["dense", "tf.nn.softmax", "layer",
                                    "float32 after"])
def test_a_softmax_model_is_served_with_its_own_scores(tmp_path, ending):
    # A Dense(softmax) head (or tf.nn.softmax, a Softmax layer after
    # logits, a float32 linear Activation after the softmax as mixed
    # precision guides write) got softmax applied twice: [0.002, 0.998]
    # was served as [0.27, 0.73]. Its logits are now the logs of its
    # probabilities, so the scores are its own, in the SavedModel and in
    # model.tflite alike.
    model = classifier({"dense": "softmax", "tf.nn.softmax": tf.nn.softmax,
                        "float32 after": "softmax"}.get(ending))
    if ending == "layer":
        model.add(keras.layers.Softmax())
    elif ending == "float32 after":
        model.add(keras.layers.Activation("linear", dtype="float32"))
    assert checks.gives_probabilities(model)
    assert not checks.gives_probabilities(classifier())
    x = pixels()
    own = model.predict(x.astype("float32"), verbose=0)
    assert own.max() > 0.9  # confident enough for a second softmax to show
    target = str(tmp_path / "export")
    export.export_saved_model(model, target, NAMES, tflite=True)
    served = export.load_exported(target).predict(x)
    np.testing.assert_allclose(served["scores"], own, atol=1e-5)
    np.testing.assert_array_equal(served["class_ids"], own.argmax(-1))
    np.testing.assert_allclose(
        tflite_scores(os.path.join(target, "model.tflite"),
                      x.astype("float32")), own, atol=1e-5)


@pytest.mark.parametrize("model, fragment", [
    (lambda: classifier("sigmoid"), "a last layer with a sigmoid"),
    (lambda: classifier(shape=(SIZE, 2 * SIZE, 3)), r"\(None, 8, 16, 3\)"),
    (lambda: classifier(shape=(None, None, 3)), r"\(None, None, None, 3\)"),
    (lambda: classifier(shape=(SIZE, SIZE, 1)), r"\(None, 8, 8, 1\)"),
    (lambda: two_outputs(), r"one output.*\[\(None, 3\), \(None, 3\)\]"),
])
def test_a_model_the_export_cannot_serve_is_refused(tmp_path, model,
                                                    fragment):
    # Before: a sigmoid was served as a softmax over the classes; the
    # other shapes failed inside TensorFlow ("'size' must be a 1-D int32
    # Tensor", "Binding inputs to tf.function failed").
    target = tmp_path / "export"
    built = model()
    with pytest.raises(tl_keras.InputError, match=f"Invalid model.*"
                                                  f"{fragment}"):
        export.export_saved_model(built, str(target), NAMES)
    with pytest.raises(tl_keras.InputError, match="Invalid model"):
        export.convert_to_tflite(built)
    assert not target.exists() and os.listdir(tmp_path) == []


@pytest.mark.parametrize("arguments, fragment", [
    (dict(overwrite="no"), "Invalid overwrite.*True or False.*'no'"),
    (dict(tflite="no"), "Invalid tflite.*True or False"),
    (dict(keep_old=None), "Invalid keep_old.*True or False"),
    (dict(manifest={"class_names": ["x"], "input": {"size": 999}}),
     "Invalid manifest.*the export's own.*Received: manifest='class_names, "
     "input'"),
    (dict(manifest={"scores": np.zeros(3)}),
     "Invalid manifest.*JSON-serialisable.*ndarray"),
    (dict(manifest=["backbone"]),
     "Invalid manifest.*Received: manifest='list'"),
])
def test_bad_arguments_are_refused_before_anything_is_written(
        tmp_path, arguments, fragment):
    # overwrite='no' replaced an export; a manifest's class_names replaced
    # the real ones in manifest.json while labels.txt kept them; an array
    # in the manifest failed after the whole SavedModel was written.
    target = tmp_path / "export"
    with pytest.raises(tl_keras.InputError, match=fragment):
        export.export_saved_model(classifier(), str(target), NAMES,
                                  **arguments)
    assert os.listdir(tmp_path) == []


def test_a_destination_that_cannot_be_replaced_is_refused(tmp_path,
                                                          monkeypatch):
    # '' made a temporary folder in the parent of the current directory,
    # then failed; '.' failed "Device or resource busy" after writing;
    # None was a TypeError from os.stat.
    work = tmp_path / "here"
    work.mkdir()
    monkeypatch.chdir(work)
    model = classifier()
    for where, fragment in (("", "a folder path"), (None, "a folder path"),
                            (".", "does not hold the current directory"),
                            (str(tmp_path), "does not hold the current")):
        with pytest.raises(tl_keras.InputError,
                           match=f"Invalid export_dir.*{fragment}"):
            export.export_saved_model(model, where, NAMES)
    assert os.listdir(tmp_path) == ["here"] and os.listdir(work) == []


def test_a_leading_tilde_is_the_home_folder(tmp_path, monkeypatch):
    # It made a folder named `~` in the current directory.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    written = export.export_saved_model(classifier(), "~/exports/m", NAMES,
                                        manifest={"note": np.float32(0.5)})
    assert written == str(tmp_path / "home" / "exports" / "m")
    assert not (tmp_path / "~").exists()
    with open(os.path.join(written, "manifest.json")) as f:
        assert json.load(f)["note"] == 0.5
    assert export.load_exported("~/exports/m").class_names == NAMES


def test_a_folder_given_to_predict_is_named_as_a_folder(tmp_path):
    # It said the folder did not exist.
    target = str(tmp_path / "export")
    export.export_saved_model(classifier(), target, NAMES)
    folder = tmp_path / "shots"
    folder.mkdir()
    with pytest.raises(tl_keras.InputError,
                       match="1 of 1 path.* are folders: .*shots.*list them"):
        export.load_exported(target).predict([str(folder)])


def test_predict_takes_arrays_as_training_takes_them(tmp_path):
    # Gray, RGBA and float [0, 255] arrays trained (from_arrays) but were
    # refused by predict ("Allowed: uint8 [batch, height, width, 3]").
    target = str(tmp_path / "export")
    export.export_saved_model(classifier(), target, NAMES)
    predictor = export.load_exported(target)
    x = pixels()
    rgb = predictor.predict(x)["scores"]
    np.testing.assert_allclose(predictor.predict(
        x.astype("float32"))["scores"], rgb, atol=1e-6)
    rgba = np.concatenate([x, np.full_like(x[..., :1], 255)], axis=-1)
    np.testing.assert_allclose(predictor.predict(rgba)["scores"], rgb,
                               atol=1e-6)
    gray = x[..., :1]
    np.testing.assert_allclose(
        predictor.predict(gray)["scores"],
        predictor.predict(np.repeat(gray, 3, axis=-1))["scores"], atol=1e-6)
    with pytest.raises(tl_keras.InputError, match="Invalid images"):
        predictor.predict(x.astype("float32") * 2)  # above 255
