"""Cached features: train the head of a frozen base without re-running it.

While the base is frozen it is a fixed function, so running it every
epoch (the Keras guide's loop) repeats the same work. Here the base runs
once over the training and validation images, the pooled features are
kept, and the head trains on them. The head model shares its layers with
the full classifier, so when it is done the full model already holds the
trained head: nothing to graft, the result is the same Keras model.

Only used without augmentation (augmented views differ every epoch).
"""

import logging
import time

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger("tl_keras")


def can_cache(config, stage_name, data, model):
    """Whether the head stage of this run can train on cached features.

    Features stay in memory, so they must fit in `config.cache_budget_mb`
    (spilling to a file is not implemented yet); otherwise the full loop
    runs, with a log line saying why.
    """
    if not (config.feature_cache and stage_name == "head"
            and not config.augmentations()
            and data.train_ordered is not None):
        return False
    channels = model.get_layer("pool").output.shape[-1]
    size = (data.counts["train"] + data.counts["val"]) * channels * 4
    if size > config.cache_budget_mb * 2**20:
        log.info("Features (%.0f MiB) exceed --cache_budget_mb=%d; training "
                 "the head through the frozen base.", size / 2**20,
                 config.cache_budget_mb)
        return False
    return True


def extract_features(model, ds, description):
    """Runs the classifier up to its pooled features over `ds`.

    Returns:
      (features float32 [n, channels], labels int32 [n]).
    """
    extractor = keras.Model(model.input, model.get_layer("pool").output)
    # A traced function: eager calls dispatch the base op by op.
    run = tf.function(lambda x: extractor(x, training=False),
                      reduce_retracing=True)
    steps = int(ds.cardinality())
    bar = keras.utils.Progbar(steps if steps > 0 else None,
                              unit_name="batch")
    features, labels = [], []
    log.info("Extracting %s features with the frozen base", description)
    for i, (x, y) in enumerate(ds, start=1):
        # float32 even under a mixed precision policy: the head's input.
        features.append(np.asarray(run(x), np.float32))
        labels.append(np.asarray(y))
        bar.update(i)
    return np.concatenate(features), np.concatenate(labels)


def build_head_model(model):
    """A model from pooled features to logits that shares the classifier's
    head layers (training it trains the classifier's head)."""
    channels = model.get_layer("pool").output.shape[-1]
    inputs = keras.Input((channels,), name="features")
    x = inputs
    names = [layer.name for layer in model.layers]
    if "head_dropout" in names:
        x = model.get_layer("head_dropout")(x)
    logits = model.get_layer("logits")(x)
    return keras.Model(inputs, logits, name="cached_head")


def make_feature_datasets(model, data, batch_size):
    """Extracts features once; returns (head_model, train_ds, val_ds,
    seconds spent extracting)."""
    start = time.time()
    train_x, train_y = extract_features(model, data.train_ordered,
                                        "training")
    val_x, val_y = extract_features(model, data.val, "validation")
    seconds = time.time() - start
    train = data.shuffle.apply(
        tf.data.Dataset.from_tensor_slices((train_x, train_y)), len(train_y))
    train = train.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    val = tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(
        batch_size)
    return build_head_model(model), train, val, seconds
