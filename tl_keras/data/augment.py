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
    if "randaugment" in names:
        # Keras 3's core RandAugment (Cubuk et al. 2020: 2 of 14 ops per
        # image at magnitude 0.5, its defaults) on the 0-255 pixels of the
        # pipeline. keras-cv's augmentation layers, archived upstream, were
        # superseded by these core layers; tl_keras uses none of keras-cv.
        layers.append(keras.layers.RandAugment(value_range=(0, 255),
                                               seed=seed))
    return keras.Sequential(layers, name="augment") if layers else None


def augment(ds, config, shuffle=None):
    """Applies the config's augmentations to a batched (images, labels)
    dataset; unchanged when there are none.

    With `shuffle` (the pipeline's `EpochShuffle`), the augmentation's
    random state is set from (seed, stage, epoch) before each epoch, and
    the batches are augmented one after the other (each draw advances the
    state: parallel calls would take the draws in a racing order), so an
    epoch's augmentation is the same whether or not the run was
    interrupted before it.
    """
    augmenter = build_augmenter(config.augmentations(), config.seed)
    if augmenter is None:
        return ds
    if shuffle is not None:
        shuffle.track("augment", seed_states(augmenter))
    return ds.map(lambda x, y: (augmenter(x, training=True), y),
                  num_parallel_calls=None if shuffle is not None
                  else tf.data.AUTOTUNE)


def seed_states(layer):
    """The state variables of every random-number generator in `layer`
    and its sublayers (augmentation, dropout)."""
    return [generator.state
            for sub in layer._flatten_layers(include_self=True)
            for generator in getattr(sub, "_seed_generators", [])]
