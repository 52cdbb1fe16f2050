"""Seeded samples of a built `ImageData`'s training set, unshuffled and
not augmented: what the head's feature statistics and the advisor
measure."""

import numpy as np
import tensorflow as tf

from tl_keras.data.pipelines import AUTOTUNE, file_source

# The training images the head's feature statistics come from, at most:
# a mean and a variance per channel, whose standard errors at 2,000
# images are about 2% and 3% of the channel's spread.
STATISTICS_SAMPLE = 2000


def sample_indices(total, n, seed):
    """The indices (sorted) of a seeded random sample of at most n of
    `total` training images: the one `sample_training_set` reads."""
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])


def sample_training_set(data, n, seed):
    """A random sample of at most n training images, unshuffled and not
    augmented (for measuring features).

    Returns:
      (batched dataset of (float32 images, int32 labels), sample size).
    """
    total = data.counts["train"]
    keep = sample_indices(total, n, seed)
    if len(keep) == total:
        return data.train_ordered, total
    if data.files and data.image_size:
        pairs = [data.files["train"][i] for i in keep]
        ds = file_source(pairs, data.image_size)
    else:  # arrays: skip the others in the ordered pipeline
        mask = np.zeros(total, bool)
        mask[keep] = True
        table = tf.constant(mask)
        ds = data.train_ordered.unbatch().enumerate().filter(
            lambda i, xy: table[i]).map(lambda i, xy: xy)
    ds = ds.batch(data.batch_size or 32).map(
        lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE), len(keep)
