"""Benchmark: `transfer` with cached features vs the Keras guide's loop.

Both runs train the same head on the same synthetic images, in this one
process, one after the other; the guide's loop runs every image through
the frozen base every epoch (tl_keras with --feature_cache=false), the
cached path runs the base once. Prints both times and their ratio.

    python bench/transfer_cached.py                 # 2,048 images, 160 px
    python bench/transfer_cached.py --images=256    # a quick look

weights=None (no network here): speed does not depend on the weights.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tl_keras  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--backbone", default="mobilenet_v2")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, args.size, args.size, 3),
                     dtype=np.uint8)
    y = np.arange(args.images) % 5
    times, stage_times = {}, {}
    with tempfile.TemporaryDirectory() as root:
        for name, cache in (("guide loop", False), ("cached", True)):
            config = tl_keras.Config(
                workdir=os.path.join(root, name.replace(" ", "_")),
                backbone=args.backbone, weights="none",
                image_size=args.size, approach="transfer",
                epochs=args.epochs, augment="none", feature_cache=cache,
                validation_split=0.1, test_split=0.1)
            data = tl_keras.from_arrays(x, y, config, args.size)
            start = time.perf_counter()
            metrics = tl_keras.train(config, data=data)
            times[name] = time.perf_counter() - start
            # The head stage alone: feature extraction (cached) + fit.
            stage_times[name] = metrics["stages"]["head"][
                "seconds_this_process"]
    print(f"\n{args.backbone}, {args.images} images at {args.size} px, "
          f"{args.epochs} epochs of transfer, end to end (incl. eval and "
          f"export):")
    print(f"  {'':<10} {'end to end':>12} {'head stage':>12}")
    for name in times:
        print(f"  {name:<10} {times[name]:10.1f} s {stage_times[name]:10.1f} s")
    print(f"  {'speed-up':<10} {times['guide loop'] / times['cached']:11.2f}x"
          f" {stage_times['guide loop'] / stage_times['cached']:11.2f}x")


if __name__ == "__main__":
    main()
