"""What every config field is made of: its choices, help text and checks.

The constants are the allowed values of the enum-like fields; `field`
attaches the help text (and choices) that `cli.py` turns into a flag; the
`check_*` functions are the checks that need more than a range.
"""

import dataclasses
import os

import numpy as np

from tl_keras.errors import InputError, fail

TRAINED_APPROACHES = ("scratch", "transfer", "finetune")  # what auto picks
APPROACHES = TRAINED_APPROACHES + ("auto",)
MODES = ("train", "demo", "export", "predict", "evaluate", "advise", "rank",
         "compare")
AUGMENTATIONS = ("flip", "rotation", "zoom", "randaugment", "mixup",
                 "cutmix")
# Augmentations that mix two images of a batch, and so their labels: the
# training labels become per-class weights summing to 1.
LABEL_MIXES = ("mixup", "cutmix")
# Options of the fine-tune stage, each with the value that leaves it off:
# the only value --approach=scratch or transfer allows.
FINETUNE_ONLY = {"lr_decay": 1.0, "l2sp": 0.0, "gradual_unfreeze": 0}
# The transfer-learning rule of thumb calls data large from about 100
# images per class (median over the classes); the advisor prints it, and
# --feature_cache_views=auto caches views from it.
LARGE_PER_CLASS = 100
# --feature_cache_views: at most MAX_CACHE_VIEWS; 'auto' caches
# AUTO_CACHE_VIEWS (the images as they are and one augmented draw) where
# views apply and the data is large: two passes of the base, the fewest
# that hold an augmented view, and the first also gives the head's
# statistics. On the recipe bench (bench/RESULTS.md) they were above the
# full loop at 100 images per class on held-out seeds (+4.0 points on the
# mean), at a third of its time. On 5-40 images per class they were +1.7
# and +1.6 on the mean of two held-out seed pairs, but 3.9 below the loop
# on the offline demo (5 per class); there the loop costs seconds, so it
# stays.
MAX_CACHE_VIEWS = 100
AUTO_CACHE_VIEWS = 2
JIT_CHOICES = ("auto", "true", "false")
DISTRIBUTIONS = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def field(default, help, choices=None):
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    return dataclasses.field(default=default, metadata=metadata)


_KINDS = {bool: "True or False", int: "an integer", float: "a number",
          str: "text (a str)"}


def plain_numbers(section):
    """The section with numpy scalars as Python numbers: Keras refuses a
    numpy learning rate or seed, and config.json would record
    np.float32(1e-3) as 0.0010000000474974513, so the same run given 1e-3
    would be refused as other settings. A numpy float becomes the shortest
    decimal that gives it back (str: '0.001'). A path field's
    pathlib.Path (any os.PathLike) becomes its text, as `build_backbone`
    and `load_model` take it (it was refused as not text)."""
    changes = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, np.floating):
            changes[f.name] = float(str(value))
        elif isinstance(value, np.generic):
            changes[f.name] = value.item()
        elif f.name in PATH_FIELDS and isinstance(value, os.PathLike):
            changes[f.name] = os.fspath(value)
    return dataclasses.replace(section, **changes) if changes else section


# Fields that hold paths (comma-separated in the second set), whose
# leading `~` is the home folder, as a shell expands it: from Python, in
# a flagfile and in `--name=~/x` (the shell expands only a word's leading
# `~`) alike; it made a folder named `~` in the current directory.
PATH_FIELDS = ("data_dir", "workdir", "export_dir", "output", "weights",
               "backbone")
PATH_LIST_FIELDS = ("inputs", "backbones")


def home_expanded(section):
    """The section with the leading `~` of its path fields expanded."""
    changes = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not isinstance(value, str) or "~" not in value:
            continue
        if f.name in PATH_FIELDS:
            changes[f.name] = os.path.expanduser(value)
        elif f.name in PATH_LIST_FIELDS:
            changes[f.name] = ",".join(
                os.path.expanduser(part.strip())
                if part.strip().startswith("~") else part
                for part in value.split(","))
    return dataclasses.replace(section, **changes) if changes else section


def check_types(section):
    """Raises InputError for a field whose value is not of its default's
    type: a flag is typed by absl, but `Config(learning_rate="0.1")` from
    Python would otherwise end in a TypeError deep in a check. Numpy
    numbers are taken, an int where a float is (not a bool: True is an
    int in Python);
    --feature_cache_views takes 'auto' or an int (`cache_views`)."""
    for f in dataclasses.fields(section):
        value, kind = getattr(section, f.name), type(f.default)
        if f.name == "feature_cache_views":
            continue
        # Python and numpy numbers (sweeps, pandas); not every
        # numbers.Real: a Fraction passed here, then failed config.json.
        if kind is float:
            ok = isinstance(value, (int, float, np.integer, np.floating))
        elif kind is int:
            ok = isinstance(value, (int, np.integer))
        else:
            ok = isinstance(value, kind)
        if not ok or (kind is not bool and isinstance(value, (
                bool, np.bool_))):
            fail(f.name, f"{_KINDS.get(kind, kind.__name__)}, not "
                 f"{type(value).__name__}", value)


def check_fields(section):
    """`check_types`, then InputError for text with spaces at either end
    (`--backbone=" compact_cnn"` trained, then its resumption without the
    space was refused as other settings) and for a value that is not one
    of its field's choices."""
    check_types(section)
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, str) and value != value.strip():
            fail(f.name, "text without spaces at either end", value)
    check_choices(section)


def check_choices(section):
    """Raises InputError for a field whose value is not one of its
    metadata's choices."""
    for f in dataclasses.fields(section):
        choices = f.metadata.get("choices")
        value = getattr(section, f.name)
        if choices and value not in choices:
            fail(f.name, " | ".join(choices), value)


def check_data_dir(data_dir):
    """Raises InputError unless `data_dir` is an existing folder."""
    if not data_dir or not os.path.isdir(data_dir):
        what = ("it is a file" if os.path.exists(data_dir or "") else
                "no such folder")
        raise InputError(
            f"Invalid data_dir: {what}. Allowed: a folder with one "
            f"sub-folder of images per class. Received: data_dir="
            f"{data_dir!r}")


def check_weights(weights):
    """Raises InputError unless `weights` is imagenet, none or an existing
    .weights.h5 / .keras file."""
    if weights in ("imagenet", "none"):
        return
    if not weights.endswith((".weights.h5", ".keras")):
        fail("weights", "imagenet | none | a .weights.h5 or .keras path",
             weights)
    if not os.path.isfile(weights):
        raise InputError(
            f"Invalid weights: no such file. Allowed: imagenet | none | an "
            f"existing .weights.h5 or .keras path. Received: "
            f"weights={weights!r}"
        )


def cache_views(views):
    """--feature_cache_views as 'auto' or the number of views (0 = the
    full loop): an int or its digits (a flag's value) are both taken;
    anything else raises InputError."""
    if views == "auto":
        return views
    n = -1  # a bool, a float or other text is refused
    if isinstance(views, int) and not isinstance(views, bool):
        n = views
    elif isinstance(views, str) and views.strip().isdecimal():
        n = int(views)
    if not 0 <= n <= MAX_CACHE_VIEWS:
        fail("feature_cache_views",
             f"auto or an integer in [0, {MAX_CACHE_VIEWS}]", views)
    return n
