"""Backbone registry: name -> builder, input contract and block names.

Each spec carries what a user of that base must get right and usually
looks up by hand: the default and minimum input size, the value range the
pretrained weights expect (exactly one normalisation ends up in the model),
and how its layers group into blocks so fine-tuning can unfreeze whole
blocks from the top.
"""

import dataclasses
import os
import re
import warnings

import keras

from tl_keras.config import InputError

# Preprocessing modes, for inputs in [0, 255]:
#   none   the base normalises inside (EfficientNet, ConvNeXt, MobileNetV3)
#   tf     scale to [-1, 1] (MobileNetV2, ResNetV2, Xception, InceptionV3)
#   caffe  RGB->BGR and ImageNet mean subtraction (ResNet v1)
#   torch  scale to [0, 1], ImageNet mean / std (DenseNet)
#   unit   scale to [0, 1] (tl_keras's own compact_cnn)
PREPROCESSING_MODES = ("none", "tf", "caffe", "torch", "unit")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build one base and what it expects.

    Attributes:
      name: registry name (lowercase, words joined by '_').
      application: keras.applications class name, or '' for custom.
      default_size: the size the pretrained weights were trained at.
      min_size: the smallest input the architecture accepts.
      preprocessing: one of PREPROCESSING_MODES.
      block_pattern: regex whose group 1 names a layer's block.
      block_rule: 'match' (re.match at the name start), 'search', or
        'end_marker' (a block ends at each layer the pattern matches).
      builder_kwargs: extra keyword arguments for the application.
    """

    name: str
    application: str
    default_size: int
    min_size: int
    preprocessing: str
    block_pattern: str
    block_rule: str = "match"
    builder_kwargs: tuple = ()

    def build(self, image_size, weights):
        """Builds the base (no top) for square `image_size` inputs."""
        if not self.application:
            return build_compact_cnn(image_size)
        cls = getattr(keras.applications, self.application)
        return cls(
            include_top=False,
            weights=weights,
            input_shape=(image_size, image_size, 3),
            **dict(self.builder_kwargs),
        )


_REGISTRY = {}


def register_backbone(spec):
    """Adds a spec to the registry (also usable for user backbones)."""
    _REGISTRY[_normalize(spec.name)] = spec
    return spec


def list_backbones():
    """Returns the registered names, sorted."""
    return sorted(spec.name for spec in _REGISTRY.values())


def get_backbone_spec(name):
    """Looks a spec up by name; 'EfficientNetB0' finds 'efficientnet_b0'.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    spec = _REGISTRY.get(_normalize(name))
    if spec is None:
        raise InputError(
            f"Unknown backbone {name!r}. Known: {', '.join(list_backbones())}"
            f", or a path to a saved .keras model. Received: backbone="
            f"{name!r}"
        )
    return spec


def _normalize(name):
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _register_family(names, application_fmt, sizes, min_size, preprocessing,
                     block_pattern, block_rule="match", **kwargs):
    for name, suffix in names:
        register_backbone(BackboneSpec(
            name=name,
            application=application_fmt.format(suffix),
            default_size=sizes[suffix] if isinstance(sizes, dict) else sizes,
            min_size=min_size,
            preprocessing=preprocessing,
            block_pattern=block_pattern,
            block_rule=block_rule,
            builder_kwargs=tuple(kwargs.items()),
        ))


_register_family([("mobilenet_v2", "")], "MobileNetV2{}", 224, 32, "tf",
                 r"^(expanded_conv|block_\d+)_")
_register_family([("mobilenet_v3_small", "Small"),
                  ("mobilenet_v3_large", "Large")],
                 "MobileNetV3{}", 224, 32, "none",
                 r"^(expanded_conv(?:_\d+)?)_")
_EFFICIENTNET_SIZES = {"B0": 224, "B1": 240, "B2": 260, "B3": 300,
                       "B4": 380, "B5": 456, "B6": 528, "B7": 600, "S": 384,
                       "M": 480, "L": 480}
_register_family([(f"efficientnet_b{i}", f"B{i}") for i in range(8)],
                 "EfficientNet{}", _EFFICIENTNET_SIZES, 32, "none",
                 r"^(block\d+[a-z])_")
_register_family([(f"efficientnet_v2_{s.lower()}", s)
                  for s in ("B0", "B1", "B2", "B3", "S", "M", "L")],
                 "EfficientNetV2{}", _EFFICIENTNET_SIZES, 32, "none",
                 r"^(block\d+[a-z])_")
_register_family([(f"resnet{d}", str(d)) for d in (50, 101, 152)],
                 "ResNet{}", 224, 32, "caffe", r"^(conv\d_block\d+)_")
_register_family([(f"resnet{d}_v2", f"{d}V2") for d in (50, 101, 152)],
                 "ResNet{}", 224, 32, "tf", r"^(conv\d_block\d+)_")
_register_family([(f"convnext_{s.lower()}", s)
                  for s in ("Tiny", "Small", "Base", "Large")],
                 "ConvNeXt{}", 224, 32, "none",
                 r"(stage_\d+_block_\d+|downsampling_block_\d+)",
                 block_rule="search")
_register_family([(f"densenet{d}", str(d)) for d in (121, 169, 201)],
                 "DenseNet{}", 224, 32, "torch", r"^(conv\d_block\d+|pool\d)_")
_register_family([("xception", "")], "Xception{}", 299, 71, "tf",
                 r"^(block\d+)_")
_register_family([("inception_v3", "")], "InceptionV3{}", 299, 75, "tf",
                 r"^(mixed\d+)$", block_rule="end_marker")
register_backbone(BackboneSpec(
    name="compact_cnn", application="", default_size=32, min_size=16,
    preprocessing="unit", block_pattern=r"^(block\d+)_"))


def build_compact_cnn(image_size, widths=(16, 32, 64, 128)):
    """A small conv net for demos and tests: 4 blocks of (conv-BN-ReLU) x 2
    and 2x2 max-pooling, 0.3 M weights.

    Pooling after every block leaves a 2x2 map at 32 px, so each final
    channel sees the whole image; measured on the digits demo, its pooled
    features transferred better (linear probe 0.87 vs 0.81) than a
    3-block net ending in an 8x8 map. Returns a functional model ending in
    rank-4 features, like the keras.applications bases (include_top=False).
    """
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for i, width in enumerate(widths, start=1):
        for j in (1, 2):
            x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                    name=f"block{i}_conv{j}")(x)
            # momentum 0.9, not Keras's 0.99: with a few hundred steps
            # the moving statistics must catch up, or validation (which
            # uses them) sits at chance while training accuracy is high.
            x = keras.layers.BatchNormalization(
                momentum=0.9, name=f"block{i}_bn{j}")(x)
            x = keras.layers.ReLU(name=f"block{i}_relu{j}")(x)
        x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="compact_cnn")


@keras.saving.register_keras_serializable("tl_keras")
class ImageNormalization(keras.layers.Layer):
    """Maps [0, 255] RGB floats to the range a backbone expects."""

    def __init__(self, mode="none", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise InputError(
                f"Unknown preprocessing mode. Allowed: "
                f"{', '.join(PREPROCESSING_MODES)}. Received: mode={mode!r}")
        self.mode = mode

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
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable("tl_keras")
class Backbone(keras.layers.Layer):
    """Wraps a base model so a frozen base always runs in inference mode.

    In Keras 3.15 `base(x, training=False)` inside a functional model does
    not hold: fit() passes training=True down (keras-team/keras#20285), so
    BatchNorm statistics and the base's own Dropout would move. This layer
    forces training=False whenever the base is frozen. When the base is
    unfrozen for fine-tuning, BatchNorm layers are frozen one by one
    (see transfer.py), which also puts them in inference mode.
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


@dataclasses.dataclass
class BuiltBackbone:
    """A base ready to go into a classifier, with its contract."""

    base: keras.Model
    preprocessing: str
    image_size: int
    spec: BackboneSpec | None
    source: str

    def blocks(self):
        return list_blocks(self.base, self.spec)


def reinitialized(built):
    """`built`'s architecture, preprocessing and size with fresh random
    weights: scratch training for a base loaded from a .keras file, whose
    architecture need not be registered."""
    base = keras.models.clone_model(built.base, recursive=True)
    return dataclasses.replace(
        built, base=base, source=f"{built.source}: architecture only, "
        f"random init")


def build_backbone(name, weights="imagenet", image_size=0):
    """Builds a base by registry name or from a saved .keras model path.

    Args:
      name: a registry name, or a path to a `.keras` file. A tl_keras
        classifier's file gives its base and preprocessing; any other Keras
        model is cut at its last rank-4 (spatial feature map) output.
      weights: 'imagenet', 'none', or a path to a `.weights.h5` / `.keras`
        file holding weights for this base.
      image_size: square input size; 0 means the spec's default.

    Returns:
      A BuiltBackbone.

    Raises:
      ValueError: unknown name, size below the minimum, weights that do not
        match the architecture, or a model with no spatial features.
    """
    if name.endswith(".keras"):
        return _backbone_from_model_file(name, image_size)
    spec = get_backbone_spec(name)
    size = image_size or spec.default_size
    if size < spec.min_size:
        raise InputError(
            f"Invalid image_size for {spec.name}. Allowed: >= "
            f"{spec.min_size} (default {spec.default_size}). Received: "
            f"image_size={size}")
    if weights == "imagenet" and not spec.application:
        raise InputError(
            f"Invalid weights for {spec.name}: it has no ImageNet weights. "
            f"Allowed: none | a .weights.h5 / .keras path. Received: "
            f"weights='imagenet'")
    if weights == "imagenet":
        base = _build_with_imagenet_weights(spec, size)
    else:
        base = spec.build(size, None)
    if weights not in ("imagenet", "none"):
        _load_weights_file(base, weights, spec.name)
    return BuiltBackbone(base, spec.preprocessing, size, spec,
                         source=f"{spec.name} (weights={weights})")


def _build_with_imagenet_weights(spec, size):
    try:
        return spec.build(size, "imagenet")
    except Exception as e:  # noqa: BLE001 - see below
        # keras.utils.get_file raises a bare Exception when the download
        # fails; anything else is re-raised untouched.
        if "fetch failure" not in str(e) and not isinstance(e, OSError):
            raise
        raise InputError(
            f"Could not download ImageNet weights for {spec.name} "
            f"({str(e).splitlines()[0][:200]}). Without network access use "
            f"--weights=none or a local .weights.h5 / .keras file. "
            f"Received: weights='imagenet'") from None


def _load_weights_file(base, path, name):
    try:
        with warnings.catch_warnings():
            # Keras only warns when parts of a file do not fit ("Skipping
            # ...") and leaves those weights as initialised: an error here.
            warnings.filterwarnings("error", message=".*[Ss]kipping.*")
            if path.endswith(".keras"):
                model = keras.saving.load_model(path, compile=False)
                source = _find_base(model) or model
                base.set_weights(source.get_weights())
            else:
                base.load_weights(path)
    except (ValueError, KeyError, OSError, UserWarning) as e:
        detail = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise InputError(
            f"Invalid weights: the file does not match backbone {name!r} "
            f"({detail}). Allowed: weights saved from the same architecture."
            f" Received: weights={path!r}") from None


def _find_base(model):
    for layer in model.layers:
        if isinstance(layer, Backbone):
            return layer.base
    return None


def _backbone_from_model_file(path, image_size):
    if not os.path.isfile(path):
        raise InputError(
            f"Invalid backbone: no such file. Allowed: a registered name or "
            f"an existing .keras path. Received: backbone={path!r}")
    model = keras.saving.load_model(path, compile=False)
    base = _find_base(model)
    if base is not None:
        preprocessing = model.get_layer("preprocess").mode
        spec = _REGISTRY.get(_normalize(base.name))
    else:
        base, preprocessing, spec = _cut_at_features(model, path), "none", None
    size = base.input_shape[1] or image_size or 224
    if image_size and image_size != size:
        raise InputError(
            f"Invalid image_size for backbone {path!r}: the saved model "
            f"takes {size} px. Allowed: 0 or {size}. Received: "
            f"image_size={image_size}")
    return BuiltBackbone(base, preprocessing, size, spec, source=path)


def _cut_at_features(model, path):
    for layer in reversed(model.layers):
        output = layer.output
        if len(getattr(output, "shape", ())) == 4:
            return keras.Model(model.inputs, output, name=model.name)
    raise InputError(
        f"Invalid backbone {path!r}: the model has no layer with a spatial "
        f"(batch, height, width, channels) output to cut at. Allowed: a "
        f"convolutional Keras model. Received: backbone={path!r}")


def list_blocks(base, spec=None):
    """Groups the base's layers into ordered blocks, bottom to top.

    Layers before the first named block form 'stem' and layers after the
    last form 'top'; unnamed layers in between join the block before them.
    With no spec (a user's own model), each layer with a kernel starts a
    block.

    Returns:
      A list of (block_name, [layers]) from input to output.
    """
    layers = [layer for layer in base.layers
              if not isinstance(layer, keras.layers.InputLayer)]
    if spec is None:
        labels = [layer.name if _has_kernel(layer) else None
                  for layer in layers]
    else:
        pattern = re.compile(spec.block_pattern)
        find = pattern.search if spec.block_rule == "search" else pattern.match
        found = [find(layer.name) for layer in layers]
        labels = [m.group(1) if m else None for m in found]
    if spec is not None and spec.block_rule == "end_marker":
        return _group_by_end_markers(layers, labels)
    named = [i for i, label in enumerate(labels) if label]
    if not named:
        return [("all", layers)] if layers else []
    blocks = [("stem", layers[:named[0]])] if named[0] else []
    for i in range(named[0], named[-1] + 1):
        if labels[i] and (not blocks or labels[i] != blocks[-1][0]
                          or i == named[0]):
            blocks.append((labels[i], []))
        blocks[-1][1].append(layers[i])
    if named[-1] + 1 < len(layers):
        blocks.append(("top", layers[named[-1] + 1:]))
    return blocks


def _group_by_end_markers(layers, labels):
    blocks, current = [], []
    for layer, label in zip(layers, labels, strict=True):
        current.append(layer)
        if label:
            blocks.append((label, current))
            current = []
    if current:
        blocks.append(("top", current))
    return blocks


def _has_kernel(layer):
    return hasattr(layer, "kernel") or hasattr(layer, "depthwise_kernel")
