"""What `export_saved_model` and `convert_to_tflite` check before writing:
the model, the destination, the flags and the extra manifest fields.

Each bad argument is an InputError naming it, before anything is written;
a model whose outputs are softmax probabilities is taken (their logs are
its logits), one whose last layer applies a sigmoid is not (the export's
scores are a softmax over the classes).
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from tl_keras import io
from tl_keras.data.arrays import check_class_names
from tl_keras.errors import fail

# The manifest's own fields (`saved_model.build_manifest`): an extra field
# of the same name would replace them, so the manifest would describe
# another model than the one served.
MANIFEST_FIELDS = ("format", "num_classes", "class_names", "input",
                   "outputs", "versions", "tflite")

# The smallest probability whose log stands for a softmax model's logit
# (float32 underflows below it; log(0) would be -inf).
_TINY = 1e-30


def output_activation(model):
    """'sigmoid' when `model`'s last layer (looking into a nested model
    that ends it) applies a sigmoid, else None."""
    layer = model
    while isinstance(layer, keras.Model) and layer.layers:
        layer = layer.layers[-1]
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return "sigmoid" if name == "sigmoid" else None


def gives_probabilities(model):
    """Whether `model`'s outputs are softmax probabilities, by scoring two
    probe images (uniform noise in [0, 255]; not a black one, which a
    model dividing by an image's spread turns to NaN): every output in
    [0, 1] and every row summing to 1 (within 1e-3, or 2e-2 for 16-bit
    outputs: a bfloat16 softmax over 1,000 classes sums to 1 +- 2e-3). A
    last layer's name misses too many (`tf.nn.softmax` is 'softmax_v2';
    a float32 linear Activation after the softmax under mixed precision;
    a Lambda); logits do not pass on both images."""
    size = model.input_shape[1]
    probe = np.random.default_rng(0).uniform(
        0, 255, (2, size, size, 3)).astype("float32")
    try:
        out = model(probe, training=False)
    except Exception as e:  # noqa: BLE001 - whatever the model raises
        fail("model", "a model that scores a batch of images",
             f"{type(e).__name__}: {e}"[:300])
    wide = keras.backend.standardize_dtype(out.dtype) in ("float16",
                                                          "bfloat16")
    out = np.asarray(keras.ops.convert_to_numpy(
        keras.ops.cast(out, "float32")), np.float64)
    return bool(np.isfinite(out).all() and out.min() >= -1e-6
                and out.max() <= 1 + 1e-6 and np.allclose(
                    out.sum(-1), 1.0, atol=2e-2 if wide else 1e-3))


def logits_of(model):
    """`fn(outputs) -> logits` for `model`'s float32 outputs: the outputs
    themselves, or for a softmax model (`gives_probabilities`) their logs
    (softmax of them gives the probabilities back), so every endpoint's
    softmax is the model's own scores, not a softmax applied twice."""
    if not gives_probabilities(model):
        return lambda outputs: outputs
    return lambda outputs: tf.math.log(tf.maximum(outputs, _TINY))


def check_model(model):
    """The number of `model`'s outputs, if it is a built classifier of
    square RGB images of one size whose last layer gives logits or softmax
    probabilities."""
    try:
        shape, output = tuple(model.input_shape), model.output_shape
    except (AttributeError, ValueError, TypeError):  # not a built model
        fail("model", "a built Keras classifier (images in, a score per "
             "class out)", type(model).__name__)
    if not isinstance(output, tuple) or len(output) != 2:
        fail("model", "a classifier with one output, a score per class "
             "([batch, classes])", f"output shape {output}")
    if len(shape) != 4 or shape[3] != 3 or not isinstance(
            shape[1], int) or shape[1] != shape[2]:
        fail("model", "a classifier of square RGB images of one size "
             "(input [batch, size, size, 3]; the endpoints resize to it)",
             f"input shape {shape}")
    if output_activation(model) == "sigmoid":
        fail("model", "a classifier whose last layer gives logits or "
             "softmax probabilities (the export's scores are a softmax "
             "over the classes)", "a last layer with a sigmoid")
    return output[-1]


def check_class_names_of(model, class_names):
    """`class_names` as a list, if they name each output of the checked
    `model` once (2 names for 3 outputs wrote an export that failed when
    served)."""
    class_names = check_class_names(class_names)
    outputs = check_model(model)
    if len(class_names) != outputs:
        fail("class_names", f"{outputs} names, one per output of the "
             f"model", f"{len(class_names)} names")
    return class_names


def check_arguments(export_dir, manifest, **switches):
    """`export_dir` with a leading `~` expanded, if it is a folder path
    that does not hold the current directory (an export replaces its
    folder whole: '.' failed as "Device or resource busy" after the
    SavedModel was written), `manifest` is None or a dict of
    JSON-serialisable extra fields, and each of `switches` is a bool
    (overwrite='no' replaced an export)."""
    for name, value in switches.items():
        if not isinstance(value, bool):
            fail(name, "True or False", value)
    if not isinstance(export_dir, (str, os.PathLike)) or not os.fspath(
            export_dir).strip():
        fail("export_dir", "a folder path", export_dir)
    export_dir = os.path.expanduser(os.fspath(export_dir))
    if io.inside(".", export_dir):
        fail("export_dir", "a folder that does not hold the current "
             "directory (the export replaces the folder whole)", export_dir)
    # overwrite=True moved the run aside (`tl_keras.export_saved_model(
    # model, "runs/a")` for "runs/a/export"), runs and all.
    if is_workdir(export_dir) or run_under(export_dir):
        fail("export_dir", "a folder that is not a tl_keras run's workdir "
             "and holds none (the export replaces the folder whole)",
             export_dir)
    if manifest is None:
        return export_dir
    if not isinstance(manifest, dict):
        fail("manifest", "a dict of extra manifest.json fields",
             type(manifest).__name__)
    taken = sorted(set(manifest) & set(MANIFEST_FIELDS))
    if taken:
        fail("manifest", f"extra fields, not the export's own "
             f"({', '.join(MANIFEST_FIELDS)})", ", ".join(taken))
    try:
        json.dumps(manifest, default=io.jsonable)
    except (TypeError, ValueError) as e:
        fail("manifest", "JSON-serialisable values (numbers, strings, "
             "lists, dicts)", str(e))
    return export_dir


def run_under(target):
    """The first tl_keras workdir below `target` (links not followed),
    else None."""
    for folder, _, _ in os.walk(target):
        if folder != target and is_workdir(folder):
            return folder
    return None


def is_workdir(folder):
    """Whether `folder` is a tl_keras workdir whose folders tl_keras
    rewrites: a train run's (config.json with flags.cfg or run.json), a
    compare's (decision.json with its results.json or a run's folder) or
    the demo's (demo.json). An advise's decision.json or a rank's
    ranking.json alone marks none: they write only that record, into
    any folder (a project's own)."""
    def has(name):
        return os.path.exists(os.path.join(folder, name))

    return (has("config.json") and (has("flags.cfg") or has("run.json"))
            or has("demo.json") or has("decision.json") and any(map(has, (
                "results.json", "scratch", "transfer", "finetune", "auto"))))
