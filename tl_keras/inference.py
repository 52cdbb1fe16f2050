"""The one forward pass for inference: traced once, run in batches.

Evaluation, feature extraction, the advisor's features and every export
endpoint run a model (or part of one) forward in inference mode. Each goes
through `traced`, a `tf.function` with an input signature, so it is traced
once for every batch size (eager calls dispatch the model op by op, 2-3x
slower for a MobileNetV2 on CPU), and `run_batched` feeds it a dataset
re-batched for inference (`inference_batch_size`).
"""

import os

import keras
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def image_spec(model, name=None):
    """The TensorSpec of a batch of `model`'s float32 input images."""
    return tf.TensorSpec((None, *model.input.shape[1:]), tf.float32,
                         name=name)


def traced(fn, model, name=None):
    """`fn(images)` as a tf.function over batches of `model`'s input
    images (any batch size, one trace)."""
    return tf.function(fn, input_signature=[image_spec(model, name)])


def forward(model):
    """The traced `model(images, training=False)`, as float32."""
    return traced(lambda x: tf.cast(model(x, training=False), tf.float32),
                  model)


def run_batched(fn, ds, n, out=None, progress=False):
    """Runs a traced `fn` over the n (images, labels) of the batched `ds`.

    Args:
      fn: from `traced`; returns a tensor or a list of tensors.
      ds: a batched dataset of (images, labels).
      n: the number of images in `ds`.
      out: optional array to fill with the (single) output, e.g. a
        memory-mapped file; default new arrays.
      progress: show a progress bar.

    Returns:
      (outputs, labels): each output concatenated over the batches (a list
      when `fn` returns a list), and the labels as a numpy array.
    """
    ds = for_inference(ds, n)
    steps = int(ds.cardinality())
    bar = keras.utils.Progbar(steps if steps > 0 else None,
                              unit_name="batch") if progress else None
    chunks, labels, start = [], [], 0
    single = True
    for i, (x, y) in enumerate(ds, start=1):
        result = fn(x)
        single = not isinstance(result, (list, tuple))
        parts = [np.asarray(r) for r in ([result] if single else result)]
        if out is None:
            chunks.append(parts)
        else:
            out[start:start + len(parts[0])] = parts[0]
        start += len(parts[0])
        labels.append(np.asarray(y))
        if bar is not None:
            bar.update(i)
    if out is not None:
        outputs = [out]
    else:
        outputs = [np.concatenate(column) for column in zip(*chunks,
                                                             strict=True)]
    return (outputs[0] if single else outputs), np.concatenate(labels)


def inference_batch_size():
    """The batch for forward passes only (feature extraction, evaluation):
    None (keep the training batch) on GPU / TPU, 4 images per usable core
    on CPU.

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
