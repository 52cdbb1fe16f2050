"""The serving export: three endpoints with the whole inference path,
parity with the in-memory model, label map and manifest, atomic writes,
bad input, and the export / predict modes.

The model is trained from scratch for a few epochs so its BatchNorm
statistics are real and its scores differ between images (a random-weight
base would give near-constant scores and let parity pass trivially).
"""

import csv
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging
from conftest import class_image, run_cli, tflite_scores, write_image_folder
from PIL import Image

import tl_keras
from tl_keras import data as data_lib
from tl_keras import export
from tl_keras.export import saved_model
from tl_keras.modes import predict


@pytest.fixture(scope="module")
def run(tmp_path_factory, image_folder):
    workdir = str(tmp_path_factory.mktemp("export") / "run")
    config = tl_keras.Config(
        data_dir=image_folder, workdir=workdir, backbone="compact_cnn",
        weights="none", image_size=32, approach="scratch", epochs=3,
        batch_size=8, validation_split=0.2, test_split=0.2)
    tl_keras.train(config)
    model = keras.saving.load_model(os.path.join(workdir, "model.keras"))
    served = tf.saved_model.load(os.path.join(workdir, "export"))
    return config, model, served


def test_export_keeps_tensorflow_info_lines_out_of_the_log(run, tmp_path,
                                                          caplog):
    # The CLI showed TensorFlow's "Sharding callback duration" and
    # "Writing fingerprint" lines: while saving, TensorFlow sets absl's
    # verbosity and back, which resets absl's logger level, so the export
    # filters instead. absl's verbosity at INFO, as under the CLI (its
    # --verbosity default); with that, raising the level let them through.
    _, model, _ = run
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        with caplog.at_level(logging.INFO):
            # With TFLite: its conversion saves a SavedModel too.
            export.export_saved_model(model, str(tmp_path / "export"),
                                      ["a", "b", "c"], tflite=True)
    finally:
        absl_logging.set_verbosity(verbosity)
    noise = [r.getMessage() for r in caplog.records
             if r.name == "absl" and r.levelno < logging.WARNING]
    assert not noise
    assert logging.getLogger("absl").filters == []  # removed afterwards


def images(n=5, seed=0):
    """Class-like images (not noise, which every model scores alike),
    non-square so the endpoint's resize is exercised."""
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(class_image(i % 3, rng, 41))[:, :29]
                     for i in range(n)])


def expected_scores(model, uint8_images):
    x = data_lib.resize_images(uint8_images, 32).numpy().astype("float32")
    return tf.nn.softmax(model.predict(x, verbose=0)).numpy()


def test_signatures_and_contract(run):
    _, _, served = run
    assert set(served.signatures) == set(export.SIGNATURES)
    specs = {name: served.signatures[name].structured_input_signature[1]
             for name in export.SIGNATURES}
    assert specs["serving_default"]["images"].dtype == tf.uint8
    assert specs["serving_default"]["images"].shape.as_list() == [
        None, None, None, 3]
    assert specs["serve_bytes"]["image_bytes"].dtype == tf.string
    assert specs["serve_float"]["images"].shape.as_list() == [
        None, 32, 32, 3]
    outputs = served.signatures["serving_default"].structured_outputs
    assert {k: v.dtype for k, v in outputs.items()} == {
        "scores": tf.float32, "logits": tf.float32, "class_ids": tf.int64,
        "labels": tf.string}


def test_saved_model_cli_lists_all_signatures(run):
    config, _, _ = run
    result = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli",
         "show", "--dir", os.path.join(config.runtime.workdir, "export"),
         "--all"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in export.SIGNATURES:
        assert f"signature_def['{name}']" in result.stdout
    assert "DT_UINT8" in result.stdout and "DT_STRING" in result.stdout


def test_every_endpoint_matches_predict(run):
    _, model, served = run
    raw = images()
    expected = expected_scores(model, raw)
    assert expected.std(axis=0).max() > 1e-3  # not a degenerate model
    got = served.signatures["serving_default"](images=tf.constant(raw))
    np.testing.assert_allclose(got["scores"], expected, atol=1e-5)
    encoded = []
    for image in raw:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    got_bytes = served.signatures["serve_bytes"](
        image_bytes=tf.constant(encoded))
    np.testing.assert_allclose(got_bytes["scores"], expected, atol=1e-5)
    x = data_lib.resize_images(raw, 32).numpy().astype("float32")
    got_float = served.signatures["serve_float"](images=tf.constant(x))
    np.testing.assert_allclose(got_float["scores"], expected, atol=1e-5)
    ids = got["class_ids"].numpy()
    np.testing.assert_array_equal(ids, expected.argmax(1))
    names = ["class_0", "class_1", "class_2"]
    assert [s.decode() for s in got["labels"].numpy()] == [
        names[i] for i in ids]


def test_outputs_are_repeatable_despite_training_augmentation(run):
    config, _, served = run
    assert config.data.augmentations()  # the run trained with augmentation
    raw = tf.constant(images(seed=1))
    fn = served.signatures["serving_default"]
    np.testing.assert_array_equal(fn(images=raw)["scores"],
                                  fn(images=raw)["scores"])


def test_label_map_and_manifest(run):
    config, _, _ = run
    root = os.path.join(config.runtime.workdir, "export")
    with open(os.path.join(root, "assets", "labels.txt")) as f:
        assert f.read().split("\n")[:3] == ["class_0", "class_1", "class_2"]
    with open(os.path.join(root, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["approach"] == "scratch"
    assert manifest["backbone"].startswith("compact_cnn")
    assert manifest["input"]["size"] == 32
    assert manifest["input"]["value_range"] == [0, 255]
    assert 0 <= manifest["metrics"]["test_accuracy"] <= 1
    assert manifest["data"]["files"] == 36
    assert manifest["versions"]["tensorflow"] == tf.__version__


def _png_header(width, height):
    """The first 33 bytes of a PNG declaring width x height (no pixels)."""
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))


def _bmp(bits, width=6, height=4):
    """A BMP of `bits` per pixel (8: a grey palette), built by hand: PIL
    writes no 16-bit BMP."""
    import struct

    palette = b"".join(bytes([i, i, i, 0]) for i in range(256)) if (
        bits == 8) else b""
    row = bytes(((width * bits + 31) // 32) * 4)
    pixels = row * height
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bits, 0,
                       len(pixels), 2835, 2835, 256 if palette else 0, 0)
    return (b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
            + info + palette + pixels)


@pytest.mark.parametrize("endpoint, feed, fragment", [
    ("serve_bytes", dict(image_bytes=tf.constant([b"not an image"])),
     "image_bytes\\[0\\] has no JPEG, PNG, GIF, BMP or WebP header"),
    ("serving_default",
     dict(images=tf.zeros([0, 8, 8, 3], tf.uint8)), "empty batch"),
    # 100,000 x 100,000 declared in a 33-byte header: refused undecoded.
    ("serve_bytes", dict(image_bytes=tf.constant(
        [_png_header(100_000, 100_000)])), "decompression bomb"),
    # Images scaled to [0, 1] would give confident wrong answers, one
    # among others too.
    ("serve_float", dict(images=tf.fill([1, 32, 32, 3], 0.5)),
     "every value of an image lies in \\[0, 1\\]"),
    ("serve_float", dict(images=tf.concat([tf.fill([1, 32, 32, 3], 0.5),
                                           tf.fill([1, 32, 32, 3], 200.0)],
                                          0)),
     "every value of an image lies in \\[0, 1\\]"),
    ("serve_float", dict(images=tf.fill([1, 32, 32, 3], 300.0)),
     "must lie in \\[0, 255\\]"),
    # A loaded signature does not check height and width (NaN scores).
    ("serve_float", dict(images=tf.fill([1, 8, 8, 3], 100.0)),
     "images must be \\[batch, 32, 32, 3\\]"),
    # Junk after a PNG signature is not a decompression bomb.
    ("serve_bytes", dict(image_bytes=tf.constant(
        [b"\x89PNG" + b"\xff" * 40])), "(?s)^(?!.*decompression).*$"),
    ("serve_bytes", dict(image_bytes=tf.constant([_bmp(16)])),
     "a BMP of other than \\(24, 32\\) bits"),
    ("serve_bytes", dict(image_bytes=tf.constant([_bmp(8)])),
     "a BMP of other than \\(24, 32\\) bits"),
])
def test_bad_input_at_endpoints_is_an_error(run, endpoint, feed, fragment):
    _, _, served = run
    with pytest.raises(tf.errors.InvalidArgumentError, match=fragment):
        served.signatures[endpoint](**feed)


def test_bmps_tensorflow_misreads_are_unreadable(tmp_path):
    # The files training and --mode=predict check with PIL: 16-bit and
    # palette BMPs out (TensorFlow fails on one, reads indices of the
    # other), 24-bit in; serve_bytes refuses the same (above).
    from tl_keras.data.images import find_unreadable

    for bits in (8, 16, 24):
        (tmp_path / f"b{bits}.bmp").write_bytes(_bmp(bits))
    paths = [str(tmp_path / f"b{bits}.bmp") for bits in (8, 16, 24)]
    assert find_unreadable(paths) == paths[:2]
    # A 24-bit BMP cut short is decoded to the end, and refused.
    (tmp_path / "cut.bmp").write_bytes(_bmp(24)[:-40])
    assert find_unreadable([str(tmp_path / "cut.bmp")]) == [
        str(tmp_path / "cut.bmp")]


def test_declared_pixels_read_from_each_formats_header(tmp_path):
    from PIL import Image

    from tl_keras.data.images import declared_pixels

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7, 13, 3), np.uint8)
    rgba = np.dstack([pixels, pixels[..., :1]])
    for fmt, array, options in (
            ("JPEG", pixels, {}), ("PNG", pixels, {}), ("GIF", pixels, {}),
            ("BMP", pixels, {}),
            # WebP's three headers: lossy (VP8), lossless (VP8L) and
            # extended (VP8X, here for the alpha channel).
            ("WEBP", pixels, {}), ("WEBP", pixels, {"lossless": True}),
            ("WEBP", rgba, {})):
        path = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(array).save(path, format=fmt, **options)
        assert int(declared_pixels(tf.constant(path.read_bytes()))) == 91
    # An extended WebP header declaring 16,384 x 16,384 (the most WebP
    # allows, 3x PIL's limit), without pixels.
    assert int(declared_pixels(tf.constant(_webp_header(16_384, 16_384)))) == (
        16_384 ** 2)
    # A lossless header cut after its size field (25 bytes) still counts.
    lossless = (b"RIFF" + struct.pack("<I", 17) + b"WEBPVP8L"
                + struct.pack("<I", 5) + b"\x2f"
                + struct.pack("<I", 16_383 | 16_383 << 14))
    assert int(declared_pixels(tf.constant(lossless))) == 16_384 ** 2
    assert int(declared_pixels(tf.constant(_png_header(70_000, 3)))) == (
        210_000)
    assert int(declared_pixels(tf.constant(b"not an image"))) == 0
    assert int(declared_pixels(tf.constant(b"\x89PNG" + b"\xff" * 40))) == 0


def _webp_header(width, height):
    """An extended (VP8X) WebP header declaring width x height, and no
    image data."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x10\0\0\0" + (
        (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def _webp(frames, **options):
    """WebP bytes of uint8 RGB(A) `frames` (two or more: an animation)."""
    buffer = io.BytesIO()
    first, *rest = [Image.fromarray(f) for f in frames]
    first.save(buffer, format="WEBP", save_all=bool(rest), append_images=rest,
               **options)
    return buffer.getvalue()


def test_still_webp_is_served_as_its_rgb_and_an_animation_refused(run):
    # tf.io.decode_image refuses a WebP with alpha when asked for 3
    # channels, and tf.io.decode_webp corrupted the heap (the process
    # died) on an animated one: decode_image decodes a still one itself
    # and leaves an animation to tf.io.decode_image's error.
    _, model, served = run
    raw = images()
    expected = expected_scores(model, raw)
    for alpha in (False, True):
        encoded = [_webp([np.dstack([image, image[..., :1]]) if alpha
                          else image], lossless=True, exact=True)
                   for image in raw]  # exact: keeps RGB where alpha is 0
        got = served.signatures["serve_bytes"](
            image_bytes=tf.constant(encoded))
        np.testing.assert_allclose(got["scores"], expected, atol=1e-5)
    animation = _webp([raw[0], raw[0][::-1]], lossless=True)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="a WebP whose header marks it animated"):
        served.signatures["serve_bytes"](image_bytes=tf.constant([animation]))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="decompression bomb"):
        served.signatures["serve_bytes"](image_bytes=tf.constant(
            [_webp_header(16_384, 16_384)]))


def test_serve_bytes_names_the_image_it_refuses(run):
    # In a batch, TensorFlow's own "Unknown image file format" named no
    # image: each refusal names its index.
    _, _, served = run
    good = tf.io.encode_png(images()[0]).numpy()
    for bad, fragment in ((b"not an image", "has no JPEG"),
                          (_bmp(8), "holds a BMP of other than"),
                          (_png_header(100_000, 100_000), "declares more than"),
                          (b"\x89PNG" + b"\xff" * 40, "has no JPEG")):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=f"image_bytes\\[2\\] {fragment}"):
            served.signatures["serve_bytes"](
                image_bytes=tf.constant([good, good, bad, good]))


@pytest.mark.parametrize("bad, fragment", [
    (np.zeros((1, 8, 8, 3), np.float32), "expected to be a uint8 tensor"),
    (np.zeros((1, 8, 8, 4), np.uint8), "must have 3 (RGB) channels"),
])
def test_wrong_dtype_or_channels_is_rejected(run, bad, fragment):
    _, _, served = run
    with pytest.raises((TypeError, ValueError,
                        tf.errors.InvalidArgumentError)) as e:
        served.signatures["serving_default"](images=tf.constant(bad))
    assert fragment in str(e.value)


@pytest.mark.parametrize("data", [b"", b"hello"])
def test_bytes_too_short_for_any_header_say_so(run, data):
    # Under 12 bytes failed in the PNG header check ("pos 12 out of range
    # for string"), which did not say the input is not an image.
    _, _, served = run
    with pytest.raises(tf.errors.InvalidArgumentError) as e:
        served.signatures["serve_bytes"](image_bytes=tf.constant([data]))
    assert "out of range" not in str(e.value)
    assert "image" in str(e.value).lower()


def test_existing_export_is_kept_unless_overwrite(run, tmp_path):
    config, model, _ = run
    target = str(tmp_path / "exp")
    export.export_saved_model(model, target, ["a", "b", "c"])
    before = os.path.getmtime(os.path.join(target, "saved_model.pb"))
    with pytest.raises(tl_keras.InputError, match="already"):
        export.export_saved_model(model, target, ["a", "b", "c"],
                                  overwrite=False)
    assert os.path.getmtime(os.path.join(target, "saved_model.pb")) == before
    # The library's default moves an old export aside (it may be the only
    # copy of another run's model); keep_old=False, as a run does for its
    # own workdir's export, replaces it.
    export.export_saved_model(model, target, ["a", "b", "c"])
    aside = [n for n in os.listdir(tmp_path) if n.startswith("exp.replaced-")]
    assert len(aside) == 1 and os.path.isfile(
        os.path.join(tmp_path, aside[0], "saved_model.pb"))
    export.export_saved_model(model, target, ["a", "b", "c"], keep_old=False)
    assert sorted(os.listdir(tmp_path)) == sorted(["exp", *aside])


def test_the_library_export_never_moves_a_run_aside(run, tmp_path):
    # export_saved_model(model, "runs/a") (for "runs/a/export"), with the
    # default overwrite=True, moved the run aside; "runs" all of them.
    config, model, _ = run
    runs = tmp_path / "runs"
    shutil.copytree(config.runtime.workdir, runs / "a")
    for target in (runs / "a", runs):
        with pytest.raises(tl_keras.InputError, match=(
                "Invalid export_dir.*not a tl_keras run's workdir and "
                "holds none")):
            export.export_saved_model(model, str(target), ["a", "b", "c"])
    assert sorted(os.listdir(tmp_path)) == ["runs"]
    assert sorted(os.listdir(runs)) == ["a"]
    export.export_saved_model(model, str(runs / "a" / "export"),
                              ["a", "b", "c"], keep_old=False)
    tl_keras.load_exported(str(runs / "a" / "export"))


def test_crash_mid_export_keeps_the_old_export(run, tmp_path, monkeypatch):
    _, model, _ = run
    target = str(tmp_path / "exp")
    export.export_saved_model(model, target, ["a", "b", "c"])

    class HalfWritten:
        def write_out(self, path, **kwargs):
            with open(os.path.join(path, "saved_model.pb"), "w") as f:
                f.write("partial")
            raise KeyboardInterrupt

    monkeypatch.setattr(saved_model, "_build_archive",
                        lambda model, names, as_logits: HalfWritten())
    with pytest.raises(KeyboardInterrupt):
        export.export_saved_model(model, target, ["x", "y", "z"])
    assert sorted(os.listdir(tmp_path)) == ["exp"]  # no temp left behind
    with open(os.path.join(target, "assets", "labels.txt")) as f:
        assert f.read().split() == ["a", "b", "c"]


def test_load_exported_predicts_paths_and_arrays(run, image_folder):
    config, model, _ = run
    predictor = tl_keras.load_exported(os.path.join(config.runtime.workdir,
                                                    "export"))
    raw = images(3)
    out = predictor.predict(raw)
    np.testing.assert_allclose(out["scores"], expected_scores(model, raw),
                               atol=1e-5)
    paths = [os.path.join(image_folder, "class_1", name) for name in
             sorted(os.listdir(os.path.join(image_folder, "class_1")))[:4]]
    by_path = predictor.predict(paths)
    assert by_path["scores"].shape == (4, 3)
    assert all(label in predictor.class_names for label in
               by_path["labels"])
    with pytest.raises(tl_keras.InputError, match="not a tl_keras export"):
        tl_keras.load_exported(image_folder)


def test_predict_mode_writes_rows_and_error_rows(run, image_folder,
                                                 tmp_path, capsys):
    config, _, _ = run
    from PIL import Image

    broken = tmp_path / "inputs" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"junk")
    # BMPs TensorFlow misreads (palette: its indices; 1-bit: fails): an
    # error row each, not an abort of the whole run.
    rgb = Image.fromarray(np.random.default_rng(0).integers(
        0, 256, (8, 8, 3), np.uint8))
    palette, one_bit = (tmp_path / "inputs" / "palette.bmp",
                        tmp_path / "inputs" / "one_bit.bmp")
    rgb.convert("P", palette=Image.ADAPTIVE, colors=16).save(palette)
    rgb.convert("1").save(one_bit)
    inputs = f"{image_folder}/class_0,{broken},{palette},{one_bit}"
    for output in ("preds.csv", "preds.json"):
        rows = predict.predict_files(config.replace(
            mode="predict", inputs=inputs, top_k=2,
            output=str(tmp_path / output)))
        assert len(rows) == 15
        assert all(row["error"] for row in rows[-3:])
        assert not rows[0]["error"]
        assert len(rows[0]["top_k"]) == 2
    with open(tmp_path / "preds.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 15 and table[-1]["error"]
    assert table[-1]["score"] == ""
    with open(tmp_path / "preds.json") as f:
        scored = json.load(f)
    assert len(scored) == 15 and scored[-1]["score"] is None  # not ""
    assert "ERROR" in capsys.readouterr().out
    # Every input an error row: rows written, then an error (exit 2 on
    # the command line), where it returned as a success.
    output = tmp_path / "all_bad.json"
    with pytest.raises(tl_keras.InputError,
                       match=r"none of the 3 file\(s\) is a readable.*"
                             r"and in .*all_bad.json"):
        predict.predict_files(config.replace(
            mode="predict", inputs=f"{broken},{palette},{one_bit}",
            output=str(output)))
    assert len(json.load(open(output))) == 3
    with pytest.raises(tl_keras.InputError, match="matches no image"):
        predict.expand_inputs(str(tmp_path / "nothing*.png"))


def test_export_mode_reexports_a_run(run, tmp_path):
    config, _, _ = run
    target = str(tmp_path / "again")
    predict.export_run(config.replace(mode="export", export_dir=target))
    assert os.path.isfile(os.path.join(target, "saved_model.pb"))
    with pytest.raises(tl_keras.InputError, match="already"):
        predict.export_run(config.replace(mode="export", export_dir=target))


def test_reexport_names_the_approach_the_run_trained(run, tmp_path):
    # An --approach=auto run's config.json says 'auto' (it is written
    # before the advisor decides); the manifest names what was trained.
    config, _, _ = run
    workdir = str(tmp_path / "auto_run")
    os.makedirs(workdir)
    for name in ("model.keras", "metrics.json", "config.json"):
        shutil.copy(os.path.join(config.runtime.workdir, name), workdir)
    stored = json.load(open(os.path.join(workdir, "config.json")))
    json.dump({**stored, "approach": "auto"},
              open(os.path.join(workdir, "config.json"), "w"))
    target = str(tmp_path / "export")
    predict.export_run(config.replace(mode="export", workdir=workdir,
                                      export_dir=target))
    manifest = json.load(open(os.path.join(target, "manifest.json")))
    assert manifest["approach"] == "scratch"


def test_an_output_never_replaces_a_file_unasked(run, image_folder,
                                                 tmp_path):
    # Checked before any scoring: the export's own manifest is never an
    # --output, and an existing file only with --overwrite.
    config, _, _ = run
    export_dir = os.path.join(config.runtime.workdir, "export")
    manifest = os.path.join(export_dir, "manifest.json")
    before = open(manifest).read()
    predicting = config.replace(mode="predict", export_dir=export_dir,
                                inputs=f"{image_folder}/class_0")
    metrics = os.path.join(config.runtime.workdir, "metrics.json")
    for output, fragment in ((manifest, "a tl_keras export or a run's own"),
                             (metrics, "a file of a tl_keras run or export")):
        for overwrite in (False, True):
            with pytest.raises(tl_keras.InputError, match=fragment):
                predict.predict_files(predicting.replace(
                    output=output, overwrite=overwrite))
    assert open(manifest).read() == before
    # A workdir's record by name (compare's and advise's folders have no
    # config.json beside it).
    decision = tmp_path / "decision.json"
    decision.write_text("{}")
    with pytest.raises(tl_keras.InputError,
                       match="a file of a tl_keras run or export"):
        predict.predict_files(predicting.replace(output=str(decision),
                                                 overwrite=True))
    earlier = tmp_path / "preds.csv"
    earlier.write_text("kept")
    with pytest.raises(tl_keras.InputError, match="the file exists"):
        predict.predict_files(predicting.replace(output=str(earlier)))
    assert earlier.read_text() == "kept"
    rows = predict.predict_files(predicting.replace(output=str(earlier),
                                                    overwrite=True))
    assert len(list(csv.DictReader(open(earlier)))) == len(rows)
    with pytest.raises(tl_keras.InputError, match="extension"):
        predict.evaluate_export(config.replace(
            mode="evaluate", data_dir=image_folder,
            output=str(tmp_path / "eval.csv")))


def test_evaluate_on_no_readable_image_is_an_error(run, tmp_path):
    config, _, _ = run
    folder = tmp_path / "broken"
    for name in ("class_0", "class_1"):
        (folder / name).mkdir(parents=True)
        (folder / name / "x.png").write_bytes(b"junk")
    with pytest.raises(tl_keras.InputError,
                       match=r"no image to score \(2 unreadable; 0 readable"):
        predict.evaluate_export(config.replace(mode="evaluate",
                                               data_dir=str(folder)))
    # One readable image in both classes: left out, as in training (it
    # said "none of its 0 image file(s) is readable").
    source = write_image_folder(str(tmp_path / "one"), num_classes=1,
                                per_class=1, formats=("png",))
    for name in ("class_0", "class_1"):
        shutil.copy(os.path.join(source, "class_0", "000.png"),
                    folder / name / "x.png")
    with pytest.raises(tl_keras.InputError,
                       match=r"no image to score \(0 unreadable; 2 readable, "
                             r"each left out as a copy"):
        predict.evaluate_export(config.replace(mode="evaluate",
                                               data_dir=str(folder)))



def test_evaluate_scores_a_test_folder_without_train(run, tmp_path,
                                                     image_folder):
    # "evaluate uses a test/ folder if there is one": a folder holding
    # only test/ (or test/ and val/) read test/ as a class, "not in the
    # export"; one holding only val/ has nothing held out to score.
    config, _, _ = run
    folder = tmp_path / "held_out"
    shutil.copytree(image_folder, folder / "test")
    shutil.copytree(image_folder, folder / "val")
    whole = predict.evaluate_export(config.replace(
        mode="evaluate", data_dir=image_folder))
    held = predict.evaluate_export(config.replace(
        mode="evaluate", data_dir=str(folder)))
    assert held["num_test"] == whole["num_test"]
    assert held["test_accuracy"] == whole["test_accuracy"]
    shutil.rmtree(folder / "test")
    with pytest.raises(tl_keras.InputError, match="no test/ folder to score"):
        predict.evaluate_export(config.replace(mode="evaluate",
                                               data_dir=str(folder)))

def test_inputs_a_file_as_named_and_skipped_files_said(run, tmp_path,
                                                       caplog):
    # 'shot[1].png' is a file, not a glob that matches 'shot1.png'; a
    # folder's files without an image extension are skipped and counted.
    config, _, _ = run
    folder = tmp_path / "shots"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "shot[1].png")
    Image.new("RGB", (8, 8)).save(folder / "shot1.png")
    (folder / "notes.txt").write_text("x")
    assert predict.expand_inputs(str(folder / "shot[1].png")) == [
        str(folder / "shot[1].png")]
    caplog.set_level(logging.INFO, logger="tl_keras")
    assert len(predict.expand_inputs(str(folder))) == 2
    assert "Skipping 1 file(s)" in caplog.text
    # A name with a comma: as a whole, or matched by a glob in a list.
    Image.new("RGB", (8, 8)).save(folder / "a,b.png")
    comma = str(folder / "a,b.png")
    assert predict.expand_inputs(comma) == [comma]
    assert predict.expand_inputs(
        f"{folder / 'a?b.png'},{folder / 'shot1.png'}") == [
        comma, str(folder / "shot1.png")]
    with pytest.raises(tl_keras.InputError, match=r"a glob such as"):
        predict.expand_inputs(f"{comma},{folder / 'shot1.png'}")


@pytest.mark.slow
def test_predict_through_the_cli(run, image_folder):
    config, _, _ = run
    export_dir = os.path.join(config.runtime.workdir, "export")
    args = ("--mode=predict", f"--export_dir={export_dir}",
            f"--inputs={image_folder}/class_2/*.png", "--top_k=1")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    # stdout holds the rows alone (`> preds.tsv`); the log, INFO lines
    # included, goes to stderr (it went to stdout, among the rows).
    rows = result.stdout.splitlines()
    assert len(rows) == 6, result.stdout  # png, gray.png, rgba.png
    assert all(row.startswith(f"{image_folder}/class_2/") and ".png\t" in row
               for row in rows), rows
    assert "Scoring 6 image(s)" in result.stderr
    # absl's --verbosity sets the log's level (it was ignored).
    quiet = run_cli(*args, "--verbosity=-1")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout == result.stdout
    assert "Scoring" not in quiet.stderr, quiet.stderr


def test_predict_and_export_refuse_clearly(run, image_folder):
    # In-process: the command line turns these InputErrors into exit
    # status 2 and one line (tests/test_cli.py checks that mapping).
    config, _, _ = run
    with pytest.raises(tl_keras.InputError, match="not a tl_keras export"):
        predict.predict_files(config.replace(
            mode="predict", export_dir=image_folder, inputs=image_folder))
    with pytest.raises(tl_keras.InputError,
                       match="already.*--overwrite"):
        predict.export_run(config.replace(mode="export"))


def test_tflite_matches_the_saved_model(run, tmp_path):
    config, _, served = run
    target = str(tmp_path / "with_tflite")
    predict.export_run(config.replace(mode="export", export_dir=target,
                                      export_tflite=True))
    with open(os.path.join(target, "manifest.json")) as f:
        assert json.load(f)["tflite"]["file"] == "model.tflite"
    with open(os.path.join(config.runtime.workdir, "export",
                           "manifest.json")) as f:
        assert "tflite" not in json.load(f)  # written without it
    x = data_lib.resize_images(images(4, seed=2), 32).numpy().astype(
        "float32")
    lite = tflite_scores(os.path.join(target, "model.tflite"), x)
    expected = served.signatures["serve_float"](images=tf.constant(x))
    np.testing.assert_allclose(lite, expected["scores"], atol=1e-4)


def test_evaluate_mode_scores_a_labelled_folder(run, image_folder,
                                                tmp_path, caplog):
    config, _, _ = run
    output = str(tmp_path / "eval.json")
    metrics = predict.evaluate_export(config.replace(
        mode="evaluate", data_dir=image_folder, output=output))
    assert metrics["num_test"] == 36
    assert np.array(metrics["confusion_matrix"]).sum() == 36
    with open(output) as f:
        assert json.load(f)["test_accuracy"] == metrics["test_accuracy"]
    # What was scored, in which class order (the confusion matrix's), and
    # what was left out: the file did not say.
    assert metrics["scored"] == image_folder
    assert metrics["class_names"] == ["class_0", "class_1", "class_2"]
    assert (metrics["bad_files"], metrics["copy_files"]) == (0, 0)
    other = write_image_folder(str(tmp_path / "other"), num_classes=4,
                               per_class=2, formats=("png",))
    with pytest.raises(tl_keras.InputError, match="class_3"):
        predict.evaluate_export(config.replace(mode="evaluate",
                                               data_dir=other))
    # What the folder's layout is worth a word about is said once (the
    # layout was read twice, so it was said twice).
    nested = write_image_folder(str(tmp_path / "nested"), num_classes=3,
                                per_class=2, formats=("png",))
    write_image_folder(os.path.join(nested, "class_0", "test"),
                       num_classes=1, per_class=1, formats=("png",))
    with caplog.at_level(logging.WARNING, logger="tl_keras"):
        predict.evaluate_export(config.replace(mode="evaluate",
                                               data_dir=nested))
    assert caplog.text.count("holds folders named like splits") == 1


@pytest.mark.slow
def test_overwrite_never_deletes_what_tl_keras_did_not_write(run,
                                                           tmp_path):
    config, _, _ = run
    target = tmp_path / "X"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    unrelated = tmp_path / "X.old"  # once deleted by the export
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("keep")
    export_config = config.replace(mode="export", export_dir=str(target),
                                   overwrite=True)
    predict.export_run(export_config)
    assert saved_model.is_export(str(target))
    aside = [p for p in os.listdir(tmp_path) if p.startswith("X.replaced-")]
    assert len(aside) == 1
    assert (tmp_path / aside[0] / "notes.txt").read_text() == "mine"
    assert (unrelated / "keep.txt").read_text() == "keep"
    # An export elsewhere may be another run's only copy (--overwrite
    # once deleted one): moved aside too, whole.
    predict.export_run(export_config)
    second = sorted(set(os.listdir(tmp_path)) - {"X", "X.old", aside[0]})
    assert len(second) == 1 and second[0].startswith("X.replaced-")
    assert saved_model.is_export(str(tmp_path / second[0]))
    # The run's own export is replaced: model.keras stays beside it.
    listing = sorted(os.listdir(config.runtime.workdir))
    predict.export_run(config.replace(mode="export", overwrite=True))
    assert sorted(os.listdir(config.runtime.workdir)) == listing


def test_evaluate_never_scores_training_images(run, tmp_path):
    config, _, _ = run
    root = tmp_path / "splits"
    write_image_folder(str(root / "train"), per_class=20, formats=("png",))
    write_image_folder(str(root / "val"), per_class=4, formats=("png",),
                       seed=1)
    with pytest.raises(tl_keras.InputError, match="no test/ folder"):
        predict.evaluate_export(config.replace(mode="evaluate",
                                               data_dir=str(root)))
    write_image_folder(str(root / "test"), per_class=3, formats=("png",),
                       seed=2)
    metrics = predict.evaluate_export(config.replace(mode="evaluate",
                                                     data_dir=str(root)))
    assert metrics["num_test"] == 9  # test/ only
    assert metrics["scored"] == str(root / "test")
    # A test image that is a training image again (a copy: training left
    # it out) or one of another class's (two labels) was scored.
    shutil.copy(root / "train" / "class_0" / "000.png",
                root / "test" / "class_0" / "again.png")
    shutil.copy(root / "train" / "class_0" / "001.png",
                root / "test" / "class_1" / "other_label.png")
    # A train/ class the export lacks, without test images, is not
    # scored: it was refused as "not in the export".
    write_image_folder(str(root / "train" / "extra"), num_classes=1,
                       per_class=2, formats=("png",), seed=3)
    metrics = predict.evaluate_export(config.replace(mode="evaluate",
                                                     data_dir=str(root)))
    assert metrics["num_test"] == 9
    assert metrics["copy_files"] == 2


def test_export_folder_follows_the_umask(run, tmp_path):
    # tempfile.mkdtemp makes 0700: a server run as another user could not
    # read the export.
    config, _, _ = run
    target = str(tmp_path / "shared")
    predict.export_run(config.replace(mode="export", export_dir=target))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.parametrize("where", ["workdir", "parent"])
def test_export_over_the_run_is_refused(run, tmp_path, where):
    # With --overwrite the run would have been moved aside for the export.
    config, _, _ = run
    workdir = tmp_path / "run"
    shutil.copytree(config.runtime.workdir, workdir,
                    ignore=shutil.ignore_patterns("export", "checkpoints"))
    target = workdir if where == "workdir" else tmp_path
    before = sorted(os.listdir(workdir))
    with pytest.raises(tl_keras.InputError, match="the workdir or a folder "
                                                  "around it"):
        predict.export_run(config.replace(
            mode="export", workdir=str(workdir), export_dir=str(target),
            overwrite=True))
    assert sorted(os.listdir(workdir)) == before


def test_load_exported_refuses_or_takes_clearly(run, image_folder,
                                                tmp_path):
    config, _, _ = run
    predictor = export.load_exported(os.path.join(config.runtime.workdir,
                                                  "export"))
    arrays = [images(1, seed=i)[0] for i in range(3)]
    together = predictor.predict(np.stack(arrays))
    listed = predictor.predict(arrays)  # a list of images: one batch
    np.testing.assert_allclose(listed["scores"], together["scores"],
                               atol=1e-6)
    with pytest.raises(tl_keras.InputError, match="2 shapes"):
        predictor.predict([arrays[0], arrays[0][:5]])
    with pytest.raises(tl_keras.InputError, match="Invalid batch_size"):
        predictor.predict(arrays, batch_size=0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG" + b"\xff" * 40)
    good = os.path.join(image_folder, "class_0",
                        sorted(os.listdir(os.path.join(image_folder,
                                                       "class_0")))[0])
    with pytest.raises(tl_keras.InputError,
                       match="1 of 2 file.*not readable images.*broken"):
        predictor.predict([good, str(broken)])
    with pytest.raises(tl_keras.InputError, match="do not exist"):
        predictor.predict([str(tmp_path / "nowhere.png")])
    # Lists of what is not a path were taken as paths (a TypeError, or
    # "do not exist" with the bytes printed); a 0 x 0 image failed in TF.
    for items, kinds in (([Image.new("RGB", (8, 8))], "Image"),
                         ([b"\x89PNG"], "bytes"),
                         ([arrays[0], good], "ndarray")):
        with pytest.raises(tl_keras.InputError,
                           match=f"a list holding {kinds}"):
            predictor.predict(items)
    with pytest.raises(tl_keras.InputError, match=r"shape=\(1, 0, 0, 3\)"):
        predictor.predict(np.zeros((1, 0, 0, 3), np.uint8))
    # [0, 1] images cast to uint8 were scored as black images.
    with pytest.raises(tl_keras.InputError,
                       match=r"Invalid images: 3 of 3 .* in \[0, 1\]"):
        predictor.predict((np.stack(arrays) > 128).astype(np.uint8))
    with pytest.raises(tl_keras.InputError, match="export_dir: None"):
        export.load_exported(None)
    np.testing.assert_allclose(  # numpy batch sizes, as Config takes
        predictor.predict(arrays, batch_size=np.int64(2))["scores"],
        together["scores"], atol=1e-6)


def test_evaluate_scores_a_folder_of_one_of_its_classes(run, image_folder,
                                                        tmp_path):
    config, _, _ = run
    one = tmp_path / "one"
    shutil.copytree(os.path.join(image_folder, "class_1"), one / "class_1")
    metrics = predict.evaluate_export(config.replace(mode="evaluate",
                                                     data_dir=str(one)))
    assert metrics["num_test"] == 12
    # One image in two classes (a link or a copy) is left out, as in
    # training (a symlinked one was scored twice, with two labels), and
    # a copy within its class counts once.
    shutil.copytree(os.path.join(image_folder, "class_2"), one / "class_2")
    first = sorted(os.listdir(one / "class_1"))[0]
    os.symlink(one / "class_1" / first, one / "class_2" / ("x_" + first))
    shutil.copy(one / "class_1" / first, one / "class_1" / ("y_" + first))
    metrics = predict.evaluate_export(config.replace(mode="evaluate",
                                                     data_dir=str(one)))
    assert metrics["num_test"] == 12 + 12 - 1


def test_reexport_waits_for_no_live_run(run, tmp_path):
    # A run resumed in the workdir meanwhile would rewrite model.keras.
    import socket

    config, _, _ = run
    lock = config.runtime.workdir + ".lock"
    with open(lock, "w") as f:
        json.dump({"pid": os.getppid(), "host": socket.gethostname(),
                   "since": "earlier"}, f)
    try:
        with pytest.raises(tl_keras.InputError,
                           match="another tl_keras run uses it"):
            predict.export_run(config.replace(
                mode="export", export_dir=str(tmp_path / "locked")))
    finally:
        os.remove(lock)
    assert not os.path.exists(tmp_path / "locked")


def test_tflite_asked_of_a_finished_run_is_said(run, caplog):
    # export_tflite may change on a resumed run; a finished one does not
    # export again, so the log says how to get the file.
    config, _, _ = run
    caplog.set_level(logging.INFO, logger="tl_keras")
    tl_keras.train(config.replace(export_tflite=True))
    assert "--export_tflite: the run finished without it" in caplog.text
    assert not os.path.exists(os.path.join(config.runtime.workdir, "export",
                                           "model.tflite"))


def test_an_output_in_an_export_or_a_runs_folders_is_refused(
        run, image_folder, tmp_path):
    # Even a new file: a re-export deleted predictions written into the
    # export, and --overwrite replaced a stage's log or checkpoint record
    # with prediction rows (the training history lost).
    config, _, _ = run
    workdir = config.runtime.workdir
    predicting = config.replace(mode="predict",
                                inputs=f"{image_folder}/class_0")
    inner = [os.path.join(workdir, name) for name in os.listdir(workdir)
             if os.path.isdir(os.path.join(workdir, name))]
    record = next(os.path.join(folder, name) for folder in inner
                  if not folder.endswith("export")
                  for name in sorted(os.listdir(folder))
                  if os.path.isfile(os.path.join(folder, name)))
    before = open(record, "rb").read()
    for output, overwrite in ((os.path.join(workdir, "export", "p.csv"),
                               False), (record + ".csv", False),
                              (os.path.splitext(record)[0] + ".json"
                               if record.endswith(".json") else
                               record + ".json", True)):
        with pytest.raises(tl_keras.InputError,
                           match="a tl_keras export or a run's own folder"):
            predict.predict_files(predicting.replace(output=output,
                                                     overwrite=overwrite))
    assert open(record, "rb").read() == before
    assert not os.path.exists(os.path.join(workdir, "export", "p.csv"))
    # The folders of a compare's or the demo's workdir too (they write
    # no config.json, and were not taken for a workdir); not those of a
    # folder an advise or a rank wrote its record into (a project's own).
    from tl_keras.modes import outputs

    for records in (("decision.json", "results.json"), ("demo.json",),
                    ("decision.json",), ("ranking.json",)):
        inside = tmp_path / records[-1].split(".")[0] / "data"
        inside.mkdir(parents=True)
        for record in records:
            (inside.parent / record).write_text("{}")
        if records[-1] in ("decision.json", "ranking.json"):
            assert outputs._managed_folder(str(inside / "p.csv")) is None
            continue
        with pytest.raises(tl_keras.InputError,
                           match="a tl_keras export or a run's own folder"):
            predict.predict_files(predicting.replace(
                output=str(inside / "p.csv")))


def test_an_export_into_the_runs_data_folder_is_refused(run, image_folder):
    # Its next listing read the export as a class folder (evaluate and a
    # rerun failed; with --overwrite a class folder was moved aside).
    config, _, _ = run
    target = os.path.join(image_folder, "new_export")
    with pytest.raises(tl_keras.InputError,
                       match="inside the run's data folder"):
        predict.export_run(config.replace(mode="export", export_dir=target))
    assert not os.path.exists(target)



def test_an_export_into_the_run_or_into_an_export_is_refused(run, tmp_path):
    # --overwrite moved the run's model.keras aside for an export named
    # after it (the run then had no model), and another export's
    # variables/ for this one (that export then failed to load).
    config, _, _ = run
    workdir = config.runtime.workdir
    other = str(tmp_path / "other")
    shutil.copytree(os.path.join(workdir, "export"), other)
    for target, fragment in (
            (os.path.join(workdir, "model.keras"), "inside the run"),
            (os.path.join(workdir, "checkpoints", "x"), "inside the run"),
            (os.path.join(other, "variables"), "inside the export"),
            (os.path.join(workdir, "export", "assets"), "inside the export")):
        with pytest.raises(tl_keras.InputError, match=fragment):
            predict.export_run(config.replace(
                mode="export", export_dir=target, overwrite=True))
    assert os.path.isfile(os.path.join(workdir, "model.keras"))
    assert os.path.isdir(os.path.join(other, "variables"))
    tl_keras.load_exported(other)


def test_an_export_into_another_runs_workdir_is_refused(run, tmp_path):
    # Audit: --overwrite moved another run's checkpoints/ aside for this
    # export, swapped that run's export for this run's model (its
    # metrics.json and model.keras no longer matched it), or moved that
    # whole run aside without checking its lock; without --overwrite the
    # error said only "something other than a tl_keras export".
    config, _, _ = run
    victim = tmp_path / "victim"
    shutil.copytree(config.runtime.workdir, victim)
    advised = tmp_path / "advised"  # a compare's workdir
    advised.mkdir()
    (advised / "decision.json").write_text("{}")
    (advised / "results.json").write_text("{}")
    listings = (tmp_path, victim, victim / "export", advised)
    before = [sorted(os.listdir(folder)) for folder in listings]
    manifest = (victim / "export" / "manifest.json").read_bytes()
    for target, overwrite, fragment in (
            (victim / "checkpoints", True, "inside the workdir"),
            (victim / "export", True, "inside the workdir"),
            (victim, True, "the workdir"),
            (victim / "new", False, "inside the workdir"),
            (advised / "export", True, "inside the workdir")):
        with pytest.raises(tl_keras.InputError,
                           match=f"export_dir .*: it is {fragment} .* of "
                                 f"another tl_keras run"):
            predict.export_run(config.replace(
                mode="export", export_dir=str(target), overwrite=overwrite))
    # A folder of runs (--export_dir=runs --overwrite) was moved aside
    # whole, live runs and all.
    with pytest.raises(tl_keras.InputError, match=(
            f"it is a folder holding the workdir '{tmp_path}/(victim|"
            f"advised)' of another tl_keras run")):
        predict.export_run(config.replace(
            mode="export", export_dir=str(tmp_path), overwrite=True))
    assert [sorted(os.listdir(folder)) for folder in listings] == before
    assert (victim / "export" / "manifest.json").read_bytes() == manifest
    # A run inside a compare's workdir exports into its own folder, not
    # into the compare's export.
    nested = advised / "transfer"
    shutil.copytree(config.runtime.workdir, nested)
    with pytest.raises(tl_keras.InputError, match="inside the workdir"):
        predict.export_run(config.replace(
            mode="export", workdir=str(nested),
            export_dir=str(advised / "export"), overwrite=True))
    predict.export_run(config.replace(mode="export", workdir=str(nested),
                                      overwrite=True))
    tl_keras.load_exported(str(nested / "export"))


def test_a_symlinked_export_is_replaced_where_it_points(run, tmp_path):
    # <workdir>/export linked to a serving folder: --overwrite built the
    # whole export, then failed swapping the link for a folder
    # (IsADirectoryError) and left an empty .export.old-* behind.
    config, _, _ = run
    workdir = str(tmp_path / "run")
    shutil.copytree(config.runtime.workdir, workdir,
                    ignore=shutil.ignore_patterns("*.lock"))
    served = str(tmp_path / "served")
    shutil.move(os.path.join(workdir, "export"), served)
    os.symlink(served, os.path.join(workdir, "export"))
    os.remove(os.path.join(served, "assets", "labels.txt"))  # to see it back
    predict.export_run(config.replace(mode="export", workdir=workdir,
                                      overwrite=True))
    assert os.path.islink(os.path.join(workdir, "export"))
    assert os.path.isfile(os.path.join(served, "assets", "labels.txt"))
    assert sorted(os.listdir(tmp_path)) == ["run", "served"]
    tl_keras.load_exported(os.path.join(workdir, "export"))

def test_tied_scores_name_the_first_class_everywhere(tmp_path):
    # predict's rows named the last of equal classes (argsort reversed),
    # the export's labels and evaluate the first (argmax).
    inputs = keras.Input((16, 16, 3))
    logits = keras.layers.Dense(3, kernel_initializer="zeros")(
        keras.layers.GlobalAveragePooling2D()(inputs))
    export_dir = str(tmp_path / "tied")
    export.export_saved_model(keras.Model(inputs, logits), export_dir,
                              ["a", "b", "c"])
    image = tmp_path / "x.png"
    Image.new("RGB", (16, 16), (90, 20, 200)).save(image)
    rows = predict.predict_files(tl_keras.Config(
        mode="predict", export_dir=export_dir, inputs=str(image), top_k=3))
    assert rows[0]["label"] == "a"
    assert [name for name, _ in rows[0]["top_k"]] == ["a", "b", "c"]
    assert tl_keras.load_exported(export_dir).predict([str(image)])[
        "labels"] == ["a"]


def test_predict_paths_take_a_tilde_and_name_a_generator(run, tmp_path,
                                                         monkeypatch):
    config, _, _ = run
    predictor = tl_keras.load_exported(os.path.join(config.runtime.workdir,
                                                    "export"))
    monkeypatch.setenv("HOME", str(tmp_path))
    Image.new("RGB", (16, 16), (90, 20, 200)).save(tmp_path / "h.png")
    # load_exported and --inputs expanded `~`; a path item said "does
    # not exist".
    assert len(predictor.predict(["~/h.png"])["labels"]) == 1
    # A generator: "len() of unsized object".
    with pytest.raises(tl_keras.InputError, match="Invalid inputs: a "
                                                  "generator"):
        predictor.predict(p for p in [str(tmp_path / "h.png")])
    # A tensor is an array.
    pixels = np.asarray(Image.open(tmp_path / "h.png"))[None]
    np.testing.assert_allclose(
        predictor.predict(tf.constant(pixels))["scores"],
        predictor.predict(pixels)["scores"])


def test_a_file_name_that_is_not_utf8_is_written_to_a_csv(run, tmp_path):
    # Scored, then a UnicodeEncodeError writing the CSV (nothing written);
    # now its bytes on disk, so the row names the file.
    config, _, _ = run
    folder = os.fsencode(tmp_path)
    with open(os.path.join(folder, b"bad\xff.png"), "wb") as f:
        Image.new("RGB", (16, 16), (90, 20, 200)).save(f, format="PNG")
    output = tmp_path / "p.csv"
    rows = predict.predict_files(config.replace(
        mode="predict", inputs=os.fsdecode(os.path.join(folder,
                                                        b"bad\xff.png")),
        output=str(output)))
    assert not rows[0]["error"]
    assert b"bad\xff.png" in output.read_bytes()


def _edited_export(run, tmp_path, edit):
    """A copy of the run's export, `edit(folder)` applied."""
    config, _, _ = run
    folder = str(tmp_path / "copy")
    shutil.copytree(os.path.join(config.runtime.workdir, "export"), folder)
    edit(folder)
    return folder


def _rewrite_manifest(change):
    def edit(folder):
        path = os.path.join(folder, "manifest.json")
        manifest = json.load(open(path))
        change(manifest)
        with open(path, "w") as f:
            json.dump(manifest, f)
    return edit


def _swap_first_two(names):
    names[0], names[1] = names[1], names[0]


@pytest.mark.parametrize("edit, fragment", [
    # Names swapped in the manifest: predict and evaluate named classes by
    # it, the SavedModel's labels by its own (accuracy 0.67 became 0.33).
    (_rewrite_manifest(lambda m: _swap_first_two(m["class_names"])),
     "its manifest.json names the classes"),
    (_rewrite_manifest(lambda m: m["class_names"].pop()),  # IndexError
     "its manifest.json names the classes"),
    (lambda folder: open(os.path.join(folder, "assets", "labels.txt"),
                         "w").write("x\ny\nz\n"),
     "assets/labels.txt \\['x', 'y', 'z'\\]"),
    (lambda folder: open(os.path.join(folder, "manifest.json"),
                         "w").write('{"class_na'),  # JSONDecodeError
     "Invalid record .*manifest.json"),
    (_rewrite_manifest(lambda m: m.pop("class_names")),  # KeyError
     "is not a tl_keras export manifest"),
    (lambda folder: shutil.rmtree(os.path.join(folder, "variables")),
     "its SavedModel cannot be loaded"),
])
def test_an_edited_or_broken_export_is_refused_on_loading(run, tmp_path,
                                                         edit, fragment):
    folder = _edited_export(run, tmp_path, edit)
    with pytest.raises(tl_keras.InputError, match=fragment):
        tl_keras.load_exported(folder)


def test_an_export_without_its_names_in_the_model_checks_the_count(run):
    # Exports written before the SavedModel held its class names: the
    # number of outputs is what can be checked.
    from types import SimpleNamespace

    from tl_keras.export import predictor

    config, _, served = run
    export = os.path.join(config.runtime.workdir, "export")
    names = json.load(open(os.path.join(export, "manifest.json")))[
        "class_names"]
    assert [n.decode() for n in served.class_names().numpy()] == names
    older = SimpleNamespace(signatures=served.signatures)
    predictor._check_names(older, names, export, 32)  # as written
    with pytest.raises(tl_keras.InputError, match=r"gives \['3 classes'\]"):
        predictor._check_names(older, names[:2], export, 32)
