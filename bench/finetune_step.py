"""Benchmark: tl_keras's fine-tune stage vs plain Keras `fit`, and the
step's achieved FLOP/s as a fraction of this machine's matmul peak.

Same architecture, data, batch and epochs, in this one process:
  plain fit  the same classifier (tl_keras's build, fine-tune layers
             set trainable, BatchNorm frozen), compiled with Adam,
             `model.fit` on a cached tf.data pipeline, no callbacks;
  tl_keras   the fine-tune stage of `tl_keras.train` (approach=finetune):
             its pipeline, BatchNorm frozen, checkpoint, backup, CSV and
             TensorBoard callbacks (what a user gets).
Two ratios: step throughput (the median time between consecutive train
batches, after the first epoch, which traces; recorded by a callback
added to both fits: `tl_keras.train(..., callbacks=[timer])` for
tl_keras's), and the whole stage end to end (tracing, validation on the
held-out images, checkpoint and backup writes, logs). The FLOP count is
TensorFlow's profiler count of one forward pass; a train step is taken as
3x forward (forward + two backward matmuls per layer).

    python bench/finetune_step.py    # 512 images, 160 px, 8 rounds, ~25 min
    python bench/finetune_step.py --images=128 --rounds=1  # a quick look

The two are interleaved (plain, tl_keras, plain, tl_keras, ...) and the
medians compared, so slow drift of a shared machine hits both alike. On
a shared 2-core machine single rounds spread 0.93x-1.14x for the step;
2 rounds once gave 0.90x where 8 gave 1.00x, hence 8 by default.

weights=None (no network here): speed does not depend on the weights.
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
from tl_keras import models  # noqa: E402


def matmul_peak(n=2048, repeats=20):
    """Measured float32 FLOP/s of a large matmul on this machine."""
    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    run = tf.function(lambda a, b: tf.matmul(a, b))
    run(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        out = run(a, b)
    out.numpy()
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def forward_flops(model, size):
    """FLOPs of one image's forward pass (TensorFlow profiler count)."""
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, size, size, 3), tf.float32))
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=fn.graph, options=opts)
    return info.total_float_ops


class StepTimer(keras.callbacks.Callback):
    """Median seconds per train batch, epochs after the first."""

    def __init__(self):
        super().__init__()
        self.gaps, self.last, self.epoch = [], None, 0

    def on_train_begin(self, logs=None):
        # One timer serves every stage of a tl_keras run (train's
        # callbacks= goes to each fit); it keeps the last fit's steps.
        self.gaps, self.last, self.epoch = [], None, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.last = epoch, None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self.last is not None and self.epoch > 0:
            self.gaps.append(now - self.last)
        self.last = now

    def median(self):
        return float(np.median(self.gaps))


def plain_fit(args, x, y):
    backbone = models.build_backbone(args.backbone, "none", args.size)
    model = models.build_classifier(backbone, 5, 0.2)
    models.configure_stage(model, "finetune", backbone.blocks())
    model.compile(keras.optimizers.Adam(1e-5),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), metrics=["accuracy"])
    n = int(len(y) * 0.8)
    ds = tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).map(
        lambda a, b: (tf.cast(a, tf.float32), b)).cache().shuffle(n).batch(
        args.batch_size).prefetch(tf.data.AUTOTUNE)
    timer = StepTimer()
    start = time.perf_counter()
    model.fit(ds, epochs=args.epochs, verbose=0, callbacks=[timer])
    return time.perf_counter() - start, n, model, timer.median()


def tl_keras_stage(args, x, y, root, round_index):
    """Runs tl_keras's fine-tune stage; returns (seconds, train images,
    val images, median step seconds)."""
    timer = StepTimer()
    config = tl_keras.Config(
        workdir=os.path.join(root, f"run{round_index}"),
        backbone=args.backbone, weights="none", image_size=args.size,
        approach="finetune", epochs=1, finetune_epochs=args.epochs,
        augment="none", batch_size=args.batch_size,
        validation_split=0.1, test_split=0.1)
    data = tl_keras.from_arrays(x, y, config, args.size)
    metrics = tl_keras.train(config, data=data, callbacks=[timer])
    stage = metrics["stages"]["finetune"]
    # The timer kept the last fit's steps: the fine-tune stage's.
    return (stage["seconds_this_process"], metrics["num_train"],
            metrics["counts"]["val"], timer.median())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--rounds", type=int, default=8,
                        help="interleaved plain / tl_keras rounds")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, args.size, args.size, 3),
                     dtype=np.uint8)
    y = (np.arange(args.images) % 5).astype(np.int32)
    peak = matmul_peak()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.rounds):  # A B A B: drift hits both alike
            plain_seconds, n_plain, plain_model, plain_step = plain_fit(
                args, x, y)
            tl_seconds, n_tl, n_val, tl_step = tl_keras_stage(
                args, x, y, root, r)
            rows.append((plain_seconds, plain_step, tl_seconds, tl_step))
    flops = 3 * forward_flops(plain_model, args.size)
    print(f"\n{args.backbone} fine-tune, {args.epochs} epochs, batch "
          f"{args.batch_size}, {args.size} px; {n_plain} / {n_tl} train "
          f"images (plain / tl_keras, which also validates {n_val} "
          f"images per epoch); stage times include tracing:")
    print(f"  {'round':<6} {'plain stage':>11} {'step':>8} "
          f"{'tl_keras stage':>14} {'step':>8} {'step ratio':>10} "
          f"{'end-to-end ratio':>16}")
    for r, (ps, pst, ts, tst) in enumerate(rows, start=1):
        ratio_e2e = (n_tl / ts) / (n_plain / ps)
        print(f"  {r:<6} {ps:10.1f}s {pst * 1000:6.0f}ms {ts:13.1f}s "
              f"{tst * 1000:6.0f}ms {pst / tst:9.2f}x {ratio_e2e:15.2f}x")
    plain_step = float(np.median([row[1] for row in rows]))
    tl_step = float(np.median([row[3] for row in rows]))
    plain_e2e = float(np.median([n_plain / row[0] for row in rows]))
    tl_e2e = float(np.median([n_tl / row[2] for row in rows]))
    print(f"  median: tl_keras / plain fit = {plain_step / tl_step:.2f}x "
          f"step throughput, {tl_e2e / plain_e2e:.2f}x end to end")
    step_rate = args.batch_size / tl_step
    print(f"  train step ~{flops / 1e9:.2f} GFLOP/image; matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s; tl_keras's step achieves "
          f"{step_rate * flops / 1e9:.1f} GFLOP/s = "
          f"{step_rate * flops / peak:.1%} of peak")


if __name__ == "__main__":
    main()
