"""Benchmark: forward passes at the measured batch size against fixed ones.

One traced forward pass of a frozen base (pooled features, as feature
extraction runs it) over the same synthetic images, three ways, in this
one process: the batch the pass measures (`inference.run_batched`, the
default), the fixed per-core batch (4 images per usable core, the rule
before), and the Keras guide's batch of 32. Rounds alternate the order
(this shared machine's speed drifts); prints images/s per round, the
median, and the measured pass's ratio to each fixed one.

    python bench/forward_batch.py                     # MobileNetV2, 160 px
    python bench/forward_batch.py --backbone=resnet50 --size=128 --images=512

weights=None (no network here): speed does not depend on the weights.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tl_keras  # noqa: E402
from tl_keras import inference  # noqa: E402
from tl_keras.training import feature_cache  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    built = tl_keras.models.build_backbone(args.backbone, "none", args.size)
    model = tl_keras.models.build_classifier(built, 10, 0.0)
    extractor = feature_cache.feature_extractor(model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.size, args.size, 3)
                          ).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices(
        (images, np.zeros(args.images, np.int32))).batch(32)
    unit = inference.inference_batch_size()
    fixed = inference.inference_batch_size

    def run(variant):
        inference.inference_batch_size = (
            (lambda: 32) if variant == "guide 32" else fixed)
        start = time.perf_counter()
        inference.run_batched(extractor, ds, args.images,
                              measure=variant == "measured")
        inference.inference_batch_size = fixed
        return args.images / (time.perf_counter() - start)

    variants = ["measured", f"fixed {unit}", "guide 32"]
    run("measured")  # traces the extractor once, outside the timings
    rates = {v: [] for v in variants}
    print(f"{args.backbone}, {args.images} images at {args.size} px, "
          f"forward-only (pooled features), {args.rounds} rounds; "
          f"images/s:")
    print("  round " + "".join(f"{v:>12}" for v in variants))
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            rates[v].append(run(v))
        print(f"  {r + 1:<5} " + "".join(f"{rates[v][-1]:12.1f}"
                                         for v in variants))
    median = {v: float(np.median(rates[v])) for v in variants}
    print("  median" + "".join(f"{median[v]:12.1f}" for v in variants))
    for v in variants[1:]:
        ratios = [m / f for m, f in zip(rates["measured"], rates[v],
                                        strict=True)]
        print(f"  measured / {v}: {np.median(ratios):.2f}x (rounds "
              f"{min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
