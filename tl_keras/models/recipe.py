"""A stage's optimizer, learning-rate schedule and loss: the recipe
options (--optimizer, --weight_decay, --lr_schedule, --warmup_epochs,
--lr_decay, --label_smoothing, --l2sp; the loss and metric of mixed labels
for --augment=mixup or cutmix). Their defaults are the Keras guide's recipe
exactly: plain Adam at one constant learning rate, sparse cross-entropy."""

import logging
import math

import keras

from tl_keras.errors import fail
from tl_keras.models.base_checks import tuned_blocks
from tl_keras.models.classifier import check_unfreeze, configure_stage
from tl_keras.models.optimizers import (
    LabelAccuracy,
    ScaledAdam,
    SmoothedSparseCrossentropy,
)

log = logging.getLogger("tl_keras")

# Variables that --weight_decay leaves alone, by name: biases and the
# scales and offsets of BatchNorm / LayerNorm (decaying them shrinks a
# normalisation toward zero output instead of regularising a weight).
NO_DECAY = ("bias", "gamma", "beta")


def steps_per_epoch(num_train, batch_size, full_only=False):
    """Optimizer steps in one epoch over `num_train` images (`full_only`:
    the last partial batch is dropped, as with several replicas)."""
    if full_only:
        return max(1, num_train // batch_size)
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


def make_optimizer(training, lr, epochs, steps, multipliers=None,
                   gates=None):
    """A fresh optimizer for a stage of `epochs` epochs of `steps` steps
    at `lr`: Adam, or with --optimizer=adamw Adam with decoupled weight
    decay (not on NO_DECAY variables), at `learning_rate`; `multipliers`
    {variable path: factor} scale single variables' learning rates
    (`layer_multipliers`), `gates` {variable path: epoch} hold them still
    until then (`unfreeze_epochs`); with --ema it keeps the moving
    average (`ScaledAdam`)."""
    rate = learning_rate(training, lr, epochs, steps)
    decay = training.weight_decay if training.optimizer == "adamw" else 0.0
    if not multipliers and not decay and not training.ema and not gates:
        return keras.optimizers.Adam(rate)
    ema = {"use_ema": True, "ema_momentum": training.ema} if (
        training.ema) else {}
    return ScaledAdam(lr_multipliers=multipliers, decoupled_decay=decay,
                      no_decay=NO_DECAY, unfreeze_epochs=gates,
                      learning_rate=rate, **ema)


def layer_multipliers(model, blocks, decay):
    """{variable path: decay^k} for the trainable variables of the base's
    block k from the top of those that hold any (k = 0: the top one, as
    --unfreeze and --gradual_unfreeze count; the head is not listed and
    trains at the full rate); empty when decay is 1."""
    if decay >= 1.0:
        return {}
    out = {}
    training = [layers for _, layers in reversed(blocks)
                if any(layer.trainable_weights for layer in layers)]
    for k, layers in enumerate(training):
        for layer in layers:
            for variable in layer.trainable_weights:
                out[variable.path] = decay ** k
    return out


def unfreeze_epochs(blocks, every, epochs):
    """--gradual_unfreeze: {variable path: the epoch its block starts
    training}, block k from the top of those the stage trains (k = 0, the
    top block, from the start) at epoch k x every; and the blocks' names
    top first. Empty when every is 0.

    Raises:
      InputError: fewer than 2 blocks train, or the last would start
        after the stage's `epochs`.
    """
    if not every:
        return {}, []
    training = [(name, [v for layer in layers for v in layer.trainable_weights])
                for name, layers in reversed(blocks)]
    training = [(name, variables) for name, variables in training if variables]
    last = (len(training) - 1) * every
    if len(training) < 2 or last >= epochs:
        fail("gradual_unfreeze", _gradual_allowed(len(training), epochs),
             every)
    return ({v.path: k * every for k, (_, variables) in enumerate(training)
             for v in variables}, [name for name, _ in training])


def _gradual_allowed(blocks, epochs):
    """What --gradual_unfreeze may be for a stage of `epochs` epochs that
    trains `blocks` blocks (the last must open within the stage)."""
    if blocks < 2:
        return "0 when the fine-tune stage trains fewer than 2 blocks"
    most = (epochs - 1) // (blocks - 1)
    if most:
        return (f"at most {most} (the stage trains {blocks} blocks in "
                f"{epochs} epochs)")
    return (f"0 (off) here: opening {blocks} blocks one epoch apart needs "
            f"--finetune_epochs >= {blocks} (it is {epochs}), or fewer "
            "blocks with --unfreeze")


def check_finetune_blocks(model, blocks, training):
    """Raises --unfreeze's, --lr_decay's and --gradual_unfreeze's
    (`unfreeze_epochs`) errors for the base's blocks before anything
    trains or is written (the fine-tune stage's blocks are set trainable
    for the check, then frozen again as the head stage has them; every
    stage sets its own)."""
    check_unfreeze(training.unfreeze_blocks(), blocks)
    check_lr_decay(training, blocks)
    if training.gradual_unfreeze:
        configure_stage(model, "finetune", blocks, training.unfreeze_blocks(),
                        quiet=True)
        unfreeze_epochs(blocks, training.gradual_unfreeze,
                        training.finetune_epochs)
        configure_stage(model, "head", blocks)


def check_lr_decay(training, blocks):
    """Refuses --lr_decay below 1 when the fine-tune stage trains one of
    the base's `blocks` (it would do nothing)."""
    trained = training.unfreeze_blocks() or len(tuned_blocks(blocks))
    if training.lr_decay < 1.0 and trained < 2:  # the top block: F^0
        fail("lr_decay", "1 when the fine-tune stage trains fewer than 2 "
             "blocks (block k from the top trains at LR x lr_decay^k, so "
             "one block trains at the full rate)", training.lr_decay)


class GradualUnfreeze(keras.callbacks.Callback):
    """--gradual_unfreeze: before each epoch, opens the optimizer's gates
    (`ScaledAdam.set_epoch`) and logs when a block starts training."""

    def __init__(self, names, every):
        super().__init__()
        self.names, self.every = names, every

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.set_epoch(epoch)
        count = min(len(self.names), epoch // self.every + 1)
        if epoch % self.every == 0 and epoch // self.every < len(self.names):
            log.info("Gradual unfreezing: epoch %d trains the top %d of %d "
                     "blocks (down to %s)", epoch + 1, count,
                     len(self.names), self.names[count - 1])


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
            "ema": training.ema,
            "gradual_unfreeze": training.gradual_unfreeze
            if stage_name == "finetune" else 0}


class L2SP:
    """L2-SP (Li, Grandvalet and Davoine, ICML 2018) on one variable:
    `strength` / 2 x ||w - w0||^2, where w0 is its pretrained value. Its
    gradient, strength x (w - w0), pulls the weight back toward w0, which
    on small data keeps a fine-tune from forgetting what the base knew
    (plain weight decay pulls toward 0 instead). `on` (a 0 / 1 variable,
    read when the step runs) scales it: `ValidateWithoutPenalty` sets it
    to 0 while Keras validates."""

    def __init__(self, anchor, strength, on):
        self.anchor = anchor
        self.strength = float(strength)
        self.on = on

    def __call__(self, weight):
        return self.on * 0.5 * self.strength * keras.ops.sum(
            keras.ops.square(weight - self.anchor))


class ValidateWithoutPenalty(keras.callbacks.Callback):
    """Takes the L2-SP penalty out of val_loss: Keras adds every
    regularizer to the test loss too, so a fine-tune epoch's val_loss
    carried the penalty while the head's epoch 0, which the best-epoch
    rule compares it with, had none: a fine-tune lost loss tie-breaks
    by the penalty alone."""

    def __init__(self, on):
        super().__init__()
        self.on = on

    def on_test_begin(self, logs=None):
        self.on.assign(0.0)

    def on_test_end(self, logs=None):
        self.on.assign(1.0)


def anchor_for_stage(model, stage_name, training):
    """--l2sp: the fine-tune stage's unfrozen base weights penalised
    toward their values now, the pretrained ones (`L2SP`); returns
    `anchor_to_pretrained`'s (release, callbacks), or no-ops."""
    if stage_name != "finetune" or not training.l2sp:
        return (lambda: None), []
    variables = model.get_layer("backbone").trainable_weights
    log.info("L2-SP: %d base variables penalised toward their pretrained "
             "values (strength %g)", len(variables), training.l2sp)
    return anchor_to_pretrained(variables, training.l2sp)


def anchor_to_pretrained(variables, strength):
    """Puts an `L2SP` penalty on each of `variables` (the unfrozen base
    weights at the start of the fine-tune stage: their pretrained values,
    as the head stage leaves the base untouched). Keras adds each
    variable's regularizer to the training loss; fit() needs the returned
    callbacks so that val_loss is the loss alone.

    Returns:
      (a function that takes the penalties off again, [the callback]).
    """
    on = keras.Variable(1.0, trainable=False, name="l2sp_on")
    for variable in variables:
        anchor = keras.Variable(keras.ops.convert_to_tensor(variable),
                                trainable=False,
                                name=variable.name + "_pretrained")
        variable.regularizer = L2SP(anchor, strength, on)

    def release():
        for variable in variables:
            variable.regularizer = None
        on.assign(0.0)  # a step traced with the penalty keeps it
    return release, [ValidateWithoutPenalty(on)]
