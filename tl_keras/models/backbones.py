"""Building a base: by registry name or from a .keras file, with weights.

`build_backbone` returns a `BuiltBackbone`: the base model plus the
contract a classifier needs (preprocessing, input size, spec for block
names). `list_blocks` groups a base's layers into the blocks that
fine-tuning unfreezes from the top.
"""

import dataclasses
import logging
import os
import re

import keras

from tl_keras.errors import InputError, fail
from tl_keras.models import hub
from tl_keras.models.base_checks import (
    check_block_pattern,
    check_build_args,
    check_cut_holds_weights,
    check_free_size,
    check_model_file,
    input_side,
)
from tl_keras.models.layers import (
    TokenPooling,
    token_pooling_mode,
)
from tl_keras.models.model_files import (
    find_base,
    fold_imagenet_scaling,
    load_model_file,
    load_weights_file,
)
from tl_keras.models.registry import (
    BackboneSpec,
    check_registered,
    lookup_spec,
)

log = logging.getLogger("tl_keras")


@dataclasses.dataclass
class BuiltBackbone:
    """A base ready to go into a classifier, with its contract."""

    base: keras.Model
    preprocessing: str | dict  # an ImageNormalization mode or settings
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


def build_backbone(name, weights="imagenet", image_size=0, feature_block=""):
    """Builds a base by registry name or from a saved .keras model path.

    Args:
      name: a registry name, 'hub:' + a KerasHub preset (`models.hub`),
        or a path to a `.keras` file. A tl_keras classifier's file gives
        its base and preprocessing; any other Keras model is cut at its
        last rank-4 (spatial feature map) output: a Functional or
        Sequential model of one (height, width, 3) input and one output.
      weights: 'imagenet', 'none', or a path to a `.weights.h5` / `.keras`
        file holding weights for this base (with `feature_block`, a
        `.keras` file may hold the cut base's). A `.keras` backbone keeps
        its own weights unless a file is given; a hub preset keeps its
        own for 'imagenet'.
      image_size: square input size; 0 means the spec's default (224 for
        a .keras model that takes any size, said in the log).
      feature_block: optional block name (`list_blocks`): the base ends
        after that block, so the head sees earlier, more generic features.

    Returns:
      A BuiltBackbone.

    Raises:
      InputError: unknown name or block, size below the minimum, weights
        that do not match the architecture, a cut that holds no weights,
        or a .keras model that is not one base (`base_checks`).
    """
    name, weights, image_size = check_build_args(name, weights, image_size,
                                                 feature_block)
    if name.endswith(".keras"):
        built = _backbone_from_model_file(name, image_size, weights,
                                          feature_block)
    elif hub.is_hub(name):
        built = _build_hub(name, weights, image_size, feature_block)
    else:
        built = _build_registered(name, weights, image_size, feature_block)
    return cut_at_block(built, feature_block) if feature_block else built


def cut_at_block(built, block):
    """`built` with its base ending after the named block: the classifier
    trains on activations from earlier in the network (the small +
    very different case of transfer learning).

    Raises:
      InputError: no such block (the message lists the blocks), the
        block does not end in a spatial feature map, or the cut holds no
        weights (the head would train on the pixels).
    """
    blocks = built.blocks()
    if block not in dict(blocks):
        raise InputError(
            f"Invalid feature_block for backbone {built.source}: it has no "
            f"block {block!r}. Allowed: one of "
            f"{', '.join(name for name, _ in blocks)}. "
            f"Received: feature_block={block!r}")
    hub.check_token_cut(built.base, blocks, block)
    check_cut_holds_weights(blocks, block, built.source)
    output = block_map(built.base, blocks, block)
    if output is None:
        raise InputError(
            f"Invalid feature_block {block!r}: it gives no (batch, height, "
            f"width, channels) map. Allowed: a block of convolutional "
            f"layers or a transformer's encoder layer. Received: "
            f"feature_block={block!r}")
    base = keras.Model(built.base.inputs, output, name=built.base.name)
    return dataclasses.replace(built, base=base,
                               source=f"{built.source}, cut after {block}")


def block_map(base, blocks, block):
    """What the base passes on after `block` as a (batch, height, width,
    channels) map: a transformer's tokens are pooled as the base pools its
    last layer's (its `TokenPooling`, a new layer of the same mode); None
    when the block gives neither a map nor tokens."""
    output = block_output(blocks, block)
    mode = token_pooling_mode(base)
    if len(output.shape) == 3 and mode:
        return TokenPooling(mode, name=f"{block}_token_pool")(output)
    return output if len(output.shape) == 4 else None


def block_output(blocks, block):
    """What the base passes on after `block` (of `blocks`, from
    `list_blocks`): the input of the next block's first layer. A block's
    last layer is not always its output: a ConvNeXt block ends in
    `x + residual`, an operation and not a layer, so its last layer's
    output lacks the skip connection."""
    names = [name for name, _ in blocks]
    position = names.index(block)
    if position + 1 < len(names):
        following = blocks[position + 1][1][0]
        if not isinstance(following.input, (list, tuple)):
            return following.input
    return blocks[position][1][-1].output


def _cutter(built, block):
    """For `load_weights_file`: a function giving `built`'s base cut after
    `block`; None without a block."""
    return (lambda: cut_at_block(built, block).base) if block else None


def _build_registered(name, weights, image_size, feature_block=""):
    spec, size = check_registered(name, weights, image_size)
    if weights == "imagenet":
        base = _build_with_imagenet_weights(spec, size)
    else:
        base = spec.build(size, None)
    check_block_pattern(base, spec)
    built = BuiltBackbone(base, spec.preprocessing, size, spec,
                          source=f"{spec.name} (weights={weights})")
    if weights not in ("imagenet", "none"):
        load_weights_file(base, weights, spec.name,
                          _cutter(built, feature_block))
        if spec.module == "efficientnet":
            fold_imagenet_scaling(base, spec.name)
    return built


def _build_hub(name, weights, image_size, feature_block=""):
    base, preprocessing, size, pattern, kind = hub.load_preset(
        name, weights, image_size)
    spec = _hub_spec(name, kind, pattern) if pattern else None
    origin = {"imagenet": "the preset's weights",
              "none": "random init"}.get(weights, f"weights={weights}")
    built = BuiltBackbone(base, preprocessing, size, spec,
                          source=f"{name} ({kind}, {origin})")
    if weights not in ("imagenet", "none"):
        load_weights_file(base, weights, name, _cutter(built, feature_block))
    log.info("KerasHub %s at %d px, %d blocks (%s ... %s); preprocessing "
             "from its converter: x * %s + %s", kind, size,
             len(built.blocks()), built.blocks()[0][0],
             built.blocks()[-1][0], _rounded(preprocessing["scale"]),
             _rounded(preprocessing["offset"]))
    return built


def _hub_spec(name, kind, pattern):
    """The block grouping of a KerasHub architecture (`hub.BLOCK_PATTERNS`)
    as a spec; only its pattern is used."""
    return BackboneSpec(name=name, application="", default_size=0,
                        min_size=32, preprocessing="affine",
                        block_pattern=pattern, module=kind)


def _rounded(values):
    """One number if every channel has it, else the list; 4 significant
    digits."""
    values = [float(f"{v:.4g}") for v in values]
    return values[0] if len(set(values)) == 1 else values


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


def _backbone_from_model_file(path, image_size, weights="none",
                              feature_block=""):
    if not os.path.isfile(path):
        raise InputError(
            f"Invalid backbone: no such file. Allowed: a registered name, "
            f"hub:PRESET or an existing .keras path. Received: "
            f"backbone={path!r}")
    model = load_model_file(path, "backbone", compile=False)
    base = find_base(model)
    if base is not None:
        preprocessing = model.get_layer("preprocess").settings()
        kind, pattern = hub.saved_block_pattern(base)
        # Keras names a MobileNet base 'mobilenetv2_1.00_224' (its width
        # and size): without them it is the family's name (the blocks were
        # lost: --unfreeze counted conv layers, --feature_block refused).
        spec = lookup_spec(re.sub(r"_\d+\.\d+_\d+$", "", base.name)) or (
            _hub_spec(path, kind, pattern) if pattern else None)
    else:
        hub.refuse_bare_hub_model(model, path)
        check_model_file(model, path)
        base, preprocessing, spec = _cut_at_features(model, path), "none", None
        # Nothing says what range a model saved by hand expects.
        log.warning("%s is not a tl_keras classifier: it gets the pixels "
                    "as they are, in [0, 255]. A model that expects another "
                    "range (e.g. keras.applications' [-1, 1]) must hold its "
                    "own preprocessing layer.", path)
    size = _model_file_size(model, base, path, image_size)
    built = BuiltBackbone(base, preprocessing, size, spec, source=path)
    if weights not in ("imagenet", "none"):
        load_weights_file(base, weights, path, _cutter(built, feature_block))
        built.source = f"{path} (weights={weights})"
    return built


def _model_file_size(model, base, path, image_size):
    """The input size of a .keras file's base: the one it fixes, else
    (a hub CNN's base takes any size) its classifier's, else
    `image_size`, else 224 (said in the log)."""
    size = input_side(base, path) or model.input_shape[1]
    if not size:
        return check_free_size(base, path, image_size)
    if image_size and image_size != size:
        raise InputError(
            f"Invalid image_size for backbone {path!r}: the saved model "
            f"takes {size} px. Allowed: 0 or {size}. Received: "
            f"image_size={image_size}")
    return size


def _cut_at_features(model, path):
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue  # a cut there would be the raw pixels
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
    block; a `BuiltBackbone` gives its spec's blocks (what a run uses).

    Returns:
      A list of (block_name, [layers]) from input to output.
    """
    if isinstance(base, BuiltBackbone):  # its .base alone has no spec
        return base.blocks()
    if not isinstance(base, keras.Model):  # a name: an AttributeError
        fail("base", "a BuiltBackbone (build_backbone(name)) or a Keras "
             "model", base)
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
