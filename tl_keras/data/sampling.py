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


def sample_indices(total, n, seed, labels=None):
    """The indices (sorted) of a seeded random sample of at most n of
    `total` training images: the one `sample_training_set` reads. With
    the images' `labels`, every class is in it (`_with_every_class`)."""
    order = np.random.default_rng(seed).permutation(total)
    if labels is None or n >= total:
        return np.sort(order[:n])
    return np.sort(_with_every_class(order, n, np.asarray(labels)))


def _with_every_class(order, n, labels):
    """`order[:n]`, where each class it lacks gets one image (its first
    in `order`) in place of the last drawn of the class drawn most: a
    random draw of 10 from three classes left out one of 2 images, and
    the advisor measured (and reported chance for) three classes on two.
    A draw that holds every class, as any large one, is unchanged."""
    keep = list(order[:n])
    for missing in sorted(set(labels.tolist()) - set(labels[keep].tolist())):
        counts = np.bincount(labels[keep], minlength=labels.max() + 1)
        if counts.max() < 2:  # fewer draws than classes
            break
        most = int(counts.argmax())
        keep.remove(next(i for i in reversed(keep) if labels[i] == most))
        keep.append(next(i for i in order if labels[i] == missing))
    return np.array(keep)


def sample_training_set(data, n, seed):
    """A random sample of at most n training images, unshuffled and not
    augmented (for measuring features).

    Returns:
      (batched dataset of (float32 images, int32 labels), sample size).
    """
    total = data.counts["train"]
    labels = [y for _, y in data.files["train"]] if data.files else None
    keep = sample_indices(total, n, seed, labels)
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
