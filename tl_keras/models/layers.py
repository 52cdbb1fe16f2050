"""The tl_keras layers saved inside classifiers.

`ImageNormalization` maps [0, 255] RGB to the range the base expects;
`Backbone` holds the base and keeps a frozen base in inference mode;
`FeatureStandardization` standardises the pooled features for the head;
`TokenPooling` turns a transformer's tokens into a 1 x 1 map. All are
registered as Keras serializables ("tl_keras>..."), so a saved
`model.keras` loads once this module was imported (see tl_keras/__init__).
"""

import keras
import numpy as np

from tl_keras.errors import InputError

# Preprocessing modes, for inputs in [0, 255]:
#   none   the base normalises inside (EfficientNet, ConvNeXt, MobileNetV3)
#   tf     scale to [-1, 1] (MobileNetV2, ResNetV2, Xception, InceptionV3)
#   caffe  RGB->BGR and ImageNet mean subtraction (ResNet v1)
#   torch  scale to [0, 1], ImageNet mean / std (DenseNet)
#   unit   scale to [0, 1] (tl_keras's own compact_cnn)
#   affine x * scale + offset per channel (a KerasHub preset's image
#          converter; `scale` and `offset` are given)
PREPROCESSING_MODES = ("none", "tf", "caffe", "torch", "unit", "affine")


@keras.saving.register_keras_serializable("tl_keras")
class ImageNormalization(keras.layers.Layer):
    """Maps [0, 255] RGB floats to the range a backbone expects."""

    def __init__(self, mode="none", scale=None, offset=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise InputError(
                f"Unknown preprocessing mode. Allowed: "
                f"{', '.join(PREPROCESSING_MODES)}. Received: mode={mode!r}")
        if (mode == "affine") != (scale is not None and offset is not None):
            raise InputError(
                f"Invalid preprocessing: scale and offset go with mode "
                f"'affine' only. Allowed: mode='affine' with both, any "
                f"other mode with neither. Received: mode={mode!r}, "
                f"scale={scale!r}, offset={offset!r}")
        self.mode = mode
        self.scale, self.offset = scale, offset

    def settings(self):
        """The preprocessing as `BuiltBackbone.preprocessing` holds it:
        the mode, or for 'affine' a dict with its scale and offset."""
        if self.mode != "affine":
            return self.mode
        return {"mode": self.mode, "scale": self.scale,
                "offset": self.offset}

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "caffe":
            mean = keras.ops.convert_to_tensor([103.939, 116.779, 123.68],
                                               self.compute_dtype)
            return keras.ops.flip(x, axis=-1) - mean
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor([0.485, 0.456, 0.406],
                                               self.compute_dtype)
            std = keras.ops.convert_to_tensor([0.229, 0.224, 0.225],
                                              self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "affine":
            scale = keras.ops.convert_to_tensor(self.scale,
                                                self.compute_dtype)
            offset = keras.ops.convert_to_tensor(self.offset,
                                                 self.compute_dtype)
            return x * scale + offset
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        extra = ({"scale": self.scale, "offset": self.offset}
                 if self.mode == "affine" else {})
        return {**super().get_config(), "mode": self.mode, **extra}


def normalization_layer(preprocessing, name="preprocess"):
    """The ImageNormalization for `BuiltBackbone.preprocessing`: a mode
    name, or a dict of settings (`ImageNormalization.settings`)."""
    settings = (preprocessing if isinstance(preprocessing, dict)
                else {"mode": preprocessing})
    return ImageNormalization(**settings, name=name)


@keras.saving.register_keras_serializable("tl_keras")
class TokenPooling(keras.layers.Layer):
    """Pools a transformer's token sequence (batch, tokens, hidden) into a
    (batch, 1, 1, hidden) map, so the head and the feature cache treat it
    as a CNN's spatial map: 'class_token' takes the first token (the one
    a ViT's pretraining classifies from), 'mean' averages all tokens."""

    MODES = ("class_token", "mean")

    def __init__(self, mode="class_token", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise InputError(
                f"Unknown token pooling. Allowed: {', '.join(self.MODES)}. "
                f"Received: mode={mode!r}")
        self.mode = mode

    def call(self, x):
        pooled = (x[:, 0] if self.mode == "class_token"
                  else keras.ops.mean(x, axis=1))
        return pooled[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def token_pooling_mode(base):
    """How `base` pools its tokens (a `TokenPooling` mode); None for a
    base without one (a CNN)."""
    modes = [layer.mode for layer in base.layers
             if isinstance(layer, TokenPooling)]
    return modes[0] if modes else None


@keras.saving.register_keras_serializable("tl_keras")
class Backbone(keras.layers.Layer):
    """Wraps a base model so a frozen base always runs in inference mode.

    In Keras 3.15 `base(x, training=False)` inside a functional model does
    not hold: fit() passes training=True down (keras-team/keras#20285), so
    BatchNorm statistics and the base's own Dropout would move. This layer
    forces training=False whenever the base is frozen. When the base is
    unfrozen for fine-tuning, BatchNorm layers are frozen one by one
    (see `classifier.configure_stage`), which also puts them in inference mode.
    """

    def __init__(self, base, **kwargs):
        super().__init__(**kwargs)
        self.base = base

    def build(self, input_shape):
        if not self.base.built:
            self.base.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        if not self.base.trainable:
            training = False
        return self.base(x, training=training)

    def compute_output_shape(self, input_shape):
        return self.base.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(),
                "base": keras.saving.serialize_keras_object(self.base)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["base"] = keras.saving.deserialize_keras_object(
            config["base"])
        return cls(**config)


@keras.saving.register_keras_serializable("tl_keras")
class FeatureStandardization(keras.layers.Layer):
    """Standardises pooled features per channel: (x - mean) / std, with
    the statistics of the training images' features (`set_statistics`),
    as a linear probe does before its regression.

    A frozen base's features can be large: HED-VGG16's pooled features
    have a standard deviation of ~12 and values up to ~200 on 32 px
    images, and a softmax head trained on them with Adam at 1e-3 for 20
    epochs reached 0.25-0.35 validation accuracy where the same head on
    standardised features reached 0.85 (bench/RESULTS.md). The statistics
    are weights that never train (saved in model.keras and the export);
    until they are set the layer is the identity (scratch training, whose
    features change as it trains, keeps it so).
    """

    def build(self, input_shape):
        channels = input_shape[-1]
        self.mean = self.add_weight(name="mean", shape=(channels,),
                                    initializer="zeros", trainable=False)
        self.inverse_std = self.add_weight(
            name="inverse_std", shape=(channels,), initializer="ones",
            trainable=False)

    def call(self, x):
        mean = keras.ops.cast(self.mean, x.dtype)
        scale = keras.ops.cast(self.inverse_std, x.dtype)
        return (x - mean) * scale

    def set_statistics(self, features, epsilon=1e-3, floor=0.01):
        """Sets the mean and 1 / (std + epsilon) of `features` [n,
        channels] (numpy; computed in float64). A channel's std counts as
        at least `floor` x the median channel's: a channel that fires on
        one sampled image in a thousand would otherwise be scaled up a
        hundredfold and, on an unseen image where it fires, swamp the
        rest. A channel that never varies is centred only.

        When no channel varies by more than `epsilon`, but some vary,
        `epsilon` is taken relative to the largest channel's std: as an
        absolute 1e-3 it left every channel of a base whose pooled
        features vary by less than that centred only, and the head at
        chance where the probe separated them (features x 3e-4; audit,
        session 41). Features with any channel above it are standardised
        as before (a smaller epsilon would amplify 16-bit noise in the
        floored channels)."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or not len(features) or not np.isfinite(
                features).all():
            raise InputError(
                f"Invalid features for the head's statistics. Allowed: "
                f"finite pooled features, (images, channels), of at least "
                f"one image (a base whose outputs are finite). Received: "
                f"shape {features.shape}, "
                f"{int((~np.isfinite(features)).sum())} NaN or Inf")
        std = features.std(axis=0)
        if 0 < std.max() <= epsilon:  # all below it: in their own units
            epsilon *= float(std.max())
        varying = std > epsilon
        if varying.any():
            std = np.maximum(std, floor * np.median(std[varying]))
        self.mean.assign(features.mean(axis=0).astype("float32"))
        self.inverse_std.assign(np.where(varying, 1.0 / (std + epsilon),
                                         1.0).astype("float32"))

    def compute_output_shape(self, input_shape):
        return input_shape
