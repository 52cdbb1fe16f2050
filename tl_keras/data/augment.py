"""Training augmentation, applied in `tf.data` to batches.

Augmentation never sits inside the model: `model.export()` would serve
augmented outputs, and keras-cv layers take no `training` argument (see
docs/design.md). Here it maps over batched (images, labels) datasets.
MixUp and CutMix mix pairs of images of a batch and so their labels: the
training labels become per-class weights (one-hot, then mixed) that the
loss and the accuracy metric take beside integer labels
(`models.optimizers`).
"""

import keras
import tensorflow as tf

# Augmentation computes in float32 whatever the run's dtype policy: it
# runs in tf.data on float32 pixels, and under mixed_float16 a MixUp or
# CutMix would mix float16 images with float32 labels (a TypeError).
_DTYPE = "float32"


def build_augmenter(names, seed):
    """Returns a Keras model of the named augmentations, or None."""
    layers = []
    if "flip" in names:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed,
                                              dtype=_DTYPE))
    if "rotation" in names:
        layers.append(keras.layers.RandomRotation(0.1, seed=seed,
                                                  dtype=_DTYPE))
    if "zoom" in names:
        layers.append(keras.layers.RandomZoom(0.1, seed=seed, dtype=_DTYPE))
    if "randaugment" in names:
        # Keras 3's core RandAugment (Cubuk et al. 2020: 2 of 14 ops per
        # image at magnitude 0.5, its defaults) on the 0-255 pixels of the
        # pipeline. keras-cv's augmentation layers, archived upstream, were
        # superseded by these core layers; tl_keras uses none of keras-cv.
        layers.append(keras.layers.RandAugment(value_range=(0, 255),
                                               seed=seed, dtype=_DTYPE))
    return keras.Sequential(layers, name="augment") if layers else None


def build_mixer(names, seed):
    """Returns Keras 3's core MixUp (Zhang et al. 2018, alpha 0.2: its
    default, for ImageNet) or CutMix (Yun et al. 2019: the pasted share
    uniform, Beta(1, 1); Keras's default factor 1.0 would draw the Beta's
    parameter from U(0, 1) instead, which favours near-empty and
    near-full boxes) layer if named, or None. Each takes {'images',
    'labels'} with one-hot labels and mixes both with the same weights
    (CutMix: the share of pixels pasted, `PixelCutMix`)."""
    if "mixup" in names:
        return keras.layers.MixUp(alpha=0.2, seed=seed, name="mixup",
                                  dtype=_DTYPE)
    if "cutmix" in names:
        return PixelCutMix(factor=(1.0, 1.0), seed=seed, name="cutmix",
                           dtype=_DTYPE)
    return None


class PixelCutMix(keras.layers.CutMix):
    """Keras's CutMix with each label's weight set to the share of pixels
    actually pasted. Keras 3.15 weighs the labels by the box's continuous
    area, while the pasted pixels are the whole pixels inside it: at 32 px
    a box of side 31.9 pastes 31 x 31 pixels, 93.8% of the image, where
    the label said 99.7% (measured; the gap shrinks as 1 / image size)."""

    def get_random_transformation(self, data, training=True, seed=None):
        transformation = super().get_random_transformation(
            data, training=training, seed=seed)
        if transformation is not None:
            pasted = self.backend.numpy.mean(self.backend.cast(
                transformation["batch_masks"], "float32"), axis=(1, 2, 3))
            transformation["mix_weight"] = 1.0 - pasted
        return transformation


def augment(ds, config, shuffle=None, num_classes=None):
    """Applies the config's augmentations to a batched (images, labels)
    dataset; unchanged when there are none. With mixup or cutmix the
    labels come out one-hot over `num_classes` and mixed.

    With `shuffle` (the pipeline's `EpochShuffle`), the augmentation's
    random state is set from (seed, stage, epoch) before each epoch, and
    the batches are augmented one after the other (each draw advances the
    state: parallel calls would take the draws in a racing order), so an
    epoch's augmentation is the same whether or not the run was
    interrupted before it.
    """
    names = config.augmentations()
    augmenter = build_augmenter(names, config.seed)
    mixer = build_mixer(names, config.seed)
    if augmenter is None and mixer is None:
        return ds
    if mixer is not None and not num_classes:
        raise ValueError(f"Invalid num_classes for {mixer.name}: it one-hots "
                         f"the labels. Allowed: the number of classes. "
                         f"Received: {num_classes}")
    if shuffle is not None:
        shuffle.track("augment", [state for layer in (augmenter, mixer)
                                  if layer is not None
                                  for state in seed_states(layer)])

    def apply(x, y):
        if augmenter is not None:
            x = augmenter(x, training=True)
        if mixer is None:
            return x, y
        mixed = mixer({"images": x, "labels": tf.one_hot(y, num_classes)},
                      training=True)
        return mixed["images"], mixed["labels"]

    return ds.map(apply, num_parallel_calls=None if shuffle is not None
                  else tf.data.AUTOTUNE)


def seed_states(layer):
    """The state variables of every random-number generator in `layer`
    and its sublayers (augmentation, dropout)."""
    return [generator.state
            for sub in layer._flatten_layers(include_self=True)
            for generator in getattr(sub, "_seed_generators", [])]
