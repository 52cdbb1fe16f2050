"""Benchmark: `transfer` with cached features vs the Keras guide's loop.

Both runs train the same head on the same synthetic images, in this one
process; the guide's loop runs every image through the frozen base every
epoch (tl_keras with --feature_cache=false), the cached path runs the base
once. Each round runs both, in alternating order (guide first in odd
rounds, cached first in even ones: this shared machine's speed drifts);
prints each round's times and ratios and their medians.

    python bench/transfer_cached.py                 # 2,048 images, 160 px
    python bench/transfer_cached.py --images=256 --rounds=1  # a quick look

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
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, args.size, args.size, 3),
                     dtype=np.uint8)
    y = np.arange(args.images) % 5
    runs = (("guide loop", False), ("cached", True))
    rows = []  # per round: {name: (end to end, head stage, extraction)}
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.rounds):
            row = {}
            for name, cache in runs if r % 2 == 0 else runs[::-1]:
                config = tl_keras.Config(
                    workdir=os.path.join(root, f"{r}_{name[0]}"),
                    backbone=args.backbone, weights="none",
                    image_size=args.size, approach="transfer",
                    epochs=args.epochs, augment="none", feature_cache=cache,
                    validation_split=0.1, test_split=0.1)
                data = tl_keras.from_arrays(x, y, config, args.size)
                start = time.perf_counter()
                head = tl_keras.train(config, data=data)["stages"]["head"]
                # The head stage alone: feature extraction (cached) + fit.
                row[name] = (time.perf_counter() - start,
                             head["seconds_this_process"],
                             head["feature_extraction_seconds"] or 0.0)
            rows.append(row)
    print(f"\n{args.backbone}, {args.images} images at {args.size} px, "
          f"{args.epochs} epochs of transfer, end to end (incl. model "
          f"building, evaluation and export), {args.rounds} rounds:")
    print(f"  {'round':<6} {'guide loop':>11} {'head stage':>11} "
          f"{'cached':>9} {'head stage':>11} {'extraction':>11} "
          f"{'end to end':>11} {'head stage':>11}")
    ratios = []
    for r, row in enumerate(rows, start=1):
        (g, g_head, _), (c, c_head, c_extract) = row["guide loop"], row[
            "cached"]
        ratios.append((g / c, g_head / c_head))
        print(f"  {r:<6} {g:9.1f} s {g_head:9.1f} s {c:7.1f} s "
              f"{c_head:9.1f} s {c_extract:9.1f} s {g / c:10.2f}x "
              f"{g_head / c_head:10.2f}x")
    end_to_end, stage = np.median(ratios, axis=0)
    print(f"  median speed-up: {end_to_end:.2f}x end to end, {stage:.2f}x "
          f"head stage")


if __name__ == "__main__":
    main()
