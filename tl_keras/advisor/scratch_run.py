"""The advisor's short scratch run: an early point on scratch's curve.

Frozen features, pretrained or random, cannot show how far training every
layer goes; a short run of the architecture from random init on the
advisor's sample can.
"""

import logging
import math
import time

import keras
import tensorflow as tf

from tl_keras.data.augment import augment
from tl_keras.data.sampling import sample_training_set
from tl_keras.models import recipe
from tl_keras.models.backbones import BuiltBackbone
from tl_keras.models.classifier import (
    all_layers,
    build_classifier,
    compile_for_stage,
)

log = logging.getLogger("tl_keras")

# The scratch run's BatchNorm momentum: its moving statistics follow the
# last few batches (see _fresh_classifier).
SCRATCH_RUN_BN_MOMENTUM = 0.5


# The share of a compare's whole-network training the scratch run may
# take: advising must cost under 10% of a compare (the target),
# and the rest of advising, one forward pass for the probes, took 0.4-0.8%
# of a compare on the bench (bench/RESULTS.md).
SCRATCH_RUN_SHARE = 0.09


def scratch_epochs(config, num_train=None, sampled=None):
    """Epochs of the advisor's short scratch run: --advisor_scratch_fraction
    of --epochs (the epochs --approach=scratch trains), rounded up; 0 when
    the fraction is 0.

    With the training set's size and the run's sample, at most what keeps
    its cost under SCRATCH_RUN_SHARE of a compare (at least 1 epoch): a
    compare trains the whole network on the num_train images for scratch's
    epochs + finetune_epochs, then finetune_epochs more in its fine-tune
    stage, and the run trains `sampled` images per epoch. Without the cap
    the share was 0.2 E / (E + 2F): 12.6% of the bench's VGG16 compare
    (E = 15, F = 5), 6.7% at the defaults (E = F = 10, unchanged by it).
    """
    training = config.training
    epochs = math.ceil(config.advisor.advisor_scratch_fraction
                       * training.epochs)
    if not epochs or not num_train or not sampled:
        return epochs
    compare = (training.epochs + 2 * training.finetune_epochs) * num_train
    return min(epochs, max(1, math.floor(
        SCRATCH_RUN_SHARE * compare / sampled)))


def scratch_run(model, data, config, epochs, stop=None):
    """A short from-scratch run: `model`'s architecture with fresh random
    weights, trained on the advisor's sample of the training images (at
    most --advisor_sample) for `epochs` epochs as --approach=scratch trains
    (learning rate, batch size, augmentation, head dropout), validated on
    the validation set after each epoch.

    Its best validation accuracy is an early point on scratch's learning
    curve: a lower bound of what scratch reaches with the full budget
    (frozen features cannot show how far training every layer goes);
    `model` itself is not touched.

    `stop(curve) -> str or None`, if given, is asked after each epoch
    with the validation accuracies so far; a sentence stops the run there
    (it has already won, or cannot win: more epochs cannot change the
    decision) and is kept as 'stopped'.

    Returns {'epochs' (run), 'planned_epochs', 'images', 'val_accuracy'
    (best), 'val_accuracy_curve', 'seconds', 'stopped' (only if stopped)}.
    """
    start = time.time()
    data_config = config.data
    sample_ds, sampled = sample_training_set(
        data, config.advisor.advisor_sample, data_config.seed)
    keras.utils.set_random_seed(data_config.seed)
    scratch = _fresh_classifier(model, config)
    training = config.training
    compile_for_stage(
        scratch, training.learning_rate,
        # The schedule of the run it previews (--epochs long): its first
        # epochs, at the rates --approach=scratch would train them.
        optimizer=recipe.make_optimizer(
            training, training.learning_rate, training.epochs,
            recipe.steps_per_epoch(sampled, data_config.batch_size)),
        **recipe.loss_and_metric(config))

    curve, stopped = [], []

    def progress(epoch, logs):
        curve.append(round(float(logs["val_accuracy"]), 4))
        log.info("Advisor: scratch run epoch %d/%d, val_accuracy %.3f",
                 epoch + 1, epochs, curve[-1])
        why = stop(curve) if stop is not None else None
        if why:
            log.info("Advisor: stopping the scratch run: %s", why)
            stopped.append(why)
            scratch.stop_training = True

    scratch.fit(
        _endless_batches(sample_ds, sampled, data_config, data),
        validation_data=data.val, epochs=epochs,
        steps_per_epoch=math.ceil(sampled / data_config.batch_size),
        verbose=0, shuffle=False,  # shuffled in _endless_batches
        # With --ema, validated on the average, as the scratch run would be.
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=progress)]
        + ([keras.callbacks.SwapEMAWeights()] if training.ema else []))
    return {"epochs": len(curve), "planned_epochs": epochs, "images": sampled,
            "val_accuracy": max(curve), "val_accuracy_curve": curve,
            "seconds": round(time.time() - start, 1),
            **({"stopped": stopped[0]} if stopped else {})}


def _fresh_classifier(model, config):
    """`model`'s architecture with fresh random weights and the run's head
    dropout, its BatchNorm statistics following the last few batches."""
    preprocess = model.get_layer("preprocess")
    fresh = BuiltBackbone(
        base=keras.models.clone_model(model.get_layer("backbone").base,
                                      recursive=True),
        preprocessing=preprocess.settings(),
        image_size=int(model.input.shape[1]),
        spec=None, source="advisor scratch run")
    # Fresh BatchNorm statistics for validation: a short run at the full
    # learning rate moves the weights faster than the architecture's slow
    # moving averages (momentum 0.9-0.99) follow, and validating with
    # stale statistics understated the same weights' accuracy by up to 37
    # points (bench, 300 digits: 0.57 vs 0.93 after 5 epochs). BatchNorm
    # trains on batch statistics, so the weights are the same either way
    # (identical training losses); only the validation is current.
    for layer in all_layers(fresh.base):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = SCRATCH_RUN_BN_MOMENTUM
    return build_classifier(fresh, model.output.shape[-1],
                            config.model.dropout)


def _endless_batches(sample_ds, sampled, data_config, data):
    """The sample reshuffled every epoch, augmented, in full batches.

    Every batch full (an epoch's last one wraps into the next epoch's
    order), so the train step is traced once, not again for a short last
    batch (5 of the 15 s of a 25-image run). The shuffle buffer holds the
    images as uint8 (their values are whole numbers, as in the training
    cache): a quarter of float32's memory.
    """
    train = sample_ds.unbatch().map(
        lambda x, y: (tf.cast(x, tf.uint8), y)).shuffle(
        sampled, seed=data_config.seed, reshuffle_each_iteration=True
    ).repeat().batch(data_config.batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32), y))
    return augment(train, data_config,
                   num_classes=len(data.class_names)).prefetch(
        tf.data.AUTOTUNE)
