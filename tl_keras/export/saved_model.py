"""SavedModel export with the whole inference path inside.

Every endpoint resizes with the same `resize_images` training used and
calls the model with `training=False` explicitly, so served scores are the
in-memory model's scores (`model.export()` does not guarantee that when
augmentation is involved; see docs/design.md). Endpoints:

  serving_default  images: uint8 [batch, height, width, 3], any size
  serve_bytes      image_bytes: string [batch] of encoded JPEG/PNG/GIF/BMP
  serve_float      images: float32 [batch, size, size, 3] in [0, 255]

Each returns scores (float32 softmax), logits, class_ids (int64) and
labels (the top-1 class name). A model whose outputs are softmax
probabilities is served as it is: its logits are the logs of its
probabilities (`checks.logits_of`), so the scores are its own.
"""

import logging
import os
import platform
import secrets
import shutil

import keras
import tensorflow as tf

from tl_keras import inference, io
from tl_keras.data.images import (
    MAX_PIXELS,
    TF_BMP_BITS,
    animated_webp,
    bmp_bits,
    declared_pixels,
    decode_image,
    misread_bmp,
    resize_images,
)
from tl_keras.data.misread import GIF_ADVICE, misread_gif
from tl_keras.errors import InputError
from tl_keras.export import checks
from tl_keras.export.logs import quiet_absl
from tl_keras.export.tflite import tflite_bytes
from tl_keras.version import __version__

log = logging.getLogger("tl_keras")

SIGNATURES = ("serving_default", "serve_bytes", "serve_float")
MANIFEST_FORMAT = "tl_keras SavedModel"
# The name prefix of the folder an export is written to before it is
# renamed into place (a killed writer can leave one behind).
TEMP_PREFIX = ".export-"


def export_saved_model(model, export_dir, class_names, manifest=None,
                       overwrite=True, tflite=False, keep_old=True):
    """Writes a SavedModel to `export_dir`, atomically.

    Args:
      model: a classifier taking float32 [0, 255] images of a fixed size,
        giving logits (or softmax probabilities).
      export_dir: the destination folder (a leading `~`: the home one).
      class_names: names in class-id order (written to assets/labels.txt).
      manifest: extra fields for manifest.json (backbone, metrics, ...).
      overwrite: replace an existing export; if False it is an error.
      tflite: also write `model.tflite` (the float endpoint, built-in ops
        only) into the export folder.
      keep_old: move an old tl_keras export aside too (it may be another
        run's only copy); False replaces it (a run's own export).

    Written to a temporary folder next to `export_dir`, renamed into
    place (a crash never leaves a half-written export where a good one
    was). What was there is moved aside to `<export_dir>.replaced-<time>`,
    never deleted (but an old tl_keras export when not `keep_old`); a
    symlink stays, and the folder it names is replaced.

    Raises:
      InputError: before anything is written, for each bad argument
        (`checks`; `export_dir` there and `overwrite` False).
    """
    export_dir, class_names, as_logits = _checked_call(
        model, export_dir, class_names, manifest, overwrite, tflite=tflite,
        keep_old=keep_old)
    archive = _build_archive(model, class_names, as_logits)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    # Not tempfile.mkdtemp, which makes 0700: the export gets the umask's
    # mode, as the rest of the run, readable by a server of another user.
    tmp = os.path.join(parent, TEMP_PREFIX + secrets.token_hex(8))
    os.mkdir(tmp)
    try:
        archive.write_out(tmp, verbose=False)
        os.makedirs(os.path.join(tmp, "assets"), exist_ok=True)
        io.write_text(os.path.join(tmp, "assets", "labels.txt"),
                      "\n".join(class_names) + "\n")
        if tflite:
            with open(os.path.join(tmp, "model.tflite"), "wb") as f:
                f.write(tflite_bytes(model, as_logits))
        io.write_json(os.path.join(tmp, "manifest.json"), build_manifest(
            model, class_names, {**(manifest or {}), **(
                {"tflite": _TFLITE} if tflite else {})}))
        old_export = is_export(export_dir)
        kept = io.replace_dir(tmp, export_dir,
                              discard_old=old_export and not keep_old)
        if kept:
            log.warning("%s held %s; moved it to %s", export_dir,
                        "an earlier export" if old_export else
                        "something other than a tl_keras export", kept)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Exported SavedModel to %s (signatures: %s)", export_dir,
             ", ".join(SIGNATURES))
    return export_dir


def _checked_call(model, export_dir, class_names, manifest, overwrite,
                  **switches):
    """`export_saved_model`'s checks (`checks`): the destination (not
    replaced unless `overwrite`), the model and its class names, the
    manifest's extra fields and the switches; returns (export_dir,
    class_names, as_logits: `checks.logits_of`, found once for the
    SavedModel and the TFLite file, a forward pass); export_dir with
    its links resolved."""
    export_dir = checks.check_arguments(export_dir, manifest,
                                        overwrite=overwrite, **switches)
    if os.path.exists(export_dir) and not overwrite:
        there = ("an export is" if is_export(export_dir) else
                 "something other than a tl_keras export is")
        raise InputError(
            f"Invalid export_dir {export_dir!r}: {there} already there. "
            f"Allowed: a new path, or --overwrite to replace it (anything "
            f"but an export is moved aside). Received: "
            f"export_dir={export_dir!r}")
    class_names = checks.check_class_names_of(model, class_names)
    # The real folder: a link (<workdir>/export -> a serving folder) is
    # kept and the folder it names replaced (swapping the link for a
    # folder failed, IsADirectoryError, after the export was built).
    return (os.path.realpath(export_dir), class_names,
            checks.logits_of(model))


def remove_stale_exports(folder):
    """Deletes the hidden folders that interrupted exports into `folder`
    left: an export's temporary folder (`TEMP_PREFIX`, compare's copy
    too) and `io.replace_dir`'s old export. Only for a folder whose
    writer holds its lock (no other writer can be filling them)."""
    prefixes = (TEMP_PREFIX, io.old_prefix("export"))
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(prefixes) and os.path.isdir(path):
            log.info("Removing %s, left by an interrupted export", path)
            shutil.rmtree(path, ignore_errors=True)


def is_export(path):
    """Whether `path` holds a tl_keras export (its manifest says so): the
    only kind of folder an export replaces instead of moving aside."""
    try:
        manifest = io.read_json(os.path.join(path, "manifest.json"))
    except InputError:  # missing, torn or not an object
        return False
    return manifest.get("format") == MANIFEST_FORMAT


# The manifest's word on model.tflite (--export_tflite), whose input the
# interpreter does not check as serve_float does.
_TFLITE = {
    "file": "model.tflite",
    "input": "float32 [batch, size, size, 3] in [0, 255], already resized, "
             "as serve_float; the interpreter allocates batch 1 "
             "(resize_tensor_input for more); values are not range-checked",
    "outputs": "scores: float32 softmax [batch, num_classes]",
}


def build_manifest(model, class_names, extra=None):
    """What a user of the export needs to know, in one JSON object."""
    size = model.input_shape[1]
    return {
        "format": MANIFEST_FORMAT,
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
                               "JPEG / PNG / GIF / BMP / WebP (still)",
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
                     "tl_keras": __version__},
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

    def __init__(self, model, signatures, class_names):
        self.root = tf.Module(name="tl_keras_export")
        self.root.model_variables = list(model.variables)
        # The names the `labels` output gives, readable after loading
        # (`loaded.class_names()`): manifest.json and labels.txt are
        # copies a hand can edit. A function, not a string variable,
        # which a distribution strategy's scope would try to mirror.
        names = list(class_names)
        self.root.class_names = tf.function(
            lambda: tf.constant(names), input_signature=[])
        self.signatures = signatures

    def write_out(self, path, verbose=False):
        del verbose  # the same call as ExportArchive's
        with quiet_absl():
            tf.saved_model.save(self.root, path, signatures=self.signatures)


def _decode_within_limit(encoded, size, index):
    """Decodes and resizes image_bytes[index], refusing one whose header
    is of no format TensorFlow decodes or declares more than MAX_PIXELS,
    before anything is decoded; each refusal names the index (TensorFlow's
    own "Unknown image file format" named none, in a batch of many)."""
    pixels = declared_pixels(encoded)
    which = tf.strings.join(["serve_bytes: image_bytes[",
                             tf.strings.as_string(index), "] "])

    def refused(test, text, *received):
        return tf.debugging.Assert(
            test, [tf.strings.join([which, text]), *received])

    with tf.control_dependencies([
            refused(pixels > 0,
                    "has no JPEG, PNG, GIF, BMP or WebP header declaring a "
                    "width and height (not an image, or cut short); its "
                    "first bytes:", tf.io.decode_raw(
                        tf.strings.substr(encoded, 0, 12), tf.uint8)),
            refused(pixels <= MAX_PIXELS,
                    f"declares more than {MAX_PIXELS:,} pixels (a "
                    f"decompression bomb?); refused before decoding. "
                    f"Declared:", pixels),
            refused(tf.logical_not(misread_bmp(encoded)),
                    f"holds a BMP of other than {TF_BMP_BITS} bits per pixel "
                    f"(TensorFlow decodes palette BMPs to their indices); "
                    f"send it as PNG. Received bits per pixel:",
                    bmp_bits(encoded)),
            refused(tf.logical_not(animated_webp(encoded)),
                    "holds a WebP whose header marks it animated, which "
                    "TensorFlow's decoder cannot take as RGB; send a still "
                    "image (e.g. one frame as PNG)")]):
        image = decode_image(encoded)
    with tf.control_dependencies([refused(
            tf.logical_not(misread_gif(encoded, image)),
            f"holds {GIF_ADVICE}")]):
        return resize_images(image, size)


def _in_pixel_range(images, size):
    """`images`, once checked to be [batch, size, size, 3] float pixels in
    [0, 255]: [0, 1] inputs would give confident wrong answers, so an
    image whose largest value is in (0, 1] is refused (all-black images
    pass; one scaled image in a batch of others is caught too), and so is
    anything outside [0, 255]. A loaded signature does not check its
    input's height and width: a smaller image gave NaN scores."""
    top = tf.reduce_max(images, axis=[1, 2, 3])  # per image
    bottom = tf.reduce_min(images)
    with tf.control_dependencies([
            tf.debugging.assert_equal(
                tf.shape(images)[1:3], [size, size],
                message=f"serve_float: images must be [batch, {size}, "
                        f"{size}, 3] (serving_default and serve_bytes "
                        f"resize; this one does not)"),
            tf.debugging.Assert(
                tf.logical_and(bottom >= 0.0, tf.reduce_all(top <= 255.0)),
                ["serve_float: pixel values must lie in [0, 255]; "
                 "received min and max", bottom, tf.reduce_max(top)]),
            tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(
                    tf.logical_and(top > 0.0, top <= 1.0))),
                ["serve_float: every value of an image lies in [0, 1]: scale "
                 "images to [0, 255] (as uint8 images are); per-image "
                 "max", top])]):
        return tf.identity(images)


def _build_archive(model, class_names, as_logits):
    size = model.input_shape[1]
    names = tf.constant(list(class_names))

    # One traced model call that every endpoint calls: the model's graph is
    # traced and stored once, not once per endpoint.
    infer = inference.traced(lambda x: as_logits(tf.cast(
        model(x, training=False), tf.float32)), model)

    def outputs(images, endpoint):
        # A loaded signature does not check its input's shape against the
        # signature, so a wrong one would fail deep inside the base.
        shape = tf.shape(images)
        with tf.control_dependencies([
                tf.debugging.assert_positive(
                    shape[0], message=f"{endpoint}: empty batch; send at "
                                      f"least one image"),
                tf.debugging.assert_equal(
                    shape[-1], 3, message=f"{endpoint}: images must have 3 "
                                          f"(RGB) channels")]):
            logits = infer(images)
        ids = tf.argmax(logits, axis=-1, output_type=tf.int64)
        return {"scores": tf.nn.softmax(logits), "logits": logits,
                "class_ids": ids, "labels": tf.gather(names, ids)}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(images):
        resized = resize_images(images, size)
        return outputs(tf.cast(resized, tf.float32), "serving_default")

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(image_bytes):
        def decode(indexed):
            return _decode_within_limit(indexed[1], size, indexed[0])

        images = tf.map_fn(decode, (tf.range(tf.size(image_bytes)),
                                    image_bytes),
                           fn_output_signature=tf.TensorSpec(
                               [size, size, 3], tf.uint8))
        return outputs(tf.cast(images, tf.float32), "serve_bytes")

    @tf.function(input_signature=[
        tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    def serve_float(images):
        return outputs(_in_pixel_range(images, size), "serve_float")

    return _Archive(model, class_names=class_names, signatures={
        "serving_default": serve, "serve_bytes": serve_bytes,
        "serve_float": serve_float})
