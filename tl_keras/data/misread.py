"""Encoded images that TensorFlow's decoder reads other than a viewer.

`tf.io.decode_image` decodes a GIF's first frame at the frame's own size
and position: a frame placed off the canvas's corner or smaller than it
comes out cropped and shifted, the rest black (a 12 x 12 frame at (12, 12)
of a 24 x 24 canvas decoded all black), and the frame's transparent colour
comes out black, where a PNG's transparent pixels keep their stored colour
(PIL, and `decode_image` for PNG). Such a GIF would train and be served as
another picture than it is, so it is refused, in the file check and in
`serve_bytes` alike (the same function): converted to PNG it reads right.

The checks read the GIF's blocks in TensorFlow ops, so a SavedModel runs
them without Python.
"""

import tensorflow as tf

GIF_ADVICE = ("a GIF whose first frame does not fill its canvas from the "
              "top-left corner, or shows transparent pixels, which "
              "TensorFlow's decoder turns black; convert it to PNG")


def _bytes(data):
    """Encoded `data` as int32 bytes, padded with zeros so reads a few
    bytes past a truncated header stay in range."""
    return tf.cast(tf.io.decode_raw(
        tf.strings.join([data, b"\0" * 16]), tf.uint8), tf.int32)


def _gif_first_frame(raw):
    """(image descriptor position, position of the transparency flag or
    -1) of a GIF's first frame: walks the extension blocks (each a label,
    then sub-blocks of a length byte and that many bytes, ending at a zero
    length) that precede the first image descriptor (0x2C); the flag is
    the packed byte of the last Graphic Control Extension (0x21 0xF9)
    among them, when it sets a transparent colour."""
    size = tf.size(raw)

    def byte(i):
        return tf.gather(raw, tf.minimum(i, size - 1))

    flags = byte(10)
    start = 13 + tf.where(flags >= 128,
                          3 * tf.bitwise.left_shift(2, flags % 8), 0)

    def more(pos, in_blocks, _):
        return tf.logical_and(pos < size, tf.logical_or(
            in_blocks, tf.equal(byte(pos), 0x21)))

    def step(pos, in_blocks, flag_at):
        length = byte(pos)
        control = tf.logical_and(
            tf.logical_not(in_blocks), tf.equal(byte(pos + 1), 0xF9))
        flag_at = tf.where(
            control, tf.where(byte(pos + 3) % 2 == 1, pos + 3, -1), flag_at)
        pos = tf.where(in_blocks, pos + length + 1, pos + 2)
        return pos, tf.logical_or(tf.logical_not(in_blocks), length > 0), \
            flag_at

    pos, _, flag_at = tf.while_loop(
        more, step, (start, tf.constant(False), tf.constant(-1)),
        maximum_iterations=size)
    return pos, flag_at


def misread_gif(data, image):
    """Whether encoded `data` is a GIF whose decoded first frame, `image`
    (uint8 [height, width, 3] from `images.decode_image`), is not what a
    viewer shows: a frame off the corner or smaller than the canvas, or
    one whose transparent pixels TensorFlow decoded black. The latter is
    found by decoding the GIF again with its transparency flag cleared
    (its pixels then keep their stored colour, as PIL and a PNG give
    them): a transparent colour it does not use changes nothing. Bool
    scalar tensor."""
    def check():
        raw = _bytes(data)

        def word(i):  # unsigned 16-bit little-endian
            return raw[i] + 256 * raw[i + 1]

        pos, flag_at = _gif_first_frame(raw)
        pos = tf.minimum(pos, tf.size(raw) - 16)
        partial = tf.logical_or(
            tf.logical_not(tf.equal(raw[pos], 0x2C)), tf.reduce_any([
                word(pos + 1) > 0, word(pos + 3) > 0,
                word(pos + 5) < word(6), word(pos + 7) < word(8)]))

        def transparent_shown():
            cleared = tf.strings.join([
                tf.strings.substr(data, 0, flag_at),
                tf.strings.substr(tf.constant(bytes(range(256))),
                                  raw[flag_at] - 1, 1),
                tf.strings.substr(data, flag_at + 1,
                                  tf.strings.length(data) - flag_at - 1)])
            opaque = tf.io.decode_image(cleared, channels=3, dtype=tf.uint8,
                                        expand_animations=False)
            return tf.reduce_any(tf.not_equal(opaque, image))

        return tf.logical_or(partial, tf.cond(
            flag_at >= 0, transparent_shown, lambda: tf.constant(False)))

    gif = tf.logical_and(tf.strings.length(data) >= 13, tf.equal(
        tf.strings.substr(data, 0, 4, unit="BYTE"), b"GIF8"))
    return tf.cond(gif, check, lambda: tf.constant(False))
