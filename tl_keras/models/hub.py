"""KerasHub backbones: `--backbone=hub:PRESET`.

PRESET is a KerasHub preset name (downloaded by KerasHub, which needs the
network) or a local preset folder as `save_to_preset` writes it
(config.json for the backbone, image_converter.json for its
preprocessing). What tl_keras takes from a preset:

* the backbone, without any task head (`_base`). A CNN's KerasHub model
  is the base as it is: its stages are the blocks, it can be cut after
  one. A ViT, DeiT, DINOv2 or Swin is rebuilt from its own layers with
  each encoder layer (Swin: stage) a node of the graph, in copies that
  can be saved and loaded on their own, so encoder layers are blocks to
  unfreeze or cut after; it is pooled by its class token (the token
  their pretraining classifies from), or by the mean of its tokens when
  it has none (Swin; a ViT without one);
* the image converter's scale and offset, inside the model exactly once
  (`ImageNormalization` mode 'affine'); its resizing is the data
  pipeline's, at the preset's image size;
* the default image size: the backbone's fixed input, else the
  converter's size.

keras_hub is imported only when a hub backbone is used (the `hub` extra).
"""

import difflib
import json
import os
import zipfile

import keras

from tl_keras.errors import InputError
from tl_keras.models.layers import TokenPooling, token_pooling_mode

PREFIX = "hub:"

# The blocks --unfreeze and --lr_decay count, by backbone class: encoder
# layers for a rebuilt transformer, stages for CNNs (layer names checked
# on small models of each family built from configs; the layers before
# the first block are 'stem': a transformer's patch embedding). A
# transformer not listed is one block ('all'); a CNN not listed gets one
# block per layer with a kernel (`list_blocks` without a pattern).
BLOCK_PATTERNS = {
    "ViTBackbone": r"^(transformer_block_\d+)$",
    "DeiTBackbone": r"^(transformer_block_\d+)$",
    "DINOV2Backbone": r"^(layers_\d+)$",
    "SwinTransformerBackbone": r"^(stage_\d+)$",
    "ResNetBackbone": r"^(stack\d+)_",
    "DenseNetBackbone": r"^(stack\d+)_",  # transition k joins stack k
    "EfficientNetBackbone": r"^(block\d+)[a-z]_",
    "MobileNetBackbone": r"^(block_\d+)_\d+$",
    "CSPNetBackbone": r"^(stage_\d+)_",
    "VGGBackbone": r"^(block\d+)_",
}

# A rebuilt transformer inside a saved classifier, by its encoder layers.
SAVED_ENCODER_LAYERS = {"HubViTEncoderBlock": "ViTBackbone",
                        "HubDeiTEncoderBlock": "DeiTBackbone",
                        "DINOV2Layer": "DINOV2Backbone",
                        "HubSwinTransformerStage": "SwinTransformerBackbone"}


def is_hub(name):
    """Whether a --backbone value names a KerasHub preset."""
    return name.startswith(PREFIX)


def import_keras_hub():
    """keras_hub, or a clear error naming the extra that installs it."""
    try:
        import keras_hub
    except ImportError:
        raise InputError(
            "Invalid backbone: hub: backbones need the keras-hub package. "
            "Allowed: install it with pip install 'tl_keras[hub]'. "
            "Received: keras_hub not installed") from None
    return keras_hub


def import_if_saved_with_hub(path):
    """Imports keras_hub when the .keras file at `path` holds KerasHub
    layers, so Keras can deserialize them (a no-op otherwise)."""
    try:
        with zipfile.ZipFile(path) as archive:
            saved = archive.read("config.json").decode("utf-8", "replace")
    except (OSError, KeyError, zipfile.BadZipFile):
        return  # Keras's own loading reports what is wrong with the file
    if "keras_hub" in saved or '"tl_keras>Hub' in saved:
        import_keras_hub()
        from tl_keras.models import hub_layers  # noqa: F401 - registers


def saved_block_pattern(base):
    """(architecture, block pattern) of a hub base inside a saved
    tl_keras classifier: a CNN's KerasHub model by its class, a rebuilt
    transformer by its encoder layers; (None, None) for any other
    base."""
    kind = type(base).__name__
    for layer in base.layers:
        kind = SAVED_ENCODER_LAYERS.get(type(layer).__name__, kind)
    return kind, BLOCK_PATTERNS.get(kind)


def refuse_bare_hub_model(model, path):
    """A KerasHub backbone saved on its own as .keras lacks its image
    converter, so its preprocessing would be lost: an error pointing to a
    preset folder instead."""
    if type(model).__module__.startswith("keras_hub"):
        raise InputError(
            f"Invalid backbone {path!r}: a KerasHub {type(model).__name__} "
            f"saved without its image converter, so its preprocessing is "
            f"unknown. Allowed: hub: + a preset folder (save_to_preset of "
            f"the backbone and its converter). Received: backbone={path!r}")


def check_token_cut(base, blocks, block):
    """Before the first encoder layer a ViT's class token is the same for
    every image (the learned token plus its position embedding): a cut
    there pooled by it would train the head on a constant."""
    names = [name for name, _ in blocks]
    if (token_pooling_mode(base) == "class_token" and block in names
            and names.index(block) == 0 and names[0] == "stem"):
        raise InputError(
            f"Invalid feature_block {block!r}: before the first encoder "
            f"layer the class token this base is pooled by carries no "
            f"image information. Allowed: one of {', '.join(names[1:])}. "
            f"Received: feature_block={block!r}")


def check_preset_name(name, image_size=0):
    """The checks of `load_preset` that need no loading (keras-hub
    installed; a folder is a backbone preset; an --image_size no preset
    takes): for a list of candidates checked before any of them is
    measured (rank found the size only once it loaded the preset)."""
    if 0 < image_size < 32:
        raise InputError(
            f"Invalid image_size for backbone {name!r}. Allowed: >= 32, or "
            f"0 (the preset's). Received: image_size={image_size}")
    import_keras_hub()
    preset = name[len(PREFIX):]
    if os.path.isdir(preset):
        _check_preset_folder(preset, name)
    elif "://" not in preset and (os.sep in preset
                                   or preset.startswith(".")):
        raise InputError(
            f"Invalid backbone: no such preset folder. Allowed: hub: + a "
            f"KerasHub preset name or handle, or a folder written by "
            f"save_to_preset. Received: backbone={name!r}")
    return preset


def load_preset(name, weights, image_size):
    """Loads the backbone and preprocessing of `hub:PRESET`.

    Args:
      name: 'hub:' + a preset name or a local preset folder.
      weights: 'imagenet' (the preset's own weights; the name is the
        flag's default for every base), 'none' (the architecture, random
        init), or a weights file (loaded by the caller).
      image_size: square input size; 0 = the preset's.

    Returns:
      (base, preprocessing config for ImageNormalization, image size,
      block pattern or None, architecture class name).

    Raises:
      InputError: unknown preset, no network for a named one, a folder
        that is not a preset, a preset of a non-vision model, or an image
        size the backbone cannot take.
    """
    preset = check_preset_name(name, image_size)
    hub = import_keras_hub()
    backbone = _from_preset(hub, preset, name, weights == "imagenet")
    kind = type(backbone).__name__
    if not _is_image_model(backbone):
        raise InputError(
            f"Invalid backbone {name!r}: {kind} is not an image backbone. "
            f"Allowed: a KerasHub vision backbone preset (ViT, ResNet, "
            f"EfficientNet, MobileNet, ...). Received: backbone={name!r}")
    converter = _image_converter(hub, preset, name)
    size = _image_size(backbone, converter, image_size, name)
    return (_base(backbone, name), affine_preprocessing(converter), size,
            BLOCK_PATTERNS.get(kind), kind)


def _base(backbone, name):
    """The base tl_keras trains: a ViT, DeiT, DINOv2 or Swin rebuilt with
    its encoder layers as graph nodes (`hub_layers.rebuilt`); a CNN's
    KerasHub model itself (saved and loaded through KerasHub's own
    config); any other transformer nested whole, pooled by the mean of
    its tokens."""
    kind = type(backbone).__name__
    output = backbone.output
    from tl_keras.models import hub_layers  # keras_hub is imported

    rebuilt = hub_layers.rebuilt(backbone)
    if rebuilt:
        return rebuilt
    if not isinstance(output, dict) and len(output.shape) == 4:
        return backbone
    if isinstance(output, dict) or len(output.shape) != 3:
        raise InputError(
            f"Invalid backbone {name!r}: {kind} gives neither one (batch, "
            f"height, width, channels) map nor a token sequence. Allowed: "
            f"a ViT, another transformer or a convolutional KerasHub "
            f"backbone with one output. Received: backbone={name!r}")
    images = keras.Input(backbone.inputs[0].shape[1:], name="images")
    named = backbone.input  # some backbones take {'images': ...}
    tokens = backbone({next(iter(named)): images} if isinstance(
        named, dict) else images)
    pooled = TokenPooling("mean", name="token_pool")(tokens)
    return keras.Model(images, pooled, name=f"{backbone.name}_pooled")


def affine_preprocessing(converter):
    """ImageNormalization's settings for an image converter: x * scale +
    offset per channel (a scalar or None in the converter means the same
    for every channel; None is 1 for the scale, 0 for the offset)."""
    def per_channel(value, default):
        if value is None:
            value = default
        values = value if isinstance(value, (list, tuple)) else [value] * 3
        return [float(v) for v in values]

    return {"mode": "affine",
            "scale": per_channel(getattr(converter, "scale", None), 1.0),
            "offset": per_channel(getattr(converter, "offset", None), 0.0)}


def _check_preset_folder(folder, name):
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise InputError(
            f"Invalid backbone {name!r}: the folder is not a KerasHub preset"
            f" (no config.json). Allowed: a folder written by "
            f"Backbone.save_to_preset. Received: backbone={name!r}")
    try:
        with open(config_path, encoding="utf-8") as f:
            registered = str(json.load(f).get("registered_name") or "")
    except (ValueError, AttributeError):  # not JSON, not UTF-8, no dict
        registered = ""
    if not registered.endswith("Backbone"):
        raise InputError(
            f"Invalid backbone {name!r}: its config.json holds "
            f"{registered or 'no registered KerasHub class'}, not a "
            f"backbone. Allowed: a backbone preset (a task preset's folder "
            f"holds its backbone's config.json). Received: "
            f"backbone={name!r}")


def _from_preset(hub, preset, name, load_weights):
    try:
        return hub.models.Backbone.from_preset(preset,
                                               load_weights=load_weights)
    except ValueError as e:
        if "://" in preset and "no config.json" in str(e):
            # hf:// offline: KerasHub retries, then says only this.
            raise _undownloadable(preset, name, e, " or it holds no "
                                  "KerasHub preset") from None
        if "Unknown preset identifier" not in str(e):
            raise _unloadable(preset, name, e) from None
        known = sorted(hub.models.Backbone.presets)
        close = difflib.get_close_matches(preset, known, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise InputError(
            f"Unknown KerasHub preset {preset!r}.{hint} Allowed: a preset "
            f"name (keras_hub.models.Backbone.presets) or a local preset "
            f"folder. Received: backbone={name!r}") from None
    except (OSError, ConnectionError) as e:
        if os.path.isdir(preset):
            raise _unloadable(preset, name, e) from None
        raise _undownloadable(preset, name, e) from None
    except (TypeError, KeyError) as e:
        raise _unloadable(preset, name, e) from None


def _undownloadable(preset, name, error, or_else=""):
    return InputError(
        f"Could not download KerasHub preset {preset!r}{or_else} "
        f"({_first_line(error)}). Without network access use a local "
        f"preset folder (written by save_to_preset). Received: "
        f"backbone={name!r}")


def _unloadable(preset, name, error):
    return InputError(
        f"Invalid backbone {name!r}: KerasHub could not load preset "
        f"{preset!r} ({_first_line(error)}). Allowed: a preset whose "
        f"config.json and weights match (as save_to_preset writes them). "
        f"Received: backbone={name!r}")


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def _is_image_model(backbone):
    inputs = backbone.inputs
    return len(inputs) == 1 and len(inputs[0].shape) == 4


def _image_converter(hub, preset, name):
    if os.path.isdir(preset) and not os.path.isfile(
            os.path.join(preset, "image_converter.json")):
        raise InputError(
            f"Invalid backbone {name!r}: the preset has no image converter "
            f"(image_converter.json), so its preprocessing is unknown. "
            f"Allowed: a preset saved with its ImageConverter "
            f"(converter.save_to_preset). Received: backbone={name!r}")
    try:
        return hub.layers.ImageConverter.from_preset(preset)
    except (ValueError, TypeError, KeyError) as e:
        raise InputError(
            f"Invalid backbone {name!r}: its image converter could not be "
            f"loaded ({_first_line(e)}), so its preprocessing is unknown. "
            f"Allowed: a preset with an ImageConverter. Received: "
            f"backbone={name!r}") from None


def _image_size(backbone, converter, image_size, name):
    """The square size the base runs at: --image_size, else the
    backbone's fixed input, else the converter's."""
    fixed = [d for d in backbone.inputs[0].shape[1:3] if d]
    if len(set(fixed)) > 1:
        raise InputError(
            f"Invalid backbone {name!r}: it was built for {fixed[0]} x "
            f"{fixed[1]} px inputs; tl_keras trains on square images. "
            f"Allowed: a backbone with a square or free input size. "
            f"Received: backbone={name!r}")
    preset_size = getattr(converter, "image_size", None)
    default = (fixed[0] if fixed else preset_size[0] if preset_size
               else 224)
    size = image_size or default
    if fixed and size != fixed[0]:
        raise InputError(
            f"Invalid image_size for backbone {name!r}: the preset's "
            f"backbone was built for {fixed[0]} px inputs only. Allowed: 0 "
            f"or {fixed[0]}. Received: image_size={image_size}")
    if size < 32:
        raise InputError(
            f"Invalid image_size for backbone {name!r}. Allowed: >= 32. "
            f"Received: image_size={image_size} (the preset's size "
            f"{default})")
    return size
