"""Decoding and resizing: the one place pixels are made.

Training, the advisor, evaluation and every serving endpoint call the same
`decode_image` and `resize_images`, so the model sees the same pixels in
all of them. `find_unreadable` checks files with PIL before TensorFlow
meets them.
"""

import concurrent.futures
import logging

import tensorflow as tf
from PIL import Image

log = logging.getLogger("tl_keras")


def resize_images(images, size):
    """Resizes uint8 images to (size, size) exactly as training does.

    Bilinear with antialiasing (so downscaling does not alias), then
    rounded and clipped back to uint8. Works on one image or a batch.
    """
    x = tf.image.resize(images, (size, size), method="bilinear",
                        antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def decode_image(data):
    """Decodes JPEG / PNG / BMP / GIF bytes to uint8 RGB (first GIF frame).

    Grayscale is replicated to three channels, alpha is dropped, 16-bit PNG
    is scaled to 8 bits.
    """
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    return image


# The formats tf.io.decode_image reads (MPO is a JPEG with extra frames).
_TF_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "GIF"}


def _is_readable(path):
    """Fully decodes with PIL (JPEG at reduced scale, for speed), so a
    truncated file is caught here, not mid-training inside TensorFlow."""
    try:
        with Image.open(path) as image:
            if image.format not in _TF_FORMATS:
                return False
            image.draft("RGB", (64, 64))
            image.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types for bad files
        return False


def find_unreadable(paths):
    """Returns the paths that are not decodable images, checked in
    parallel (PIL's decoders release the GIL)."""
    if len(paths) > 2000:
        log.info("Checking %d image files ...", len(paths))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ok = list(pool.map(_is_readable, paths, chunksize=64))
    return [p for p, good in zip(paths, ok, strict=True) if not good]
