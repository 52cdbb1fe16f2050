"""Checks on a base a user brings: a .keras model tl_keras cannot take as
it is, a weights file of another architecture, a cut with no weights,
and the blocks `--unfreeze` counts. Each is an `InputError` naming the
field, raised while the base is built (before the workdir is written).
"""

import logging
import os
import re
import tempfile

import h5py
import keras

from tl_keras.config.fields import check_weights
from tl_keras.errors import InputError, check_range, fail

log = logging.getLogger("tl_keras")


def check_block_pattern(base, spec):
    """Raises InputError when the registered `spec`'s block pattern names
    a block at none of the layers of `base`, built from it: the base was
    one block, 'all', and --unfreeze=1 fine-tuned the whole of it (said
    only at INFO)."""
    pattern = re.compile(spec.block_pattern)
    find = pattern.search if spec.block_rule == "search" else pattern.match
    names = [layer.name for layer in base.layers
             if not isinstance(layer, keras.layers.InputLayer)]
    if not any((m := find(name)) and m.group(1) for name in names):
        shown = names if len(names) <= 5 else [*names[:4], "...", names[-1]]
        fail("spec.block_pattern", f"a regular expression whose group 1 "
             f"names the blocks of {spec.name}'s layers (re.{find.__name__}"
             f" at each name, block_rule={spec.block_rule!r}), which are "
             f"{', '.join(shown)}", spec.block_pattern)


def check_model_file(model, path):
    """Refuses a Keras model (not a tl_keras classifier) that cannot be
    cut into a base: a subclassed model (its layers were never called on
    symbolic inputs: an AttributeError), or one with several inputs or
    outputs (the last spatial layer was taken, which for two outputs
    could be a side branch: the main path was dropped without a word)."""
    try:
        inputs, outputs = model.inputs, model.outputs
    except AttributeError:
        inputs = outputs = None
    if inputs is None or outputs is None:
        _refuse(path, f"it is a subclassed model ({type(model).__name__}), "
                "whose layers were never called on symbolic inputs, so "
                "there is no graph to cut at its features",
                "a Functional or Sequential model")
    if len(outputs) != 1:
        _refuse(path, f"the model has {len(outputs)} outputs (one branch "
                "would be taken and the others dropped)",
                "a model with one output")
    if len(inputs) != 1:
        _refuse(path, f"the model has {len(inputs)} inputs",
                "a model with one image input")


def input_side(base, path):
    """The side of the square input `base` fixes; None when it takes any
    size. Refuses an input that is not (height, width, 3) and a fixed one
    that is not square (Keras failed on either once training started)."""
    shape = tuple(base.input_shape)
    if len(shape) != 4 or shape[-1] != 3:
        dims = " x ".join("None" if d is None else str(d) for d in shape[1:])
        what = (f"{shape[-1]} channel{'s' if shape[-1] != 1 else ''}"
                if len(shape) == 4 else f"rank {len(shape)}")
        _refuse(path, f"its input is {dims} ({what}); tl_keras feeds RGB "
                "images", "a model whose input is (height, width, 3)")
    sides = {side for side in shape[1:3] if side is not None}
    if len(sides) > 1:
        _refuse(path, f"its input is {shape[1]} x {shape[2]} pixels; "
                "tl_keras feeds square images (--image_size)",
                "a square input (height = width) or one of any size")
    return sides.pop() if sides else None


def check_free_size(base, path, image_size):
    """The size a `.keras` base that takes any size (None x None) runs at:
    `image_size`, else 224 (said in the log).

    Raises:
      InputError naming `image_size`: one the base cannot take (its
        strides and valid paddings leave nothing); Keras failed when the
        classifier was built, after the workdir was written.
    """
    size = image_size or 224
    if not image_size:
        log.info("Taking image size 224 for %s: its input is None x None "
                 "(the base does not fix one); --image_size sets another.",
                 path)
    try:
        base.compute_output_shape((1, size, size, 3))
    except ValueError as e:
        detail = " ".join(str(e).split())[:200]
        raise InputError(
            f"Invalid image_size for backbone {path!r}: it cannot take "
            f"{size} px ({detail}). Allowed: a larger image_size. "
            f"Received: image_size={image_size}") from None
    return size


def _refuse(path, problem, allowed):
    raise InputError(
        f"Invalid backbone {path!r}: {problem}. Allowed: {allowed}. "
        f"Received: backbone={path!r}")


def holds_tuned_weights(layers):
    """Whether a fine-tune trains any weight of `layers` (nested layers
    included): a trainable variable of a layer other than
    BatchNormalization, which every fine-tune keeps frozen. Read from the
    variables Keras made trainable, whatever `trainable` says now."""
    return any(
        sub._trainable_variables  # as made: freezing does not change it
        for layer in layers for sub in layer._flatten_layers()
        if not isinstance(sub, keras.layers.BatchNormalization))


def tuned_blocks(blocks):
    """The blocks (of `list_blocks`) a fine-tune trains weights of, bottom
    to top: those `--unfreeze` counts. A block of only BatchNorm and
    activations (densenet121's and resnet50_v2's 'top') is not one."""
    return [block for block in blocks if holds_tuned_weights(block[1])]


def check_cut_holds_weights(blocks, block, source):
    """Refuses a cut after `block` that holds no weights: the head would
    train on the pixels (e.g. a user base's 'stem' of a Rescaling layer)."""
    names = [name for name, _ in blocks]
    weighted = [name for name, _ in tuned_blocks(blocks)]
    if weighted and names.index(block) >= names.index(weighted[0]):
        return
    first = names.index(weighted[0]) if weighted else len(names)
    raise InputError(
        f"Invalid feature_block for backbone {source}: the base cut after "
        f"{block!r} holds no weights (only layers such as rescaling, "
        f"pooling, BatchNorm or activations), so the head would train on "
        f"the pixels. Allowed: one of {', '.join(names[first:]) or 'none'}"
        f" (the blocks from the first with weights). Received: "
        f"feature_block={block!r}")


def check_weights_file_used(base, path, name):
    """Says which variables of a .weights.h5 file `base` did not take:
    Keras loads the layers whose paths match and ignores the file's other
    entries without a word (a BatchNorm model's weights into a plain one
    loaded; so does a whole classifier's into its base, whose head is
    rightly left). Compared with the paths `base` itself writes; the
    file's optimizer state (a compiled model's save_weights) is not a
    weight."""
    if not (path.endswith(".weights.h5") and os.path.isfile(path)):
        return
    with tempfile.TemporaryDirectory() as folder:
        own = os.path.join(folder, "base.weights.h5")
        base.save_weights(own)
        taken = _layer_variables(own)
    left = sorted(set(_layer_variables(path)) - set(taken))
    if left:
        groups = sorted({key.rsplit("/vars/", 1)[0] for key in left})
        log.warning(
            "--weights=%s: %d variable(s) of the file are not in backbone "
            "%s and were not loaded (%s%s). Right for a classifier's head "
            "left out; if the file is of another architecture, the base "
            "is not the model its weights came from.", path, len(left),
            name, ", ".join(groups[:5]), " ..." if len(groups) > 5 else "")


def _layer_variables(path):
    """The dataset paths under layers/ of a Keras .weights.h5 file."""
    keys = []
    with h5py.File(path, "r") as f:
        if "layers" in f:
            f["layers"].visititems(lambda key, item: keys.append(key) if (
                isinstance(item, h5py.Dataset)) else None)
    return keys


def check_build_args(name, weights, image_size, feature_block):
    """`build_backbone`'s name, weights and image_size as it reads them (a
    path object as its text; weights=None, Keras's word for random init,
    as 'none'; a numpy integer size as a plain int, as Config keeps it),
    each argument checked as Config checks its field: an AttributeError
    or TypeError from deep inside named none (weights=None,
    image_size='32', a pathlib.Path name)."""
    name = os.fspath(name) if isinstance(name, os.PathLike) else name
    if not isinstance(name, str) or not name.strip():
        fail("backbone", "a registered name, hub:PRESET or a .keras path",
             name)
    weights = "none" if weights is None else (
        os.fspath(weights) if isinstance(weights, os.PathLike) else weights)
    if not isinstance(weights, str):
        fail("weights", "imagenet | none | a .weights.h5 or .keras path",
             weights)
    check_weights(weights)
    check_range("image_size", image_size, 0, 4096)
    if not isinstance(feature_block, str):
        fail("feature_block", "a block name (list_blocks) or ''",
             feature_block)
    return name, weights, int(image_size)
