"""SavedModel export with the whole inference path inside.

The serving function resizes uint8 images with the same `resize_images`
training used and calls the model with `training=False` explicitly, so the
served scores are the in-memory model's scores (`model.export()` does not
guarantee that when augmentation is involved; see DESIGN.md).
"""

import logging
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from tl_keras import data as data_lib

log = logging.getLogger("tl_keras")


def export_saved_model(model, export_dir, class_names):
    """Writes a SavedModel to `export_dir`, atomically.

    Signature `serving_default`: `images`, uint8 [batch, height, width, 3]
    of any size -> `scores`, float32 softmax [batch, num_classes]. The
    label map is `assets/labels.txt`, one class name per line.

    The export is written to a temporary folder next to `export_dir` and
    renamed into place, so a crash never leaves a half-written export
    where a good one was.
    """
    size = model.input_shape[1]
    archive = keras.export.ExportArchive()
    archive.track(model)

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(images):
        x = tf.cast(data_lib.resize_images(images, size), tf.float32)
        logits = model(x, training=False)
        return {"scores": tf.nn.softmax(tf.cast(logits, tf.float32))}

    archive.add_endpoint("serving_default", serve)
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        archive.write_out(tmp, verbose=False)
        os.makedirs(os.path.join(tmp, "assets"), exist_ok=True)
        with open(os.path.join(tmp, "assets", "labels.txt"), "w") as f:
            f.write("\n".join(class_names) + "\n")
        _replace_dir(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Exported SavedModel to %s", export_dir)
    return export_dir


def _replace_dir(src, dst):
    """Moves `src` to `dst`; an old `dst` is removed only after the move."""
    old = None
    if os.path.exists(dst):
        old = dst + ".old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old:
        shutil.rmtree(old, ignore_errors=True)
