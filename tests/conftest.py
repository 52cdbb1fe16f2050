"""Shared fixtures: generated image folders in every supported format.

No test downloads anything: images are drawn here, backbones use
weights=None, local weight files, or bases pretrained in the test.
"""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

import tl_keras  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# For tests that check what tl_keras picks on a CPU-only host (XLA off,
# float32); on a machine with GPUs the defaults differ by design.
ON_GPU_HOST = bool(tf.config.list_physical_devices("GPU"))
cpu_only = pytest.mark.skipif(
    ON_GPU_HOST, reason="checks the CPU-only defaults; this host has GPUs")

def small_hub_preset(folder, family="ViT"):
    """A small KerasHub backbone (random weights, seed 0) with a [-1, 1]
    image converter, saved as a local preset in `folder` (32 px, 2 encoder
    layers); returns its --backbone value. ViT (class token) or DINOV2
    (its position table made for 48 px, interpolated to 32 as DINOv2's
    presets are from 518). keras_hub is imported only here."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    kwargs = dict(image_shape=(32, 32, 3), patch_size=8, num_layers=2,
                  num_heads=2, hidden_dim=16)
    if family == "ViT":
        kwargs.update(mlp_dim=32)
    else:
        kwargs.update(intermediate_dim=32, position_embedding_shape=(48, 48, 3))
    getattr(keras_hub.models, f"{family}Backbone")(**kwargs).save_to_preset(
        folder)
    getattr(keras_hub.layers, f"{family}ImageConverter")(
        image_size=(32, 32), scale=1 / 127.5, offset=-1).save_to_preset(
        folder)
    return f"hub:{folder}"


def tflite_scores(path, x):
    """The scores a .tflite model at `path` gives for the batch `x`."""
    interpreter = tf.lite.Interpreter(model_path=path)
    entry = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(entry["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(entry["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(
        interpreter.get_output_details()[0]["index"])


def run_fault_task(data_dir, workdir, flags, fault=None):
    """Runs tests/fault_task.py (the command line, which SIGKILLs itself
    at `fault`, e.g. 'batch:finetune:2:2'; None runs to the end)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TL_KERAS_TEST_FAULT", None)
    if fault:
        env["TL_KERAS_TEST_FAULT"] = fault
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "fault_task.py"),
         f"--data_dir={data_dir}", f"--workdir={workdir}", *flags],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def run_cli(*args, timeout=600):
    """Runs `python run.py ARGS` from the repository root (a new process:
    TensorFlow's start-up included); returns the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "run.py", *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=timeout)


# One saving recipe per format, including the conversions the loader must
# handle: grayscale and RGBA PNG, palette GIF.
FORMATS = {
    "png": lambda im, path: im.save(path + ".png"),
    "jpg": lambda im, path: im.save(path + ".jpg", quality=95),
    "gray.png": lambda im, path: im.convert("L").save(path + ".gray.png"),
    "rgba.png": lambda im, path: im.convert("RGBA").save(path + ".rgba.png"),
    "bmp": lambda im, path: im.save(path + ".bmp"),
    "gif": lambda im, path: im.convert("P").save(path + ".gif"),
}


def class_image(label, rng, size):
    """A class-dependent pattern (bars at a class angle) plus noise, so a
    small CNN can learn the classes in a few epochs."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = label * np.pi / 3
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 12)
    base = (wave > 0).astype(np.float32)
    color = np.array([[1.0, 0.3, 0.2], [0.2, 1.0, 0.3], [0.3, 0.2, 1.0]])[
        label % 3]
    pixels = base[..., None] * color * 200 + rng.uniform(0, 55, (size, size,
                                                                 3))
    return Image.fromarray(pixels.astype(np.uint8))


def write_image_folder(root, num_classes=3, per_class=12, seed=0,
                       formats=tuple(FORMATS), sizes=(24, 40)):
    """Writes root/<class>/<i>.<fmt> images; returns root."""
    rng = np.random.default_rng(seed)
    for label in range(num_classes):
        folder = os.path.join(root, f"class_{label}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            size = int(rng.integers(sizes[0], sizes[1] + 1))
            fmt = formats[i % len(formats)]
            FORMATS[fmt](class_image(label, rng, size),
                         os.path.join(folder, f"{i:03d}"))
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("images")))


@pytest.fixture
def tiny_config(tmp_path, image_folder):
    return tl_keras.Config(
        data_dir=image_folder, workdir=str(tmp_path / "run"),
        backbone="compact_cnn", weights="none", image_size=32,
        approach="finetune", epochs=2, finetune_epochs=1, batch_size=8,
        validation_split=0.2, test_split=0.2, augment="flip,rotation,zoom")


@pytest.fixture(scope="session")
def pretrained_base(tmp_path_factory, image_folder):
    """A compact_cnn trained from scratch on `image_folder` (saved
    .keras), so its features are real rather than an untrained base's."""
    workdir = str(tmp_path_factory.mktemp("base") / "run")
    tl_keras.train(tl_keras.Config(
        data_dir=image_folder, workdir=workdir, backbone="compact_cnn",
        weights="none", image_size=32, approach="scratch", epochs=2,
        batch_size=8, augment="none"))
    return os.path.join(workdir, "model.keras")


def fake_probes(monkeypatch, last, layers):
    """Makes the advisor's real measurements report these probe and head
    accuracies (the last layer's, and {block: accuracy} for the earlier
    blocks), to test what follows a decision on them."""
    import importlib

    module = importlib.import_module("tl_keras.advisor.advise")
    real = module.measure

    def measure(*args, **kwargs):
        m = real(*args, **kwargs)
        # The run's head (what the decision reads) and the probe alike.
        m["last"].update(probe_accuracy=last, head_accuracy=last)
        m["layers"] = {block: {"probe_accuracy": accuracy,
                               "head_accuracy": accuracy}
                       for block, accuracy in layers.items()}
        return m

    monkeypatch.setattr(module, "measure", measure)


def gif_bytes(indices, palette, canvas=None, offset=(0, 0), transparency=None,
              comment=None, loop=False):
    """A one-frame GIF of palette `indices` (2-D uint8) and `palette` (RGB
    triples), written by PIL, its frame then placed at `offset` on a
    `canvas` (width, height) by rewriting the logical screen and the image
    descriptor (PIL writes neither)."""
    import io
    import struct

    image = Image.fromarray(np.asarray(indices, np.uint8), mode="P")
    image.putpalette([c for rgb in palette for c in rgb])
    options = {"transparency": transparency} if transparency is not None else {}
    if comment:
        options["comment"] = comment
    if loop:
        options["loop"] = 0
    buffer = io.BytesIO()
    image.save(buffer, format="GIF", optimize=False, **options)
    data = bytearray(buffer.getvalue())
    if canvas is not None:
        data[6:10] = struct.pack("<HH", *canvas)
    pos = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[pos] == 0x21:  # extension blocks up to the image descriptor
        pos += 2
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
    assert data[pos] == 0x2C
    data[pos + 1:pos + 5] = struct.pack("<HH", *offset)
    return bytes(data)


def interrupt_before_training(config, monkeypatch):
    """Starts the run of `config` and stops it (a Ctrl-C) where its first
    stage would train: its workdir and data records are written."""
    from tl_keras.training import trainer

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "run_stage", crash)
        with pytest.raises(KeyboardInterrupt):
            tl_keras.train(config)
