"""Backbone registry: name -> builder, input contract and block names.

Each spec carries what a user of that base must get right and usually
looks up by hand: the default and minimum input size, the value range the
pretrained weights expect (exactly one normalisation ends up in the model),
and how its layers group into blocks so fine-tuning can unfreeze whole
blocks from the top.
"""

import dataclasses
import difflib
import inspect
import re

import keras

from tl_keras.errors import InputError, fail
from tl_keras.models.compact_cnn import build_compact_cnn
from tl_keras.models.layers import PREPROCESSING_MODES


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
      module: the keras.applications module of the application, whose
        `preprocess_input` the preprocessing mode reproduces (a test
        checks each family against it); '' for custom bases.
    """

    name: str
    application: str
    default_size: int
    min_size: int
    preprocessing: str
    block_pattern: str
    block_rule: str = "match"
    builder_kwargs: tuple = ()
    module: str = ""

    def build(self, image_size, weights):
        """Builds the base (no top) for square `image_size` inputs.

        Raises:
          InputError: Keras cannot build the architecture at that size
            (a user's spec with a min_size below what it takes: Keras's
            ValueError from a layer deep inside, a pooling left with
            nothing)."""
        try:
            if not self.application:
                return build_compact_cnn(image_size)
            cls = getattr(keras.applications, self.application)
            return cls(
                include_top=False,
                weights=weights,
                input_shape=(image_size, image_size, 3),
                **dict(self.builder_kwargs),
            )
        except ValueError as e:
            said = [line.strip() for line in re.sub(
                r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if line.strip()]
            kwargs = (f" with builder_kwargs {self.builder_kwargs}"
                      if self.builder_kwargs else "")
            # Mostly a size below what the architecture takes (a user's
            # min_size), but Keras's reason may be a builder argument or
            # the weights too: it is quoted, and all three named.
            raise InputError(
                f"Invalid image_size, builder_kwargs or weights for "
                f"{self.name}: Keras cannot build the architecture at "
                f"{image_size} px{kwargs} with weights={weights} "
                f"({' '.join(said[:2])[:300]}). Allowed: a size, arguments "
                f"and weights it takes (a registered spec's min_size, "
                f"{self.min_size}, must be one it builds at). Received: "
                f"image_size={image_size}") from None


_REGISTRY = {}


def register_backbone(spec, replace=False):
    """Adds a spec to the registry (also usable for user backbones).

    Args:
      spec: a BackboneSpec.
      replace: whether a spec already registered under the name (the
        name's case, '_' and '-' aside) may be replaced: True or False
        (replace="no" was true, and replaced a built-in for the whole
        process).

    Raises:
      InputError naming the field: checked here, so a bad spec fails
        when it is registered, not in a run after its workdir is written.
    """
    if not isinstance(spec, BackboneSpec):
        fail("spec", "a tl_keras.BackboneSpec", type(spec).__name__)
    if not isinstance(replace, bool):
        fail("replace", "True or False", replace)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", str(spec.name)):
        fail("spec.name", "a letter, then letters, digits, '_' or '-' "
             "(a path or hub:PRESET goes to --backbone as it is)", spec.name)
    known = _REGISTRY.get(_normalize(spec.name))
    if known is not None and known != spec and not replace:
        fail("spec.name", f"a name not registered ({known.name!r} is; "
             f"register_backbone(spec, replace=True) replaces it)",
             spec.name)
    if spec.application and not callable(
            getattr(keras.applications, spec.application, None)):
        fail("spec.application", "'' (the compact CNN) or a "
             "keras.applications class name", spec.application)
    _check_builder_kwargs(spec)
    if spec.preprocessing not in PREPROCESSING_MODES:
        fail("spec.preprocessing", " | ".join(PREPROCESSING_MODES),
             spec.preprocessing)
    if spec.block_rule not in ("match", "search", "end_marker"):
        fail("spec.block_rule", "match | search | end_marker",
             spec.block_rule)
    try:
        groups = re.compile(spec.block_pattern).groups
    except (re.error, TypeError) as e:
        groups = f"none ({e})"
    if not isinstance(groups, int) or groups < 1:
        fail("spec.block_pattern", "a regular expression whose group 1 "
             f"names a layer's block (groups: {groups})", spec.block_pattern)
    sizes = (spec.min_size, spec.default_size)
    if not (all(isinstance(n, int) and not isinstance(n, bool)  # True: 1
                for n in sizes) and 1 <= sizes[0] <= sizes[1]):
        fail("spec.min_size and spec.default_size", "integers with 1 <= "
             "min_size <= default_size", sizes)
    _REGISTRY[_normalize(spec.name)] = spec
    return spec


# An application's arguments that `BackboneSpec.build` sets, or that
# would give no base a classifier can take (a pooled top, its own input).
_SET_BY_BUILD = ("include_top", "weights", "input_shape", "input_tensor",
                 "pooling")


def _check_builder_kwargs(spec):
    """Raises InputError unless `spec.builder_kwargs` are (name, value)
    pairs naming arguments its application takes, besides `_SET_BY_BUILD`;
    none for the compact CNN (application ''), which takes none (a
    misspelt name was a TypeError from inside Keras when the base was
    built, and the compact CNN's were ignored)."""
    try:
        names = list(dict(spec.builder_kwargs))
    except (TypeError, ValueError):
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        fail("spec.builder_kwargs", "a tuple of (name, value) pairs",
             spec.builder_kwargs)
    if spec.application:
        taken = inspect.signature(getattr(
            keras.applications, spec.application)).parameters
        allowed = [n for n in taken if n not in _SET_BY_BUILD]
    else:
        allowed = []
    unknown = [n for n in names if n not in allowed]
    if unknown:
        fail("spec.builder_kwargs", (
            f"arguments of keras.applications.{spec.application}: "
            f"{', '.join(allowed)} (tl_keras sets "
            f"{', '.join(_SET_BY_BUILD)}; not "
            f"{', '.join(unknown)})" if spec.application else
            "() for the compact CNN (application ''), which takes none"),
             spec.builder_kwargs)


def list_backbones():
    """Returns the registered names, sorted."""
    return sorted(spec.name for spec in _REGISTRY.values())


def get_backbone_spec(name):
    """Looks a spec up by name; 'EfficientNetB0' finds 'efficientnet_b0'.

    Raises:
      ValueError: for an unknown name, listing the known ones.
    """
    if not isinstance(name, str):  # None was an AttributeError
        fail("backbone", "a registered name (text)", name)
    spec = _REGISTRY.get(_normalize(name))
    if spec is None:
        close = difflib.get_close_matches(name.lower(), list_backbones(), n=3)
        hint = f"Did you mean {', '.join(close)}? " if close else ""
        raise InputError(
            f"Unknown backbone {name!r}. {hint}Known: "
            f"{', '.join(list_backbones())}, hub:PRESET (a KerasHub "
            f"preset), or a path to a saved .keras model. Received: "
            f"backbone={name!r}"
        )
    return spec


def check_registered(name, weights, image_size):
    """The checks of building the registered base `name` that need no
    building: its name, its size (0: the spec's default) and ImageNet
    weights it lacks; for a list of candidates checked before any of
    them is measured. Returns (spec, size)."""
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
    return spec, size


def lookup_spec(name):
    """The spec registered under `name`, or None."""
    return _REGISTRY.get(_normalize(name))


def _normalize(name):
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _register_family(names, application_fmt, module, sizes, min_size,
                     preprocessing, block_pattern, block_rule="match",
                     **kwargs):
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
            module=module,
        ))


_register_family([("mobilenet_v2", "")], "MobileNetV2{}", "mobilenet_v2",
                 224, 32, "tf",
                 r"^(expanded_conv|block_\d+)_")
_register_family([("mobilenet_v3_small", "Small"),
                  ("mobilenet_v3_large", "Large")],
                 "MobileNetV3{}", "mobilenet_v3", 224, 32, "none",
                 r"^(expanded_conv(?:_\d+)?)_")
_EFFICIENTNET_SIZES = {"B0": 224, "B1": 240, "B2": 260, "B3": 300,
                       "B4": 380, "B5": 456, "B6": 528, "B7": 600, "S": 384,
                       "M": 480, "L": 480}
_register_family([(f"efficientnet_b{i}", f"B{i}") for i in range(8)],
                 "EfficientNet{}", "efficientnet", _EFFICIENTNET_SIZES, 32,
                 "none",
                 r"^(block\d+[a-z])_")
_register_family([(f"efficientnet_v2_{s.lower()}", s)
                  for s in ("B0", "B1", "B2", "B3", "S", "M", "L")],
                 "EfficientNetV2{}", "efficientnet_v2", _EFFICIENTNET_SIZES,
                 32, "none",
                 r"^(block\d+[a-z])_")
_register_family([(f"resnet{d}", str(d)) for d in (50, 101, 152)],
                 "ResNet{}", "resnet", 224, 32, "caffe",
                 r"^(conv\d_block\d+)_")
_register_family([(f"resnet{d}_v2", f"{d}V2") for d in (50, 101, 152)],
                 "ResNet{}", "resnet_v2", 224, 32, "tf",
                 r"^(conv\d_block\d+)_")
_register_family([(f"convnext_{s.lower()}", s)
                  for s in ("Tiny", "Small", "Base", "Large")],
                 "ConvNeXt{}", "convnext", 224, 32, "none",
                 r"(stage_\d+_block_\d+|downsampling_block_\d+)",
                 block_rule="search")
_register_family([(f"densenet{d}", str(d)) for d in (121, 169, 201)],
                 "DenseNet{}", "densenet", 224, 32, "torch",
                 r"^(conv\d_block\d+|pool\d)_")
_register_family([("xception", "")], "Xception{}", "xception", 299, 71,
                 "tf",
                 r"^(block\d+)_")
_register_family([("inception_v3", "")], "InceptionV3{}", "inception_v3",
                 299, 75, "tf",
                 r"^(mixed\d+)$", block_rule="end_marker")
# VGG: no BatchNorm, caffe preprocessing; the one genuinely pretrained base
# that installs offline is a VGG16 (see `models.hed`).
for _depth in (16, 19):
    _register_family([(f"vgg{_depth}", str(_depth))], "VGG{}",
                     f"vgg{_depth}", 224, 32, "caffe", r"^(block\d)_")
register_backbone(BackboneSpec(
    name="compact_cnn", application="", default_size=32, min_size=16,
    preprocessing="unit", block_pattern=r"^(block\d+)_"))
