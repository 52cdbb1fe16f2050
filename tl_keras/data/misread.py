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
              "top-left corner, or has transparent pixels, which "
              "TensorFlow's decoder turns black; convert it to PNG")


def _bytes(data):
    """Encoded `data` as int32 bytes, padded with zeros so reads a few
    bytes past a truncated header stay in range."""
    return tf.cast(tf.io.decode_raw(
        tf.strings.join([data, b"\0" * 16]), tf.uint8), tf.int32)


def _gif_first_frame(raw):
    """(image descriptor position, transparent index or -1) of a GIF's
    first frame: walks the extension blocks (each a label, then sub-blocks
    of a length byte and that many bytes, ending at a zero length) that
    precede the first image descriptor (0x2C), keeping the transparent
    index of the last Graphic Control Extension (0x21 0xF9) among them."""
    size = tf.size(raw)

    def byte(i):
        return tf.gather(raw, tf.minimum(i, size - 1))

    flags = byte(10)
    start = 13 + tf.where(flags >= 128,
                          3 * tf.bitwise.left_shift(2, flags % 8), 0)

    def more(pos, in_blocks, _):
        return tf.logical_and(pos < size, tf.logical_or(
            in_blocks, tf.equal(byte(pos), 0x21)))

    def step(pos, in_blocks, transparent):
        length = byte(pos)
        control = tf.logical_and(
            tf.logical_not(in_blocks), tf.equal(byte(pos + 1), 0xF9))
        transparent = tf.where(
            control, tf.where(byte(pos + 3) % 2 == 1, byte(pos + 6), -1),
            transparent)
        pos = tf.where(in_blocks, pos + length + 1, pos + 2)
        return pos, tf.logical_or(tf.logical_not(in_blocks), length > 0), \
            transparent

    pos, _, transparent = tf.while_loop(
        more, step, (start, tf.constant(False), tf.constant(-1)),
        maximum_iterations=size)
    return pos, transparent


def misread_gif(data, image):
    """Whether encoded `data` is a GIF whose decoded first frame, `image`
    (uint8 [height, width, 3] from `images.decode_image`), is not what a
    viewer shows: a frame off the corner or smaller than the canvas, or a
    transparent colour whose stored colour is not black while the decode
    has black pixels (TensorFlow decodes transparent pixels as black; an
    unused transparent colour leaves no black pixel, or black ones that
    are the picture's own). Bool scalar tensor."""
    def check():
        raw = _bytes(data)

        def word(i):  # unsigned 16-bit little-endian
            return raw[i] + 256 * raw[i + 1]

        pos, transparent = _gif_first_frame(raw)
        pos = tf.minimum(pos, tf.size(raw) - 16)
        partial = tf.logical_or(
            tf.logical_not(tf.equal(raw[pos], 0x2C)), tf.reduce_any([
                word(pos + 1) > 0, word(pos + 3) > 0,
                word(pos + 5) < word(6), word(pos + 7) < word(8)]))
        local = raw[pos + 9] >= 128
        table = tf.where(local, pos + 10, 13)
        colour = tf.gather(raw, tf.minimum(
            table + 3 * tf.maximum(transparent, 0) + tf.range(3),
            tf.size(raw) - 1))
        hidden = tf.reduce_all([
            transparent >= 0, tf.reduce_any(colour > 0),
            tf.reduce_any(tf.reduce_all(tf.equal(image, 0), axis=-1))])
        return tf.logical_or(partial, hidden)

    gif = tf.logical_and(tf.strings.length(data) >= 13, tf.equal(
        tf.strings.substr(data, 0, 4, unit="BYTE"), b"GIF8"))
    return tf.cond(gif, check, lambda: tf.constant(False))
