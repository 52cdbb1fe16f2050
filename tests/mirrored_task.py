"""MirroredStrategy over 2 logical CPU devices vs one device, in one process.

Used by tests/test_distribute.py as `python tests/mirrored_task.py WORKDIR
[BASE]` (BASE: compact_cnn, the default, or hub_vit, a small KerasHub ViT
saved as a local preset in WORKDIR; the CPU must be split into logical
devices before TensorFlow starts, so this cannot run inside the pytest
process). Prints one JSON line:
  errors: the messages for a batch size not divisible by 2 and for
    jit_compile=true under MirroredStrategy on CPU devices;
  one_device, mirrored: per-epoch training losses of each stage and the
    final weights' checksum of the same run on each strategy;
  max_weight_diff, hardware.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

import tl_keras  # noqa: E402
from tl_keras import data as data_lib  # noqa: E402
from tl_keras.models.backbones import load_model_file  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import class_image, small_hub_preset  # noqa: E402


def main(workdir, base="compact_cnn"):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 12).astype(np.int32)
    images = np.stack([np.asarray(class_image(int(y), rng, 32))
                       for y in labels])
    backbone = (small_hub_preset(os.path.join(workdir, "vit_preset"))
                if base == "hub_vit" else base)
    config = tl_keras.Config(
        workdir="", backbone=backbone,
        weights="imagenet" if base == "hub_vit" else "none", image_size=32,
        approach="finetune", epochs=2, finetune_epochs=2, batch_size=6,
        finetune_learning_rate=1e-3, augment="none", dropout=0.0,
        validation_split=0.25, test_split=0.25)
    errors = {}
    for name, changes in {"batch_size": {"batch_size": 5},
                          "jit_compile": {"jit_compile": "true"}}.items():
        try:
            tl_keras.train(config.replace(
                distribution="mirrored", workdir=f"{workdir}/bad", **changes),
                data=data_lib.from_arrays(images, labels, config, 32))
            errors[name] = None
        except tl_keras.InputError as e:
            errors[name] = str(e)
    out = {"errors": errors, "bad_workdir_created": os.path.exists(
        f"{workdir}/bad")}
    weights = {}
    for kind in ("one_device", "mirrored"):
        run = config.replace(distribution=kind, workdir=f"{workdir}/{kind}")
        metrics = tl_keras.train(run, data=data_lib.from_arrays(
            images, labels, run, 32))
        out[kind] = {stage: s["history"]["loss"]
                     for stage, s in metrics["stages"].items()}
        out[kind + "_hardware"] = metrics["hardware"]
        out[kind + "_val_accuracy"] = {
            stage: s["history"]["val_accuracy"]
            for stage, s in metrics["stages"].items()}
        weights[kind] = {w.path: w.numpy() for w in load_model_file(
            f"{workdir}/{kind}/model.keras").weights}
    # An attention layer's key bias adds the same number to every key's
    # logit for a query, which the softmax cancels: its gradient is zero
    # but for rounding, and Adam's normalised step turns that noise into
    # steps of up to the learning rate, different on each strategy. It
    # changes no output, so it is left out of the comparison.
    out["max_weight_diff"] = max(
        float(np.abs(w - weights["mirrored"][path]).max())
        for path, w in weights["one_device"].items()
        if not path.endswith("key/bias"))
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
