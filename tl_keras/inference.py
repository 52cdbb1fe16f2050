"""The one forward pass for inference: traced once, run in batches.

Evaluation, feature extraction, the advisor's features and every export
endpoint run a model (or part of one) forward in inference mode. Each goes
through `traced`, a `tf.function` with an input signature, so it is traced
once for every batch size (eager calls dispatch the model op by op, 2-3x
slower for a MobileNetV2 on CPU), and `run_batched` feeds it a dataset
re-batched for inference (`inference_batch_size`, and on CPU the batch
size that the pass measures fastest).
"""

import logging
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE

log = logging.getLogger("tl_keras")


def image_spec(model, name=None):
    """The TensorSpec of a batch of `model`'s float32 input images (by
    `input_shape`, which a Sequential model that was never called has,
    while its `input` raises)."""
    return tf.TensorSpec((None, *model.input_shape[1:]), tf.float32,
                         name=name)


def traced(fn, model, name=None):
    """`fn(images)` as a tf.function over batches of `model`'s input
    images (any batch size, one trace)."""
    return tf.function(fn, input_signature=[image_spec(model, name)])


def forward(model):
    """The traced `model(images, training=False)`, as float32."""
    return traced(lambda x: tf.cast(model(x, training=False), tf.float32),
                  model)


def run_batched(fn, ds, n, out=None, progress=None, measure=True):
    """Runs a traced `fn` over the n (images, labels) of the batched `ds`,
    in batches whose size the pass itself measures (`_measured_calls`).

    Args:
      fn: from `traced`; returns a tensor or a list of tensors.
      ds: a batched dataset of (images, labels).
      n: the number of images in `ds`.
      out: optional array to fill with the (single) output, e.g. a
        memory-mapped file; default new arrays.
      progress: the label of its progress ('Extracting training
        features'), to show it (`Progress`); None: nothing shown.
      measure: measure the batch size; False: batches of
        `inference_batch_size` (for a `fn` whose results depend on how
        the images are batched, e.g. one with random augmentation).

    Returns:
      (outputs, labels): each output concatenated over the batches (a list
      when `fn` returns a list), and the labels as a numpy array.
    """
    ds = for_inference(ds, n)
    shown = Progress(progress, int(ds.cardinality()), n) if progress else None
    chunks, labels, start, done = [], [], 0, 0
    single = True
    for result, y, units in _measured_calls(fn, ds, inference_batch_size(),
                                            measure):
        single = not isinstance(result, (list, tuple))
        parts = [np.asarray(r) for r in ([result] if single else result)]
        if out is None:
            chunks.append(parts)
        else:
            out[start:start + len(parts[0])] = parts[0]
        start += len(parts[0])
        labels.append(np.asarray(y))
        done += units
        if shown is not None:
            shown.update(done, start)
    if out is not None:
        outputs = [out]
    else:
        outputs = [np.concatenate(column) for column in zip(*chunks,
                                                             strict=True)]
    return (outputs[0] if single else outputs), np.concatenate(labels)


class Progress:
    """A pass's progress: Keras's bar on a terminal; elsewhere (a log file,
    a pipe, a batch system's output) plain lines through the `tl_keras`
    logger, at each quarter of the images or after PROGRESS_SECONDS
    without one. Keras's bar redraws with carriage returns, backspaces
    and colour codes whenever Python runs on Linux, terminal or not, and
    filled a log file with them, as training's `verbose=2` avoids."""

    def __init__(self, label, steps, n):
        self.label, self.n = label, n
        self.bar = (keras.utils.Progbar(steps if steps > 0 else None,
                                        unit_name="batch")
                    if sys.stdout.isatty() else None)
        self.quarters, self.said = 0, time.monotonic()

    def update(self, steps, images):
        """After `steps` batches of the pass, `images` images in all."""
        if self.bar is not None:
            self.bar.update(steps)
            return
        quarters = 4 * images // max(self.n, 1)
        if quarters > self.quarters or (
                time.monotonic() - self.said >= PROGRESS_SECONDS):
            log.info("%s: %d / %d images", self.label, images, self.n)
            self.quarters, self.said = quarters, time.monotonic()


# Without a terminal, the seconds after which a pass's next batch logs a
# line short of a quarter (a large split through a slow base).
PROGRESS_SECONDS = 60


# The batch sizes a pass on CPU tries, in units of `inference_batch_size`
# (8, 16 and 32 images with 2 cores; 32 is the Keras guide's batch), each
# on TRIAL_CALLS calls after one call that traces; the rest of the pass
# runs at the fastest. Measured on the running machine, in the pass itself
# (every image is computed once, at whatever size), because the best size
# depends on the machine and the base: 8 ran MobileNetV2 1.3x faster than
# 32 on these 2 cores, and a machine with larger caches may differ.
# Candidates above MAX_TRIAL_BATCH images are not tried: with many cores
# the unit alone is large (64 cores: 256 images), and 4 units of a big base
# at 224 px could run out of memory.
CANDIDATE_UNITS = (1, 2, 4)
TRIAL_CALLS = 2
MAX_TRIAL_BATCH = 64


def _measured_calls(fn, ds, unit, measure=True):
    """Yields (fn's result, labels, units of `ds` used) for calls over
    `ds`'s batches of `unit` images: each call on 1 batch (the first,
    which traces), then TRIAL_CALLS calls for each of CANDIDATE_UNITS
    batches concatenated, timed (until the result is in host memory),
    then the rest at the size with the fewest seconds per image (its
    fastest call). `unit` None (GPU / TPU) or `measure` False: one call
    per batch."""
    if unit is None or not measure:
        for x, y in ds:
            yield fn(x), y, 1
        return
    trials = [(1, False)] + [(k, True) for k in CANDIDATE_UNITS
                             if k == 1 or k * unit <= MAX_TRIAL_BATCH
                             for _ in range(TRIAL_CALLS)]
    per_image, chosen = {}, None
    xs, ys = [], []
    for x, y in ds:
        xs.append(x)
        ys.append(y)
        units, timed = trials[0] if trials else (chosen, False)
        if len(xs) < units:
            continue
        batch = xs[0] if len(xs) == 1 else tf.concat(xs, 0)
        start = time.perf_counter()
        result = _to_host(fn(batch))
        if timed:
            seconds = (time.perf_counter() - start) / int(batch.shape[0])
            per_image[units] = min(seconds, per_image.get(units, seconds))
        if trials:
            trials.pop(0)
            if not trials:
                chosen = min(per_image, key=per_image.get)
        yield result, tf.concat(ys, 0), len(xs)
        xs, ys = [], []
    if xs:
        yield _to_host(fn(tf.concat(xs, 0))), tf.concat(ys, 0), len(xs)


def _to_host(result):
    """`result` (a tensor or a list of them) as numpy arrays."""
    if isinstance(result, (list, tuple)):
        return [np.asarray(r) for r in result]
    return np.asarray(result)


def inference_batch_size():
    """The batch for forward passes only (feature extraction, evaluation):
    None (keep the training batch) on GPU / TPU, 4 images per usable core
    on CPU (the unit `run_batched` measures 1, 2 and 4 of).

    On CPU the base runs faster on small batches (its activations stay in
    cache): with 2 cores, batches of 8 ran MobileNetV2 at 160 px 1.3x
    faster than batches of 32 (108 vs 82 images/s, median of 6 rounds),
    ResNet50 and EfficientNetB0 1.1-1.2x (see bench/RESULTS.md). What is
    computed does not change: each image's forward pass in inference mode
    is independent of the others in its batch.
    """
    if (tf.config.list_logical_devices("GPU")
            or tf.config.list_logical_devices("TPU")):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 4 * cores


def for_inference(ds, n):
    """A batched dataset of n elements, re-batched for forward passes (see
    `inference_batch_size`), with its length known (for progress bars)."""
    size = inference_batch_size()
    if size is None:
        return ds
    steps = -(-n // size)
    return ds.rebatch(size).apply(
        tf.data.experimental.assert_cardinality(steps)).prefetch(AUTOTUNE)
