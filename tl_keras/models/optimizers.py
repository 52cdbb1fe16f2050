"""The optimizer and loss of a stage, beyond the Keras guide's plain Adam.

`ScaledAdam` is Adam (with Keras's decoupled weight decay: AdamW) whose
step for each variable is multiplied by a per-variable factor: layer-wise
learning-rate decay. Adam divides each gradient by its own running RMS, so
scaling a variable's *gradient* leaves its update unchanged; the factor
has to scale the learning rate of that variable's update, which is what
`update_step` does here. `SmoothedSparseCrossentropy` is the sparse
cross-entropy with label smoothing (Keras's sparse loss has none);
it and `LabelAccuracy` also take per-class label weights (MixUp / CutMix
mix the training labels; validation keeps integer labels). All are
registered, so a saved model.keras that holds them loads.
"""

import keras


@keras.saving.register_keras_serializable("tl_keras")
class ScaledAdam(keras.optimizers.Adam):
    """Adam whose update of variable v uses learning_rate x
    lr_multipliers[v.path] (1 for a path not listed), with decoupled
    weight decay (AdamW: v -= v x decoupled_decay x that same rate, before
    the Adam step, as Keras's AdamW orders them) on every variable whose
    name contains none of `no_decay`.

    The decay is applied here and not by Keras's own `weight_decay`, which
    uses the unscaled learning rate: a bottom block updated at 1 % of the
    rate would still be decayed at the full one, shrinking its pretrained
    weights toward zero.

    `unfreeze_epochs` {variable path: epoch} (--gradual_unfreeze): a
    listed variable is not updated (rate 0, so no decay either) before
    that epoch; `set_epoch` opens the gates. The trainable set and the
    traced step stay the same all stage (no recompile); Adam's moments of
    a gated variable accumulate from the start.
    """

    def __init__(self, lr_multipliers=None, decoupled_decay=0.0,
                 no_decay=(), unfreeze_epochs=None, **kwargs):
        super().__init__(**kwargs)
        self.lr_multipliers = dict(lr_multipliers or {})
        self.decoupled_decay = float(decoupled_decay)
        self.no_decay = tuple(no_decay)
        self.unfreeze_epochs = dict(unfreeze_epochs or {})

    def build(self, var_list):
        super().build(var_list)
        self._multiplier_by_index = [
            float(self.lr_multipliers.get(v.path, 1.0)) for v in var_list]
        self._decays = [not any(part in v.name for part in self.no_decay)
                        for v in var_list]
        if self.unfreeze_epochs:
            self._gate_epochs = [int(self.unfreeze_epochs.get(v.path, 0))
                                 for v in var_list]
            self._gates = self.add_variable(
                (len(var_list),), initializer="ones", dtype="float32",
                name="unfrozen")
            self.set_epoch(0)

    def set_epoch(self, epoch):
        """Gates the updates for `epoch` (0-based): 1 for a variable whose
        block is unfrozen by then, else 0."""
        self._gates.assign([float(epoch >= e) for e in self._gate_epochs])

    def _update_model_variables_moving_average(self, trainable_variables):
        """--ema: the average moves toward the weights at decay
        min(ema_momentum, (1 + t) / (10 + t)) after step t, and starts at
        the weights (tf.train.ExponentialMovingAverage's num_updates
        warmup). Keras's fixed decay would keep a short stage's average
        near its first step: at 0.999, 98% of it after 20 steps, a small
        data set's whole fine-tune."""
        if not self.use_ema:
            return
        step = keras.ops.cast(self.iterations, "float32")
        decay = keras.ops.minimum(
            keras.ops.cast(self.ema_momentum, "float32"),
            (1.0 + step) / (10.0 + step))
        decay = decay * keras.ops.cast(keras.ops.not_equal(step, 0),
                                       "float32")
        for var, average in zip(trainable_variables,
                                self._model_variables_moving_average,
                                strict=True):
            if average is not None:
                rate = keras.ops.cast(decay, var.dtype)
                average.assign(rate * average + (1 - rate) * var)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        factor = self._multiplier_by_index[index]
        if factor != 1.0:
            learning_rate = learning_rate * factor
        if self.unfreeze_epochs:
            learning_rate = learning_rate * keras.ops.cast(
                self._gates[index], variable.dtype)
        if self.decoupled_decay and self._decays[index]:
            rate = keras.ops.cast(learning_rate, variable.dtype)
            variable.assign(variable - variable * rate * keras.ops.cast(
                self.decoupled_decay, variable.dtype))
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(),
                "lr_multipliers": self.lr_multipliers,
                "decoupled_decay": self.decoupled_decay,
                "no_decay": list(self.no_decay),
                "unfreeze_epochs": self.unfreeze_epochs}


@keras.saving.register_keras_serializable("tl_keras")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy from logits against integer labels smoothed to
    (1 - smoothing) on the true class plus smoothing / classes on each."""

    def __init__(self, smoothing=0.0, name="smoothed_crossentropy",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        labels = label_weights(y_true, y_pred)
        labels = labels * (1.0 - self.smoothing) + self.smoothing / (
            keras.ops.cast(classes, y_pred.dtype))
        return keras.losses.categorical_crossentropy(labels, y_pred,
                                                     from_logits=True)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing}


@keras.saving.register_keras_serializable("tl_keras")
class LabelAccuracy(keras.metrics.MeanMetricWrapper):
    """Accuracy against integer labels or per-class label weights (mixed
    labels: the heaviest class counts as the label)."""

    def __init__(self, name="accuracy", dtype=None):
        super().__init__(fn=label_accuracy, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


def label_accuracy(y_true, y_pred):
    """1 where the top logit is the (heaviest) label, else 0."""
    target = keras.ops.argmax(label_weights(y_true, y_pred), axis=-1)
    return keras.ops.cast(keras.ops.equal(
        target, keras.ops.argmax(y_pred, axis=-1)), "float32")


def label_weights(y_true, y_pred):
    """The labels as per-class weights: as they are when they already
    have the logits' shape (mixed labels), else integer labels one-hot.
    (Integer labels are (batch,) or (batch, 1), and there are at least 2
    classes, so the two cannot be confused.)"""
    if (len(y_true.shape) == len(y_pred.shape)
            and y_true.shape[-1] == y_pred.shape[-1] != 1):
        return keras.ops.cast(y_true, y_pred.dtype)
    return keras.ops.one_hot(
        keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,)),
        keras.ops.shape(y_pred)[-1], dtype=y_pred.dtype)
