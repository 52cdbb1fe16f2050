"""Training augmentation, applied in `tf.data` to batches.

Augmentation never sits inside the model: `model.export()` would serve
augmented outputs, and keras-cv layers take no `training` argument (see
docs/design.md). Here it maps over batched (images, labels) datasets.
"""

import keras
import tensorflow as tf


def build_augmenter(names, seed):
    """Returns a Keras model of the named augmentations, or None."""
    layers = []
    if "flip" in names:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if "rotation" in names:
        layers.append(keras.layers.RandomRotation(0.1, seed=seed))
    if "zoom" in names:
        layers.append(keras.layers.RandomZoom(0.1, seed=seed))
    return keras.Sequential(layers, name="augment") if layers else None


def augment(ds, config):
    """Applies the config's augmentations to a batched (images, labels)
    dataset; unchanged when there are none."""
    augmenter = build_augmenter(config.augmentations(), config.seed)
    if augmenter is None:
        return ds
    return ds.map(lambda x, y: (augmenter(x, training=True), y),
                  num_parallel_calls=tf.data.AUTOTUNE)
