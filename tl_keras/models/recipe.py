"""A stage's optimizer, learning-rate schedule and loss: the recipe
options (--optimizer, --weight_decay, --lr_schedule, --warmup_epochs,
--lr_decay, --label_smoothing, --l2sp; the loss and metric of mixed labels
for --augment=mixup or cutmix). Their defaults are the Keras guide's recipe
exactly: plain Adam at one constant learning rate, sparse cross-entropy."""

import math

import keras

from tl_keras.models.optimizers import (
    LabelAccuracy,
    ScaledAdam,
    SmoothedSparseCrossentropy,
)

# Variables that --weight_decay leaves alone, by name: biases and the
# scales and offsets of BatchNorm / LayerNorm (decaying them shrinks a
# normalisation toward zero output instead of regularising a weight).
NO_DECAY = ("bias", "gamma", "beta")


def steps_per_epoch(num_train, batch_size):
    """Optimizer steps in one epoch over `num_train` images."""
    return max(1, math.ceil(num_train / batch_size))


def learning_rate(training, lr, epochs, steps):
    """A stage's learning rate: `lr` (constant, no warmup: the guide's),
    or a schedule over the stage's `epochs * steps` steps: linear warmup
    from lr / warmup steps to lr over --warmup_epochs, then constant or
    cosine decay to 0 over the rest."""
    warmup = training.warmup_epochs * steps
    total = epochs * steps
    alpha = 1.0 if training.lr_schedule == "constant" else 0.0
    if not warmup:
        if alpha == 1.0:
            return lr
        return keras.optimizers.schedules.CosineDecay(lr, total, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        lr / warmup, max(1, total - warmup), alpha=alpha, warmup_target=lr,
        warmup_steps=warmup)


def make_optimizer(training, lr, epochs, steps, multipliers=None):
    """A fresh optimizer for a stage of `epochs` epochs of `steps` steps
    at `lr`: Adam, or with --optimizer=adamw Adam with decoupled weight
    decay (not on NO_DECAY variables), at `learning_rate`; `multipliers`
    {variable path: factor} scale single variables' learning rates
    (`layer_multipliers`); with --ema it keeps the moving average
    (`ScaledAdam`)."""
    rate = learning_rate(training, lr, epochs, steps)
    decay = training.weight_decay if training.optimizer == "adamw" else 0.0
    if not multipliers and not decay and not training.ema:
        return keras.optimizers.Adam(rate)
    ema = {"use_ema": True, "ema_momentum": training.ema} if (
        training.ema) else {}
    return ScaledAdam(lr_multipliers=multipliers, decoupled_decay=decay,
                      no_decay=NO_DECAY, learning_rate=rate, **ema)


def layer_multipliers(model, blocks, decay):
    """{variable path: decay^k} for the trainable variables of the base's
    block k from the top (k = 0: the top block; the head is not listed and
    trains at the full rate); empty when decay is 1."""
    if decay >= 1.0:
        return {}
    out = {}
    for k, (_, layers) in enumerate(reversed(blocks)):
        for layer in layers:
            for variable in layer.trainable_weights:
                out[variable.path] = decay ** k
    return out


def make_loss(training, label_mixes=()):
    """Sparse cross-entropy from logits, smoothed by --label_smoothing;
    with `label_mixes` (mixup or cutmix in --augment) one that also takes
    the training batches' per-class label weights."""
    if training.label_smoothing or label_mixes:
        return SmoothedSparseCrossentropy(training.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def loss_and_metric(config):
    """{'loss', 'metric'} of a run's `Config` for `compile_for_stage`."""
    mixes = config.data.label_mixes()
    return {"loss": make_loss(config.training, mixes),
            "metric": make_metric(mixes)}


def make_metric(label_mixes=()):
    """The 'accuracy' metric: sparse accuracy, or with `label_mixes` one
    that also takes per-class label weights (the heaviest class counts as
    the label)."""
    if label_mixes:
        return LabelAccuracy(name="accuracy")
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def describe(training, stage_name):
    """A stage's recipe settings, for metrics.json."""
    return {"optimizer": training.optimizer,
            "weight_decay": training.weight_decay,
            "lr_schedule": training.lr_schedule,
            "warmup_epochs": training.warmup_epochs,
            "lr_decay": training.lr_decay if stage_name == "finetune"
            else 1.0,
            "label_smoothing": training.label_smoothing,
            "l2sp": training.l2sp if stage_name == "finetune" else 0.0,
            "ema": training.ema}


class L2SP:
    """L2-SP (Li, Grandvalet and Davoine, ICML 2018) on one variable:
    `strength` / 2 x ||w - w0||^2, where w0 is its pretrained value. Its
    gradient, strength x (w - w0), pulls the weight back toward w0, which
    on small data keeps a fine-tune from forgetting what the base knew
    (plain weight decay pulls toward 0 instead)."""

    def __init__(self, anchor, strength):
        self.anchor = anchor
        self.strength = float(strength)

    def __call__(self, weight):
        return 0.5 * self.strength * keras.ops.sum(
            keras.ops.square(weight - self.anchor))


def anchor_to_pretrained(variables, strength):
    """Puts an `L2SP` penalty on each of `variables` (the unfrozen base
    weights at the start of the fine-tune stage: their pretrained values,
    as the head stage leaves the base untouched). Keras adds each
    variable's regularizer to the training loss (so val_loss includes
    it, as with any Keras regularizer).

    Returns:
      A function that takes the penalties off again.
    """
    for variable in variables:
        anchor = keras.Variable(keras.ops.convert_to_tensor(variable),
                                trainable=False,
                                name=variable.name + "_pretrained")
        variable.regularizer = L2SP(anchor, strength)

    def release():
        for variable in variables:
            variable.regularizer = None
    return release
