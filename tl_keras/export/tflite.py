"""TFLite: the float endpoint as a flatbuffer, built-in ops only."""

import tempfile

import keras
import tensorflow as tf

from tl_keras import inference
from tl_keras.export import checks
from tl_keras.export.logs import quiet_absl


def convert_to_tflite(model):
    """Returns TFLite flatbuffer bytes of the float endpoint: float32
    [batch, size, size, 3] in [0, 255] -> scores. Built-in ops only, so it
    runs with the plain TFLite interpreter (no Flex delegate).

    Converted from a temporary SavedModel: converting the concrete function
    directly left the Keras 3 variables unfrozen (READ_VARIABLE ops that
    read nothing, so NaN scores).
    """
    checks.check_model(model)
    return tflite_bytes(model, checks.logits_of(model))


def tflite_bytes(model, as_logits):
    """`convert_to_tflite` of a checked `model` whose outputs `as_logits`
    (`checks.logits_of`) turns into logits: `export_saved_model` has
    both already (the probe that finds a softmax model is a forward
    pass)."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def scores(images):
        logits = as_logits(tf.cast(model(images, training=False),
                                   tf.float32))
        return {"scores": tf.nn.softmax(logits)}

    archive.add_endpoint("serving_default",
                         inference.traced(scores, model, name="images"))
    with (tempfile.TemporaryDirectory(prefix="tl_keras-tflite-") as tmp,
          quiet_absl()):
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS]
        return converter.convert()
