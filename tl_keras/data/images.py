"""Decoding and resizing: the one place pixels are made.

Training, the advisor, evaluation and every serving endpoint call the same
`decode_image` and `resize_images`, so the model sees the same pixels in
all of them. `find_unreadable` checks files with PIL before TensorFlow
meets them.
"""

import concurrent.futures
import logging
import os
import stat
import threading

import tensorflow as tf
from PIL import Image

from tl_keras.data.misread import misread_gif

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
    """Decodes JPEG / PNG / BMP / GIF / WebP bytes to uint8 RGB (first GIF
    frame).

    Grayscale is replicated to three channels, alpha is dropped, 16-bit PNG
    is scaled to 8 bits. A still WebP is decoded by `tf.io.decode_webp`:
    `tf.io.decode_image` asks it for 3 channels, which one with alpha
    refuses. An animated WebP goes to `tf.io.decode_image`, which refuses
    it ("WebP Animation must be 4 channel RGBA"): `tf.io.decode_webp`
    corrupted the heap on one (TF 2.21), so it never sees one.
    """
    def still_webp():  # [1, height, width, 3 or 4]
        return tf.io.decode_webp(data)[0, :, :, :3]

    def other():
        return tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                  expand_animations=False)

    still = tf.logical_and(_is_webp(_head(data)),
                           tf.logical_not(animated_webp(data)))
    image = tf.cond(still, still_webp, other)
    image.set_shape([None, None, 3])
    return image


def _head(data):
    """The first 32 bytes of encoded `data`, zero-padded: substr past the
    end is an error, not "" (b"hello" failed a header check with "pos 12
    out of range")."""
    return tf.strings.join([tf.strings.substr(data, 0, 32), b"\0" * 32])


def _is_webp(head):
    """Whether `head` (`_head`) starts a WebP file (RIFF container)."""
    return tf.logical_and(tf.equal(tf.strings.substr(head, 0, 4), b"RIFF"),
                          tf.equal(tf.strings.substr(head, 8, 4), b"WEBP"))


def animated_webp(data):
    """Whether a WebP's extended header (VP8X) sets the animation flag."""
    head = _head(data)
    return tf.logical_and(
        tf.equal(tf.strings.substr(head, 12, 4), b"VP8X"),
        tf.not_equal(tf.bitwise.bitwise_and(
            tf.io.decode_raw(tf.strings.substr(head, 20, 1), tf.uint8)[0],
            tf.constant(2, tf.uint8)), 0))


# The most pixels an encoded image may declare before it is decoded:
# PIL's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS, 89,478,485:
# ~0.27 GB as RGB), which the training files are checked against too. A
# ~100 KB PNG can declare enough pixels to need ~1.2 GB decoded.
MAX_PIXELS = 89_478_485


def _header_field(data, offset, length, big_endian):
    """An unsigned integer of `length` bytes at `offset` of encoded bytes
    (int64 scalar tensor)."""
    raw = tf.cast(tf.io.decode_raw(
        tf.strings.substr(data, offset, length), tf.uint8), tf.int64)
    weights = 256 ** (tf.range(length, dtype=tf.int64) if not big_endian
                      else tf.range(length - 1, -1, -1, dtype=tf.int64))
    return tf.reduce_sum(raw * weights)


def declared_pixels(data):
    """Width x height that encoded JPEG / PNG / GIF / BMP / WebP bytes
    declare in their header, read without decoding the pixels (int64
    scalar; 0 for bytes of another format or a PNG without its IHDR
    header, which decoding then rejects)."""
    def bmp_side(offset):  # signed 32-bit little-endian (top-down: < 0)
        value = _header_field(data, offset, 4, False)
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))

    long_enough = tf.strings.length(data) >= 26
    head = _head(data)
    png = tf.logical_and(
        tf.equal(tf.strings.substr(head, 0, 8), b"\x89PNG\r\n\x1a\n"),
        tf.equal(tf.strings.substr(head, 12, 4), b"IHDR"))
    return tf.case([
        # No length gate: `head` is padded, and a 25-byte lossless header
        # declaring 16,384 x 16,384 made TensorFlow set aside ~1 GB.
        (_is_webp(head), lambda: _webp_pixels(head)),
        (tf.logical_and(long_enough, png),
         lambda: _header_field(data, 16, 4, True)
         * _header_field(data, 20, 4, True)),
        (tf.logical_and(long_enough, tf.equal(
            tf.strings.substr(data, 0, 4), b"GIF8")),
         lambda: _header_field(data, 6, 2, False)
         * _header_field(data, 8, 2, False)),
        (tf.logical_and(long_enough, tf.equal(
            tf.strings.substr(data, 0, 2), b"BM")),
         lambda: bmp_side(18) * bmp_side(22)),
        (tf.equal(tf.strings.substr(data, 0, 2), b"\xff\xd8"),
         lambda: tf.reduce_prod(tf.cast(
             tf.image.extract_jpeg_shape(data)[:2], tf.int64)))],
        default=lambda: tf.constant(0, tf.int64))


def _webp_pixels(head):
    """Width x height a WebP header (`head`, its first 32 bytes) declares:
    a lossy one's 14-bit sides, a lossless one's 14-bit sides minus one,
    an extended one's 24-bit canvas sides minus one (RFC 9649)."""
    kind = tf.strings.substr(head, 12, 4)
    bits = _header_field(head, 21, 4, False)
    return tf.case([
        (tf.equal(kind, b"VP8 "),
         lambda: tf.bitwise.bitwise_and(_header_field(head, 26, 2, False),
                                        0x3FFF)
         * tf.bitwise.bitwise_and(_header_field(head, 28, 2, False),
                                  0x3FFF)),
        (tf.equal(kind, b"VP8L"),
         lambda: (tf.bitwise.bitwise_and(bits, 0x3FFF) + 1)
         * (tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 14),
                                   0x3FFF) + 1)),
        (tf.equal(kind, b"VP8X"),
         lambda: (_header_field(head, 24, 3, False) + 1)
         * (_header_field(head, 27, 3, False) + 1))],
        default=lambda: tf.constant(0, tf.int64))


def bmp_bits(data):
    """The bits per pixel a BMP's header declares (int64 scalar tensor; 0
    for bytes of another format)."""
    bmp = tf.logical_and(tf.strings.length(data) >= 30, tf.equal(
        tf.strings.substr(data, 0, 2), b"BM"))
    return tf.cond(bmp, lambda: _header_field(data, 28, 2, False),
                   lambda: tf.constant(0, tf.int64))


def misread_bmp(data):
    """Whether encoded bytes are a BMP that TensorFlow's decoder gets
    wrong (`TF_BMP_BITS`): bool scalar tensor."""
    bits = bmp_bits(data)
    return tf.logical_and(bits > 0, tf.logical_not(tf.reduce_any(
        tf.equal(bits, TF_BMP_BITS))))


# The formats tf.io.decode_image reads (MPO is a JPEG with extra frames).
_TF_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "GIF", "WEBP"}


# The BMP bit depths TensorFlow's decoder reads right: a palette BMP (1,
# 4 or 8 bits) decodes to its palette indices (up to 242 levels off) or
# fails, a 16-bit one fails ("2 channels").
TF_BMP_BITS = (24, 32)
# What `find_unreadable` lets through, as messages name it.
READABLE_FORMATS = ("JPEG / PNG / GIF (a first frame that fills its canvas, "
                    "without transparent pixels) / BMP (24 or 32 bits) / "
                    "still WebP")


# The EXIF tag of a camera's "rotate / mirror when shown" (1: as stored).
EXIF_ORIENTATION = 0x0112


def _is_readable(path):
    """(readable, turned): fully decodes with PIL (JPEG at reduced scale,
    for speed), so a truncated file is caught here, not mid-training
    inside TensorFlow; refuses what TensorFlow, which decodes the images
    for training and serving, would read differently from PIL (BMPs of
    other bit depths than `TF_BMP_BITS`, GIFs of `misread.misread_gif`;
    convert such files to PNG); and
    says whether the file's EXIF asks for a rotation or mirror, which
    TensorFlow's decoder does not apply."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False, False  # a FIFO named .png: opening it hung
        with Image.open(path) as image:
            if image.format not in _TF_FORMATS or (
                    image.width * image.height > MAX_PIXELS) or (
                    image.format == "WEBP" and getattr(
                        image, "n_frames", 1) > 1):  # see decode_image
                return False, False
            return _decodes(path, image), _turned(image)
    except Exception:  # noqa: BLE001 - PIL raises many types for bad files
        return False, False


def _turned(image):
    """Whether `image`'s EXIF asks a viewer to rotate or mirror it (2-8;
    a malformed EXIF block, which TensorFlow's decoder never reads, says
    no). The EXIF read when the file was opened: a PNG's own getexif()
    decodes the whole image to look past its pixels, a second decode."""
    try:
        return Image.Image.getexif(image).get(EXIF_ORIENTATION, 1) in range(
            2, 9)
    except Exception:  # noqa: BLE001 - PIL's EXIF parser raises many types
        return False


def _decodes(path, image):
    """Whether `image` (open in PIL, from `path`) decodes to the end as
    TensorFlow would read it (raises on a broken file)."""
    if image.format == "BMP":
        with open(path, "rb") as f:
            header = f.read(30)
        if int.from_bytes(header[28:30], "little") not in TF_BMP_BITS:
            return False
    if image.format in ("PNG", "WEBP", "GIF"):
        # PIL decodes a PNG cut short after its pixels or with a bad CRC,
        # which TensorFlow then refuses mid-training: check with the
        # decoder training uses instead (and a WebP, TensorFlow's
        # decoder being another build of libwebp; and a GIF, which it can
        # decode as another picture: `misread.misread_gif`).
        with open(path, "rb") as f:
            data = f.read()
        decoded = decode_image(data)  # eagerly: a failure raises, unlogged
        return image.format != "GIF" or not bool(_check_gif(data, decoded))
    image.draft("RGB", (64, 64))
    image.load()
    return True


# Traced once: eagerly, the check's loop took 4 ms a file (0.7 ms so).
_misread_gif = tf.function(misread_gif, input_signature=[
    tf.TensorSpec([], tf.string), tf.TensorSpec([None, None, 3], tf.uint8)])
_GIF_TRACE = threading.Lock()


def _check_gif(data, decoded):
    """`_misread_gif`, whose first call (the trace) one thread makes while
    the others wait: `find_unreadable`'s threads, each calling it during
    the trace, made TensorFlow warn of retracing in every run (it traced
    once)."""
    if _misread_gif.experimental_get_tracing_count():
        return _misread_gif(data, decoded)
    with _GIF_TRACE:
        return _misread_gif(data, decoded)


_WARNED_TURNED = set()


def find_unreadable(paths):
    """Returns the paths that are not decodable images (or that
    TensorFlow would decode wrongly: BMPs of 1 to 16 bits, GIFs of
    `misread.misread_gif`; or that
    declare more than MAX_PIXELS), checked in parallel (PIL's decoders
    release the GIL). Warns about readable files whose EXIF orientation
    asks a viewer to rotate or mirror them: like `tf.io.decode_image`
    and Keras's `image_dataset_from_directory`, tl_keras uses the pixels
    as stored, in training and serving alike."""
    if len(paths) > 2000:
        log.info("Checking %d image files ...", len(paths))
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        checked = list(pool.map(_is_readable, paths, chunksize=64))
    turned = [p for p, (good, t) in zip(paths, checked, strict=True)
              if good and t and p not in _WARNED_TURNED]
    _WARNED_TURNED.update(turned)  # once per file and process (predict loops)
    if turned:
        log.warning(
            "%d image file(s) have an EXIF orientation (a camera's 'rotate "
            "or mirror when shown') that tl_keras, like tf.io.decode_image "
            "and Keras's image_dataset_from_directory, does not apply: "
            "their pixels are used as stored (e.g. on their side), in "
            "training and serving alike. To use them as a viewer shows "
            "them, rotate the pixels on disk (PIL: ImageOps.exif_transpose; "
            "or `exiftran -ai`): %s", len(turned),
            ", ".join(turned[:5]) + (" ..." if len(turned) > 5 else ""))
    return [p for p, (good, _) in zip(paths, checked, strict=True)
            if not good]
