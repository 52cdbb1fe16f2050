"""The run's own head, trained on a layer's cached features: what transfer
from that layer reaches in the run's budget.

A logistic regression fit to convergence says what a linear classifier
can reach on a layer's features; the run's head gets its optimizer, its
learning rate and its epochs, no more. On a layer whose features need
many more steps (few channels, weak signal) the two part: the advisor
bench's toy base, few + similar, seed 8: block2's probe 0.84 against the
last layer's 0.72 on 25 validation images, while a head trained as the
run trains it reached 0.40 on block2 and 0.84 on the last layer; the run
from block2 ended 41.7 points below the best (bench/RESULTS.md).
"""

import keras
import numpy as np
import tensorflow as tf

from tl_keras.models import recipe
from tl_keras.models.classifier import build_head, standardize_head


def head_accuracy(train_f, train_y, val_f, val_y, config, num_train,
                  num_classes):
    """The best validation accuracy over the epochs of the run's head
    (`build_head`: standardised features, --dropout, a Dense layer)
    trained on pooled features as the run's head stage trains it: the
    recipe's optimizer and schedule (`recipe.make_optimizer`) at
    --learning_rate, --batch_size, --label_smoothing, --ema, --epochs
    epochs of as many steps as the full training set of `num_train`
    images takes (the sample is cycled when it is smaller), validated
    after each epoch. The estimate is the highest validation accuracy it
    reaches; the head stage keeps the lowest-loss epoch within a standard
    error of its own highest on the same images (`StageCheckpoint`), so
    the estimate is the level the stage reaches, not its kept epoch's.

    What it leaves out: augmentation (the features are of the images as
    they are) and MixUp / CutMix (the labels are the plain ones). Seeded
    by --seed, so a resumed or repeated decision is the same.
    """
    data_config, training = config.data, config.training
    steps = recipe.steps_per_epoch(num_train, data_config.batch_size)
    head = _fresh_head(train_f, num_classes, config, steps)
    optimizer = head.optimizer
    batches = iter(tf.data.Dataset.from_tensor_slices(
        (_as_maps(train_f), np.asarray(train_y, np.int32))).shuffle(
        len(train_y), seed=data_config.seed, reshuffle_each_iteration=True
    ).repeat().batch(data_config.batch_size))
    val_x = tf.constant(_as_maps(val_f))
    val_y = tf.constant(np.asarray(val_y, np.int32))

    # A loop of its own, one traced call per epoch: Keras's fit() spends
    # ~0.1 s an epoch on its machinery, 14 s for the demo's 130 epochs of
    # 2 steps (measured), more than the steps.
    @tf.function
    def train_epoch():
        for _ in tf.range(steps):
            x, y = next(batches)
            with tf.GradientTape() as tape:
                loss = head.loss(y, head(x, training=True))
            variables = head.trainable_variables
            optimizer.apply(tape.gradient(loss, variables), variables)

    @tf.function  # the images as an argument, not a graph constant
    def val_accuracy(x, y):
        predicted = tf.argmax(head(x, training=False), -1,
                              output_type=tf.int32)
        return tf.reduce_mean(tf.cast(predicted == y, tf.float32))

    # With --ema, validated on the average, as the head stage is.
    swap = keras.callbacks.SwapEMAWeights()
    swap.set_model(head)
    best = 0.0
    for _ in range(training.epochs):
        train_epoch()
        if training.ema:
            swap.on_test_begin()
        best = max(best, float(val_accuracy(val_x, val_y)))
        if training.ema:
            swap.on_test_end()
    return round(best, 4)


def _fresh_head(train_f, num_classes, config, steps):
    """The run's head on 1 x 1 maps of `train_f`'s channels, its features
    standardised with `train_f`'s statistics, compiled with the head
    stage's optimizer (`steps` an epoch) and loss; seeded by --seed."""
    training = config.training
    keras.utils.set_random_seed(config.data.seed)
    inputs = keras.Input((1, 1, train_f.shape[1]), name="features")
    head = keras.Model(inputs, build_head(inputs, num_classes,
                                          config.model.dropout))
    standardize_head(head, train_f)
    # No loss scaling: the loop takes plain gradients, and under a
    # mixed-precision policy compile() would wrap the optimizer in a
    # LossScaleOptimizer that divides them by the scale (2^15).
    head.compile(optimizer=recipe.make_optimizer(
        training, training.learning_rate, training.epochs, steps),
        loss=recipe.make_loss(training), auto_scale_loss=False)
    head.optimizer.build(head.trainable_variables)
    return head


def _as_maps(features):
    """Pooled features [n, channels] as 1 x 1 maps, `build_head`'s input."""
    return np.asarray(features, np.float32)[:, None, None, :]
