"""The classifier: preprocessing -> base -> new head, frozen by block.

The Keras transfer-learning recipe, with the parts that silently go wrong
in Keras 3.15 done by the library instead of the user:

* the base sits in a `Backbone` layer that forces inference mode while the
  base is frozen (outer `training=False` alone does not hold in fit());
* when blocks are unfrozen, every BatchNormalization layer is frozen one by
  one, so its moving statistics stay those of pretraining (and
  `--unfreeze=N` counts the top N blocks that hold other weights: a block
  of only BatchNorm and activations would train nothing);
* every change of `trainable` is followed by a compile with a new
  optimizer (Keras gives no warning when that compile is missing).
"""

import logging
import numbers

import keras

from tl_keras.errors import InputError, check_fraction, check_range, fail
from tl_keras.models.backbones import BuiltBackbone
from tl_keras.models.base_checks import holds_tuned_weights, tuned_blocks
from tl_keras.models.layers import (
    Backbone,
    FeatureStandardization,
    normalization_layer,
)

log = logging.getLogger("tl_keras")

STAGES = ("scratch", "head", "finetune")


def build_classifier(backbone, num_classes, dropout=0.2):
    """Assembles image -> preprocess -> backbone -> head.

    Args:
      backbone: a `backbones.BuiltBackbone`.
      num_classes: number of classes.
      dropout: head dropout rate.

    Returns:
      A functional keras.Model taking float32 RGB images in [0, 255] of
      shape (size, size, 3) and returning float32 logits. Its layers are
      named 'image', 'preprocess', 'backbone', 'pool', 'feature_norm',
      'head_dropout', 'logits'.
    """
    if not isinstance(backbone, BuiltBackbone):  # an AttributeError
        fail("backbone", "a BuiltBackbone (from tl_keras.build_backbone)",
             type(backbone).__name__)
    check_range("num_classes", num_classes, 2, 100_000)
    check_fraction("dropout", dropout, open_high=True)
    num_classes, dropout = int(num_classes), float(dropout)  # numpy's too
    size = backbone.image_size
    inputs = keras.Input((size, size, 3), name="image")
    x = normalization_layer(backbone.preprocessing)(inputs)
    x = Backbone(backbone.base, name="backbone")(x)
    logits = build_head(x, num_classes, dropout)
    return keras.Model(inputs, logits, name="tl_keras_classifier")


def build_head(features, num_classes, dropout=0.2):
    """Applies the classification head to a rank-4 feature map.

    Pooled features, standardised per channel (`FeatureStandardization`,
    set by `standardize_head` before the head trains on a frozen base),
    then dropout and a Dense layer. Logits are float32 even under a
    mixed-precision policy, so the softmax and the loss stay numerically
    sound.

    Args:
      features: a (batch, height, width, channels) Keras tensor.
      num_classes: number of output classes (>= 2).
      dropout: dropout rate before the Dense layer; 0 disables it.

    Returns:
      The logits tensor, (batch, num_classes), float32.
    """
    x = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    # float32, like the logits: a rare channel's scaled value can pass
    # float16's range.
    x = FeatureStandardization(name="feature_norm", dtype="float32")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


def standardize_head(model, features):
    """Sets the head's feature standardisation (layer 'feature_norm') to
    the statistics of `features`, pooled features of training images
    [n, channels]. A classifier saved by tl_keras 0.1 has no such layer:
    nothing to set."""
    if "feature_norm" in {layer.name for layer in model.layers}:
        model.get_layer("feature_norm").set_statistics(features)


def head_state(model):
    """The weights that change while the head trains on a frozen base,
    whichever stage `model` is configured for: the trainable ones outside
    the base (in the head stage, all of them), then the feature
    standardisation's statistics."""
    base = {id(w) for w in model.get_layer("backbone").weights}
    return [w for w in model.trainable_weights
            if id(w) not in base] + weights_of_norm(model)


def weights_of_norm(model):
    """The feature standardisation's statistics ([] for a classifier saved
    by tl_keras 0.1, which has none)."""
    if "feature_norm" not in {layer.name for layer in model.layers}:
        return []
    return list(model.get_layer("feature_norm").weights)


def get_base(model):
    """Returns the base model inside a classifier built here."""
    layer = next((layer for layer in getattr(model, "layers", ())
                  if layer.name == "backbone"), None)
    if not isinstance(layer, Backbone):
        fail("model", "a classifier from tl_keras.build_classifier",
             f"a {type(model).__name__} without its 'backbone' layer")
    return layer.base


def configure_stage(model, stage, blocks, unfreeze=None, quiet=False):
    """Sets which weights train in `stage`; the caller must then compile.

    Args:
      model: a classifier from `build_classifier`.
      stage: 'scratch' (everything trains, BatchNorm included), 'head'
        (the base is frozen and runs in inference mode) or 'finetune'
        (the top `unfreeze` blocks train, all BatchNorm stays frozen).
      blocks: the base's blocks, from `backbones.list_blocks`.
      unfreeze: number of top blocks to train in 'finetune', counting
        only blocks that hold weights besides BatchNorm's (`tuned_blocks`,
        as --gradual_unfreeze and --lr_decay count them): densenet121's
        'top' (BatchNorm + ReLU) is not one, so 1 trains conv5_block16.
        None = all.
      quiet: no log line for the blocks (a check, not the stage).

    Raises:
      InputError: unknown stage, a model not built here, blocks not of
        its base, an unfreeze that is not a count in range (or 'all').
    """
    if stage not in STAGES:
        raise InputError(f"Unknown stage. Allowed: {', '.join(STAGES)}. "
                         f"Received: stage={stage!r}")
    base = get_base(model)
    if stage != "finetune" and unfreeze not in (None, "all"):  # ignored
        fail("unfreeze", f"None or 'all' with stage {stage!r} (only "
             f"'finetune' unfreezes top blocks)", unfreeze)
    # Setting trainable on the base resets every sub-layer's flag.
    base.trainable = stage != "head"
    if stage != "finetune":
        return
    _check_blocks_of(base, blocks)  # the only stage that reads them
    unfreeze = None if unfreeze == "all" else unfreeze
    if unfreeze is not None:
        check_unfreeze(unfreeze, blocks)
        tuned = [i for i, (_, layers) in enumerate(blocks)
                 if holds_tuned_weights(layers)][-unfreeze:]
        for _, layers in blocks[:tuned[0]]:
            for layer in layers:
                layer.trainable = False
        if not quiet:
            _log_unfrozen(blocks, tuned)
    for layer in all_layers(base):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _log_unfrozen(blocks, tuned):
    """Says which blocks --unfreeze=N trains (`tuned`: their positions in
    `blocks`) and which above them it did not count."""
    names = [blocks[i][0] for i in tuned]
    skipped = [name for name, _ in blocks[tuned[0]:] if name not in names]
    log.info("--unfreeze=%d: fine-tuning %s, the top %d block%s with "
             "weights besides BatchNorm's (which stays frozen)%s",
             len(tuned),
             names[0] if len(names) == 1 else f"{names[0]} ... {names[-1]}",
             len(tuned), "s" if len(tuned) > 1 else "",
             f"; not counted: {', '.join(skipped)} (no such weights)"
             if skipped else "")


def _check_blocks_of(base, blocks):
    """Raises InputError unless `blocks` group the layers of `base` (from
    list_blocks(backbone)): another model's blocks left this one's whole
    base trainable, a classifier's its base frozen."""
    if not isinstance(blocks, (list, tuple)):  # None was a TypeError
        fail("blocks", "the list tl_keras.list_blocks(backbone) gives",
             blocks)
    own = {id(layer) for layer in all_layers(base)}
    layers = [layer for _, group in blocks for layer in group]
    if not layers or any(id(layer) not in own for layer in layers):
        fail("blocks", "the blocks of this classifier's base "
             "(tl_keras.list_blocks(backbone), the BuiltBackbone it was "
             "built from)", f"{len(layers)} layers, "
             f"{sum(id(layer) not in own for layer in layers)} of them "
             f"not in its base")


def check_unfreeze(unfreeze, blocks):
    """Raises InputError if `unfreeze` top blocks is more than the base's
    blocks that hold weights a fine-tune trains (`tuned_blocks`), or is
    not a count."""
    if unfreeze is not None and (not isinstance(unfreeze, numbers.Integral)
                                 or isinstance(unfreeze, bool)):
        fail("unfreeze", "all, or a count of top blocks (an int)",
             repr(unfreeze))
    tuned = tuned_blocks(blocks)
    if unfreeze is not None and not 1 <= unfreeze <= len(tuned):
        names = f" ({tuned[0][0]} ... {tuned[-1][0]})" if tuned else ""
        skipped = len(blocks) - len(tuned)
        raise InputError(
            f"Invalid unfreeze: the base has {len(tuned)} blocks that hold "
            f"weights besides BatchNorm's{names}"
            + (f"; {skipped} more hold only BatchNorm, activations or "
               f"pooling (BatchNorm stays frozen), so they are not counted"
               if skipped else "")
            + f". Allowed: {f'all or 1..{len(tuned)}' if tuned else 'all'}."
            f" Received: unfreeze={unfreeze}")


def compile_for_stage(model, learning_rate, jit_compile=False,
                      optimizer=None, loss=None, metric=None):
    """Compiles with a fresh Adam at `learning_rate` (or the fresh
    `optimizer` given), sparse cross-entropy (or `loss`) and sparse
    accuracy (or `metric`, named 'accuracy'); needed after every change
    of trainable.

    The optimizer's slots and the metric's variables are made here, not in
    the first train step: a `tf.function` whose first trace creates
    variables is traced a second time (TensorFlow's rule), and Keras
    defers building them to that trace when no tf.distribute strategy
    was set explicitly. Built up front, `fit` traces its step once: the
    advisor's scratch run on 25 images took 7.0-8.4 s instead of 11.2 s.
    """
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(
            from_logits=True),
        # An instance (its variables exist now) named as "accuracy" would
        # be: same history keys (accuracy, val_accuracy).
        metrics=[metric or keras.metrics.SparseCategoricalAccuracy(
            name="accuracy")],
        jit_compile=jit_compile,
    )
    model.optimizer.build(model.trainable_variables)


def count_params(weights):
    return int(sum(int(keras.ops.size(w)) for w in weights))


def all_layers(model):
    """Yields every layer inside `model`, nested models included."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)
