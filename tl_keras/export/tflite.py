"""TFLite: the float endpoint as a flatbuffer, built-in ops only."""

import tempfile

import keras
import tensorflow as tf

from tl_keras import inference
from tl_keras.export import checks
from tl_keras.export.logs import quiet_absl
from tl_keras.models.model_files import set_weights


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
    model = float32_model(model)
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


def float32_model(model):
    """`model` when every layer computes in float32; else a copy that
    does, with the same weights. TFLite's built-in ops take no float16
    or bfloat16: a mixed_float16 model (what --mixed_precision=auto picks
    on a GPU with tensor cores) failed to convert at every Conv2D ("neither
    a custom op nor a flex op"), after the whole run had trained, and the
    run never finished. Mixed precision keeps the variables in float32,
    so the copy's weights are the model's own; its scores differ from the
    16-bit graph's by 16-bit rounding only."""
    config = keras.saving.serialize_keras_object(model)
    if not _sixteen_bit(config):
        return model
    copy = keras.saving.deserialize_keras_object(_as_float32(config))
    set_weights(copy, model.get_weights())
    return copy


def _sixteen_bit(config):
    """Whether a serialized model holds a dtype policy other than
    float32."""
    if isinstance(config, dict):
        if _is_policy(config):
            return config["config"].get("name") != "float32"
        return any(_sixteen_bit(v) for v in config.values())
    return isinstance(config, list) and any(_sixteen_bit(v) for v in config)


def _as_float32(config):
    """A serialized model with every dtype policy float32."""
    if isinstance(config, dict):
        if _is_policy(config):
            return {**config, "config": {**config["config"],
                                         "name": "float32"}}
        return {k: _as_float32(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_as_float32(v) for v in config]
    return config


def _is_policy(config):
    return config.get("class_name") == "DTypePolicy" and isinstance(
        config.get("config"), dict)
