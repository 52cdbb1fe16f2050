"""Benchmark: do tl_keras's input pipeline or callbacks slow the fine-tune step?

One MobileNetV2 classifier (weights=None, fine-tune stage: BatchNorm
frozen), compiled once; `fit` for one epoch at a time on each input
pipeline in turn (A B C, then C B A, ...), so drift of a shared machine
hits all alike and nothing is retraced after a warm-up epoch each:

  plain   float32 cached, shuffle(n), batch, prefetch (Keras-guide style)
  data    tl_keras.from_arrays(...).train: uint8 cached, epoch-keyed
          shuffle, batch, parallel cast to float32, prefetch
  incast  the same but uint8 batches, cast inside the model's step
  callbacks  plain's pipeline with the callbacks a tl_keras stage adds
          (BackupAndRestore, CSVLogger, TensorBoard; verbose=2, as
          tl_keras runs when not on a terminal)

Prints each round's median step time and, per variant, the median over
rounds of plain / variant.

    python bench/step_input_variants.py                  # 12 rounds
    python bench/step_input_variants.py --rounds=4 --size=96
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


class EpochSteps(keras.callbacks.Callback):
    """Gaps between consecutive train batches of one epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        self.gaps, self.last = [], None

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    size, bs = args.size, args.batch_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (args.images, size, size, 3), dtype=np.uint8)
    y = (np.arange(args.images) % 5).astype(np.int32)
    config = tl_keras.Config(
        workdir="unused", backbone="mobilenet_v2", weights="none",
        image_size=size, approach="finetune", augment="none",
        batch_size=bs, validation_split=0.1, test_split=0.1)
    data = tl_keras.from_arrays(x, y, config, size)
    n = data.counts["train"]
    autotune = tf.data.AUTOTUNE
    source = tf.data.Dataset.from_tensor_slices((x[:n], y[:n]))
    variants = {
        "plain": source.map(lambda a, b: (tf.cast(a, tf.float32), b))
        .cache().shuffle(n).batch(bs).prefetch(autotune),
        "data": data.train,
        "incast": data.shuffle.apply(source.cache(), n).batch(bs)
        .prefetch(autotune),
    }
    variants["callbacks"] = variants["plain"]
    logs = tempfile.mkdtemp(prefix="tl_keras_bench_")

    def stage_callbacks(r):
        run = os.path.join(logs, str(r))
        return [keras.callbacks.BackupAndRestore(
                    os.path.join(run, "backup"), double_checkpoint=True),
                keras.callbacks.CSVLogger(os.path.join(run, "log.csv")),
                keras.callbacks.TensorBoard(os.path.join(run, "tb"))]

    backbone = models.build_backbone("mobilenet_v2", "none", size)
    model = models.build_classifier(backbone, 5, 0.2)
    models.configure_stage(model, "finetune", backbone.blocks())
    models.compile_for_stage(model, 1e-5, False)
    names = list(variants)
    for name in names:  # warm-up: traces each input signature once
        model.fit(variants[name], epochs=1, verbose=0)
    steps = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            timer = EpochSteps()
            extra = stage_callbacks(r) if name == "callbacks" else []
            model.fit(variants[name], epochs=1,
                      verbose=2 if name == "callbacks" else 0,
                      callbacks=[timer, data.shuffle.callback(2), *extra])
            steps[name].append(float(np.median(timer.gaps)))
        print(r, {k: round(v[-1] * 1000) for k, v in steps.items()},
              flush=True)
    print(f"\nmobilenet_v2 fine-tune step, {size} px, batch {bs}, "
          f"{args.rounds} rounds of one epoch each:")
    for name in names:
        ratio = np.array(steps["plain"]) / np.array(steps[name])
        print(f"  {name:<7} median step {np.median(steps[name]) * 1000:5.0f}"
              f" ms; plain / {name} per round: median {np.median(ratio):.3f}"
              f" (min {ratio.min():.3f}, max {ratio.max():.3f})")


if __name__ == "__main__":
    main()
