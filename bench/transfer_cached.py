"""Benchmark: `transfer` with cached features vs the Keras guide's loop.

Both runs train the same head on the same synthetic images, in this one
process; the guide's loop runs every image through the frozen base every
epoch (tl_keras with --feature_cache=false), the cached path runs the base
once. A third run, "keras fit", is the guide's own code (a plain Keras
model on tf.data from numpy, fit + evaluate, no export): a baseline that
does not go through tl_keras's pipeline. A fourth, "floor", is the
least any transfer run can take: building the base and one forward pass
over all the images (plain Keras `predict` at the batch tl_keras's
passes start from, 8 on 2 cores; the issue's target is the whole
cached run within 1.5x of it). Each round runs all, odd rounds in the
order guide, cached, keras fit, floor and even rounds in the reverse
(this shared machine's speed drifts); prints each round's times and
ratios and their medians.

    python bench/transfer_cached.py                 # 2,048 images, 160 px
    python bench/transfer_cached.py --images=256 --rounds=1  # a quick look
    python bench/transfer_cached.py --backbone=hub_vit_tiny --size=112
    python bench/transfer_cached.py --augment=flip,rotation,zoom  # views

weights=None (no network here): speed does not depend on the weights.
`hub_vit_tiny` is a KerasHub ViT shaped as ViT-Tiny (patch 16, 12 encoder
layers, width 192, 3 heads), saved as a local preset and run as
`--backbone=hub:FOLDER` (KerasHub's named presets download).
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tl_keras  # noqa: E402
from tl_keras.inference import inference_batch_size  # noqa: E402


def frozen_mobilenet_features(size):
    """The guide's frozen MobileNetV2 (random weights), called with
    training=False on rescaled images, then pooled: (inputs, features)."""
    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, weights=None)
    base.trainable = False
    inputs = keras.Input((size, size, 3))
    h = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    h = base(h, training=False)
    return inputs, keras.layers.GlobalAveragePooling2D()(h)


def keras_guide_loop(x, y, size, epochs):
    """The Keras transfer-learning guide's loop, as written there: frozen
    MobileNetV2 called with training=False, a new head, fit on tf.data
    with validation each epoch, then evaluate on the test split. Returns
    seconds (building included)."""
    start = time.perf_counter()
    n = len(x)
    n_val = n_test = n // 10
    parts = {"train": slice(0, n - n_val - n_test),
             "val": slice(n - n_val - n_test, n - n_test),
             "test": slice(n - n_test, n)}
    ds = {k: tf.data.Dataset.from_tensor_slices((x[s], y[s])).batch(
        32).prefetch(tf.data.AUTOTUNE) for k, s in parts.items()}
    inputs, h = frozen_mobilenet_features(size)
    h = keras.layers.Dropout(0.2)(h)
    model = keras.Model(inputs, keras.layers.Dense(5)(h))
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(ds["train"], validation_data=ds["val"], epochs=epochs,
              verbose=2)
    model.evaluate(ds["test"], verbose=0)
    return time.perf_counter() - start


def forward_floor(x, size):
    """One forward pass of the frozen MobileNetV2 (pooled) over all of x,
    building included: what any transfer run must at least do. Returns
    seconds."""
    start = time.perf_counter()
    model = keras.Model(*frozen_mobilenet_features(size))
    model.predict(x, batch_size=inference_batch_size() or 32, verbose=0)
    return time.perf_counter() - start


def vit_tiny_preset(root, size):
    """A ViT-Tiny-shaped KerasHub preset (random weights) at `size` px in
    root; returns its --backbone value."""
    import keras_hub

    folder = os.path.join(root, "vit_tiny")
    keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3), patch_size=16, num_layers=12,
        num_heads=3, hidden_dim=192, mlp_dim=768).save_to_preset(folder)
    keras_hub.layers.ViTImageConverter(
        image_size=(size, size), scale=1 / 127.5,
        offset=-1).save_to_preset(folder)
    return f"hub:{folder}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--augment", default="none",
                        help="e.g. flip,rotation,zoom: both tl_keras runs "
                             "augment (the guide loop draws fresh every "
                             "epoch, the cached run takes "
                             "--feature_cache_views=auto's views); the "
                             "plain keras fit, which does not, is left out")
    parser.add_argument("--runs", default="all",
                        help="which runs to time, e.g. cached,floor for "
                             "more rounds of the floor ratio alone "
                             "(default all: guide loop, cached, keras "
                             "fit, floor)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, args.size, args.size, 3),
                     dtype=np.uint8)
    y = np.arange(args.images) % 5
    runs = [("guide loop", False), ("cached", True)]
    if args.backbone == "mobilenet_v2":
        if args.augment == "none":
            runs.append(("keras fit", None))
        runs.append(("floor", "floor"))
    if args.runs != "all":
        flag_names = {name.replace(" ", "_"): name for name, _ in runs}
        wanted = {flag_names.get(n, n) for n in args.runs.split(",")}
        if wanted - set(dict(runs)) or "cached" not in wanted:
            parser.error(f"--runs: a list with cached, of "
                         f"{list(flag_names)}; received {args.runs}")
        runs = [run for run in runs if run[0] in wanted]
    rows = []  # per round: {name: (end to end, head stage, extraction)}
    label = args.backbone
    with tempfile.TemporaryDirectory() as root:
        if args.backbone == "hub_vit_tiny":
            args.backbone = vit_tiny_preset(root, args.size)
        for r in range(args.rounds):
            row = {}
            for name, cache in runs if r % 2 == 0 else runs[::-1]:
                if cache is None:
                    row[name] = (keras_guide_loop(x, y, args.size,
                                                  args.epochs), 0.0, 0.0)
                    continue
                if cache == "floor":
                    row[name] = (forward_floor(x, args.size), 0.0, 0.0)
                    continue
                config = tl_keras.Config(
                    workdir=os.path.join(root, f"{r}_{name[0]}"),
                    backbone=args.backbone, weights="none",
                    image_size=args.size, approach="transfer",
                    epochs=args.epochs, augment=args.augment,
                    feature_cache=cache,
                    validation_split=0.1, test_split=0.1)
                data = tl_keras.from_arrays(x, y, config, args.size)
                start = time.perf_counter()
                head = tl_keras.train(config, data=data)["stages"]["head"]
                # The head stage alone: feature extraction (cached) + fit.
                row[name] = (time.perf_counter() - start,
                             head["seconds_this_process"],
                             head["feature_extraction_seconds"] or 0.0)
            rows.append(row)
    print(f"\n{label}, {args.images} images at {args.size} px, "
          f"augment={args.augment}, "
          f"{args.epochs} epochs of transfer, end to end (incl. model "
          f"building, evaluation and export), {args.rounds} rounds:")
    if "guide loop" in rows[0]:
        print(f"  {'round':<6} {'guide loop':>11} {'head stage':>11} "
              f"{'cached':>9} {'head stage':>11} {'extraction':>11} "
              f"{'end to end':>11} {'head stage':>11}")
    ratios = []
    for r, row in enumerate(rows, start=1):
        if "guide loop" not in row:
            break
        (g, g_head, _), (c, c_head, c_extract) = row["guide loop"], row[
            "cached"]
        ratios.append((g / c, g_head / c_head))
        print(f"  {r:<6} {g:9.1f} s {g_head:9.1f} s {c:7.1f} s "
              f"{c_head:9.1f} s {c_extract:9.1f} s {g / c:10.2f}x "
              f"{g_head / c_head:10.2f}x")
    if ratios:
        end_to_end, stage = np.median(ratios, axis=0)
        print(f"  median speed-up: {end_to_end:.2f}x end to end, "
              f"{stage:.2f}x head stage")
    if "keras fit" in rows[0]:
        plain = [row["keras fit"][0] / row["cached"][0] for row in rows]
        print("  keras fit (the guide's own code, fit + evaluate, no "
              "export): " + ", ".join(
                  f"{row['keras fit'][0]:.1f} s" for row in rows)
              + f"; cached end to end is {np.median(plain):.2f}x faster "
              f"(median)")
    if "floor" in rows[0]:
        over = [row["cached"][0] / row["floor"][0] for row in rows]
        print("  floor (building + one forward pass over all the images): "
              + ", ".join(f"{row['floor'][0]:.1f} s" for row in rows)
              + "; the whole cached run: " + ", ".join(
                  f"{row['cached'][0]:.1f} s" for row in rows)
              + f"; {np.median(over):.2f}x the floor (median; per round "
              + ", ".join(f"{o:.2f}x" for o in over) + ")")


if __name__ == "__main__":
    main()
