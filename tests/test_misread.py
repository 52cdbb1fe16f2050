"""GIFs that TensorFlow's decoder reads as another picture than a viewer
shows (a first frame off the canvas's corner or smaller than it; its
transparent colour decoded black) are refused by the file check and by
serve_bytes alike (`tl_keras.data.misread`). The reference is PIL, the
decoder tl_keras checks every file with: generated GIFs, no download."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import gif_bytes
from PIL import Image

from tl_keras.data.images import decode_image, find_unreadable
from tl_keras.data.misread import misread_gif
from tl_keras.export.saved_model import _decode_within_limit


def _pil_rgb(data, tmp_path):
    path = tmp_path / "x.gif"
    path.write_bytes(data)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_misread_gifs_are_exactly_those_tensorflow_decodes_unlike_pil(
        tmp_path):
    # Random frames, canvases, offsets, transparent colours (used, unused,
    # black), black pixels of the picture's own, comment and loop
    # extensions before the frame.
    rng = np.random.default_rng(0)
    kinds = {True: 0, False: 0}
    for _ in range(80):
        width, height = rng.integers(4, 12, 2)
        canvas = (width + rng.choice([0, 0, 3]), height + rng.choice([0, 3]))
        offset = (int(rng.integers(0, canvas[0] - width + 1)),
                  int(rng.integers(0, canvas[1] - height + 1)))
        palette = [tuple(int(c) for c in rng.integers(0, 256, 3))
                   for _ in range(4)]
        if rng.random() < 0.5:
            palette[1] = (0, 0, 0)  # black pixels of the picture's own
        used = 3 if rng.random() < 0.5 else 4  # index 3 unused or used
        transparency = rng.choice([None, 0, 1, 3])
        data = gif_bytes(
            rng.integers(0, used, (height, width)), palette,
            canvas=tuple(int(c) for c in canvas), offset=offset,
            transparency=None if transparency is None else int(transparency),
            comment=b"a, comment!" if rng.random() < 0.5 else None,
            loop=bool(rng.random() < 0.5))
        decoded = decode_image(tf.constant(data)).numpy()
        pil = _pil_rgb(data, tmp_path)
        differs = decoded.shape != pil.shape or not np.array_equal(decoded,
                                                                   pil)
        assert bool(misread_gif(tf.constant(data), decoded)) == differs
        kinds[differs] += 1
    assert min(kinds.values()) >= 10  # both kinds drawn often


def test_an_unused_transparent_colour_beside_black_is_taken(tmp_path):
    # ffmpeg's palettegen reserves a transparent colour that a video's
    # frames need not use; their black pixels are the picture's own.
    data = gif_bytes([[0, 1], [1, 0]], [(0, 0, 0), (9, 9, 9), (0, 255, 0)],
                     transparency=2)
    decoded = decode_image(tf.constant(data)).numpy()
    assert np.array_equal(decoded, _pil_rgb(data, tmp_path))
    assert not bool(misread_gif(tf.constant(data), decoded))


@pytest.mark.parametrize("options", [
    dict(canvas=(8, 8), offset=(2, 2)),  # off the corner: cropped, black
    dict(canvas=(8, 8)),                 # smaller than the canvas
    dict(transparency=1),                # transparent pixels come out black
])
def test_file_check_and_serve_bytes_refuse_a_misread_gif(tmp_path, options):
    palette = [(255, 255, 255), (255, 0, 0)]
    good = gif_bytes(np.eye(4, dtype=np.uint8), palette)
    bad = gif_bytes(np.eye(4, dtype=np.uint8), palette, **options)
    (tmp_path / "good.gif").write_bytes(good)
    (tmp_path / "bad.gif").write_bytes(bad)
    assert find_unreadable([str(tmp_path / "good.gif"),
                            str(tmp_path / "bad.gif")]) == [
        str(tmp_path / "bad.gif")]
    # serve_bytes decodes through this function, in a graph.
    serve = tf.function(lambda encoded: _decode_within_limit(encoded, 8, 0),
                        input_signature=[tf.TensorSpec([], tf.string)])
    assert serve(tf.constant(good)).shape == (8, 8, 3)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="a GIF whose first frame does not fill"):
        serve(tf.constant(bad))


def test_the_gif_check_traces_once_without_a_retracing_warning(
        tmp_path, monkeypatch, caplog):
    # find_unreadable's threads all called the traced check while its
    # first trace ran, and TensorFlow warned "6 out of the last 6 calls
    # ... triggered tf.function retracing" in every run (it traced once).
    import logging

    from conftest import write_image_folder

    from tl_keras.data import images

    fresh = tf.function(misread_gif, input_signature=[
        tf.TensorSpec([], tf.string), tf.TensorSpec([None, None, 3],
                                                    tf.uint8)])
    monkeypatch.setattr(images, "_misread_gif", fresh)  # as in a new process
    write_image_folder(str(tmp_path), num_classes=2, per_class=8,
                       formats=("gif",))
    paths = [str(p) for p in sorted(tmp_path.glob("*/*.gif"))]
    tf_log = logging.getLogger("tensorflow")
    tf_log.addHandler(caplog.handler)
    try:
        assert find_unreadable(paths) == []
    finally:
        tf_log.removeHandler(caplog.handler)
    assert len(paths) == 16
    assert fresh.experimental_get_tracing_count() == 1
    assert "retracing" not in caplog.text
