"""SavedModel export with the whole inference path inside, and a predictor.

Every endpoint resizes with the same `resize_images` training used and
calls the model with `training=False` explicitly, so served scores are the
in-memory model's scores (`model.export()` does not guarantee that when
augmentation is involved; see DESIGN.md). Endpoints:

  serving_default  images: uint8 [batch, height, width, 3], any size
  serve_bytes      image_bytes: string [batch] of encoded JPEG/PNG/GIF/BMP
  serve_float      images: float32 [batch, size, size, 3] in [0, 255]

Each returns scores (float32 softmax), logits, class_ids (int64) and
labels (the top-1 class name).
"""

import json
import logging
import os
import platform
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tl_keras import data as data_lib
from tl_keras.config import InputError

log = logging.getLogger("tl_keras")

SIGNATURES = ("serving_default", "serve_bytes", "serve_float")


def export_saved_model(model, export_dir, class_names, manifest=None,
                       overwrite=True, tflite=False):
    """Writes a SavedModel to `export_dir`, atomically.

    Args:
      model: a classifier taking float32 [0, 255] images of a fixed size.
      export_dir: the destination folder.
      class_names: names in class-id order (written to assets/labels.txt).
      manifest: extra fields for manifest.json (backbone, metrics, ...).
      overwrite: replace an existing export; if False it is an error.
      tflite: also write `model.tflite` (the float endpoint, built-in ops
        only) into the export folder.

    The export is written to a temporary folder next to `export_dir` and
    renamed into place, so a crash never leaves a half-written export
    where a good one was.

    Raises:
      InputError: `export_dir` exists and `overwrite` is False.
    """
    if os.path.exists(export_dir) and not overwrite:
        raise InputError(
            f"Invalid export_dir {export_dir!r}: an export is already "
            f"there. Allowed: a new path, or --overwrite to replace it. "
            f"Received: export_dir={export_dir!r}")
    archive = _build_archive(model, class_names)
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        archive.write_out(tmp, verbose=False)
        os.makedirs(os.path.join(tmp, "assets"), exist_ok=True)
        with open(os.path.join(tmp, "assets", "labels.txt"), "w") as f:
            f.write("\n".join(class_names) + "\n")
        if tflite:
            with open(os.path.join(tmp, "model.tflite"), "wb") as f:
                f.write(convert_to_tflite(model))
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(build_manifest(model, class_names, manifest), f,
                      indent=2)
        replace_dir(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Exported SavedModel to %s (signatures: %s)", export_dir,
             ", ".join(SIGNATURES))
    return export_dir


def convert_to_tflite(model):
    """Returns TFLite flatbuffer bytes of the float endpoint: float32
    [batch, size, size, 3] in [0, 255] -> scores. Built-in ops only, so it
    runs with the plain TFLite interpreter (no Flex delegate).

    Converted from a temporary SavedModel: converting the concrete function
    directly left the Keras 3 variables unfrozen (READ_VARIABLE ops that
    read nothing, so NaN scores).
    """
    size = model.input_shape[1]
    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    def scores(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        return {"scores": tf.nn.softmax(logits)}

    archive.add_endpoint("serving_default", scores)
    with tempfile.TemporaryDirectory(prefix="tl_keras-tflite-") as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()


def build_manifest(model, class_names, extra=None):
    """What a user of the export needs to know, in one JSON object."""
    size = model.input_shape[1]
    return {
        "format": "tl_keras SavedModel",
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "input": {
            "size": size,
            "value_range": [0, 255],
            "color": "RGB",
            "resize": "bilinear with antialiasing, rounded and clipped to "
                      "uint8 (tl_keras.data.resize_images)",
            "signatures": {
                "serving_default": "images: uint8 [batch, height, width, 3]",
                "serve_bytes": "image_bytes: string [batch], encoded "
                               "JPEG / PNG / GIF / BMP",
                "serve_float": f"images: float32 [batch, {size}, {size}, 3]"
                               " in [0, 255], already resized",
            },
        },
        "outputs": {"scores": "float32 softmax [batch, num_classes]",
                    "logits": "float32 [batch, num_classes]",
                    "class_ids": "int64 [batch], top-1",
                    "labels": "string [batch], top-1 class name"},
        "versions": {"tensorflow": tf.__version__,
                     "keras": keras.__version__,
                     "python": platform.python_version(),
                     "tl_keras": _tl_keras_version()},
        **(extra or {}),
    }


class _Archive:
    """What `export_saved_model` writes: a root object holding the model's
    variables, and the endpoints as signatures.

    Plain `tf.saved_model.save`: Keras's `ExportArchive` also saves every
    layer as an object and traces each endpoint once to check it before
    saving traces it again; for a MobileNetV2 classifier that took 18.9 s
    of a 66 s transfer run, this takes about half as long
    (bench/RESULTS.md).
    """

    def __init__(self, model, signatures):
        self.root = tf.Module(name="tl_keras_export")
        self.root.model_variables = list(model.variables)
        self.signatures = signatures

    def write_out(self, path, verbose=False):
        del verbose  # the same call as ExportArchive's
        # TensorFlow logs at INFO, through absl, the internal names of
        # every captured variable (hundreds of numbers per signature), each
        # checkpoint shard's timing and the fingerprint's path. A filter,
        # not the logger's level: while saving, TensorFlow sets absl's
        # verbosity and back, which resets that level (the CLI printed the
        # lines although the level had been raised).
        logger = logging.getLogger("absl")
        quiet = _BelowWarning()
        logger.addFilter(quiet)
        try:
            tf.saved_model.save(self.root, path, signatures=self.signatures)
        finally:
            logger.removeFilter(quiet)


class _BelowWarning(logging.Filter):
    """Drops records below WARNING."""

    def filter(self, record):
        return record.levelno >= logging.WARNING


def _build_archive(model, class_names):
    size = model.input_shape[1]
    names = tf.constant(list(class_names))

    # One traced model call that every endpoint calls: the model's graph is
    # traced and stored once, not once per endpoint.
    @tf.function(input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32)])
    def infer(images):
        return tf.cast(model(images, training=False), tf.float32)

    def outputs(images, endpoint):
        batch = tf.shape(images)[0]
        with tf.control_dependencies([tf.debugging.assert_positive(
                batch, message=f"{endpoint}: empty batch; send at least "
                               f"one image")]):
            logits = infer(images)
        ids = tf.argmax(logits, axis=-1, output_type=tf.int64)
        return {"scores": tf.nn.softmax(logits), "logits": logits,
                "class_ids": ids, "labels": tf.gather(names, ids)}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(images):
        resized = data_lib.resize_images(images, size)
        return outputs(tf.cast(resized, tf.float32), "serving_default")

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(image_bytes):
        def decode(encoded):
            return data_lib.resize_images(data_lib.decode_image(encoded),
                                          size)

        images = tf.map_fn(decode, image_bytes, fn_output_signature=(
            tf.TensorSpec([size, size, 3], tf.uint8)))
        return outputs(tf.cast(images, tf.float32), "serve_bytes")

    @tf.function(input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    def serve_float(images):
        return outputs(images, "serve_float")

    return _Archive(model, {"serving_default": serve,
                            "serve_bytes": serve_bytes,
                            "serve_float": serve_float})


class ExportedClassifier:
    """A loaded export: `predict(images or paths)` -> dict of numpy arrays.

    Use `load_exported(path)` to make one.
    """

    def __init__(self, path):
        self.path = path
        self._model = tf.saved_model.load(path)
        with open(os.path.join(path, "manifest.json")) as f:
            self.manifest = json.load(f)
        self.class_names = self.manifest["class_names"]
        self.image_size = self.manifest["input"]["size"]

    def predict(self, inputs, batch_size=64):
        """Scores a batch of uint8 images or a list of image file paths.

        Args:
          inputs: a uint8 array [batch, height, width, 3], or a list of
            paths to JPEG / PNG / GIF / BMP files.
          batch_size: how many images go to the model at once.

        Returns:
          {'scores', 'logits', 'class_ids', 'labels'} as numpy arrays
          (labels as Python strings).
        """
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)):
            fn = self._model.signatures["serve_bytes"]
            chunks = [fn(image_bytes=tf.constant(
                [_read_bytes(p) for p in inputs[i:i + batch_size]]))
                for i in range(0, len(inputs), batch_size)]
        else:
            images = np.asarray(inputs)
            if images.dtype != np.uint8 or images.ndim != 4 or (
                    images.shape[-1] != 3):
                raise InputError(
                    f"Invalid images. Allowed: uint8 [batch, height, width,"
                    f" 3]. Received: dtype={images.dtype}, shape="
                    f"{images.shape}")
            fn = self._model.signatures["serving_default"]
            chunks = [fn(images=tf.constant(images[i:i + batch_size]))
                      for i in range(0, len(images), batch_size)]
        if not chunks:
            raise InputError("Invalid inputs: empty. Allowed: at least one "
                             "image. Received: 0 images")
        out = {k: np.concatenate([c[k].numpy() for c in chunks])
               for k in chunks[0]}
        out["labels"] = [s.decode() for s in out["labels"]]
        return out


def load_exported(path):
    """Loads a tl_keras export for prediction.

    Raises:
      InputError: `path` is not a tl_keras SavedModel export.
    """
    if not (os.path.isfile(os.path.join(path, "saved_model.pb"))
            and os.path.isfile(os.path.join(path, "manifest.json"))):
        raise InputError(
            f"Invalid export_dir: {path!r} is not a tl_keras export (no "
            f"saved_model.pb and manifest.json). Allowed: <workdir>/export "
            f"or a folder written by --mode=export. Received: export_dir="
            f"{path!r}")
    return ExportedClassifier(path)


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise InputError(f"Invalid input {path!r}: {e.strerror}. Allowed: "
                         f"readable image files. Received: {path!r}") from None


def _tl_keras_version():
    import tl_keras

    return tl_keras.__version__


def replace_dir(src, dst):
    """Moves `src` to `dst`; an old `dst` is removed only after the move."""
    old = None
    if os.path.exists(dst):
        old = dst + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old:
        shutil.rmtree(old, ignore_errors=True)
