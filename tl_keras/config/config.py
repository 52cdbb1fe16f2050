"""The whole run's configuration: six sections, one flat set of flags.

`Config` holds a `DataConfig`, `ModelConfig`, `TrainingConfig`,
`RuntimeConfig`, `ExportConfig` and `AdvisorConfig`; each library function
takes the section it needs (`make_datasets(config.data, ...)`). Field
names are unique across sections, so the command line, `flags.cfg` and
`config.json` stay flat, and so do `Config(epochs=3, ...)` and
`config.replace(epochs=3)`: each name goes to its section.
"""

import dataclasses
import os

from tl_keras import io
from tl_keras.config import sections as _sections
from tl_keras.config.fields import (
    MAX_CACHE_VIEWS,
    cache_views,
    check_data_dir,
    check_types,
    home_expanded,
    plain_numbers,
)
from tl_keras.config.reads import unread_fields
from tl_keras.errors import InputError, fail

SECTIONS = {"data": _sections.DataConfig, "model": _sections.ModelConfig,
            "training": _sections.TrainingConfig,
            "runtime": _sections.RuntimeConfig,
            "export": _sections.ExportConfig,
            "advisor": _sections.AdvisorConfig}

# Flat field name -> its section's name.
FIELD_SECTIONS = {f.name: section for section, cls in SECTIONS.items()
                  for f in dataclasses.fields(cls)}

# The order of the fields in config.json and flags.cfg: that of tl_keras
# 0.1's flat config (files written before and after sections line up),
# with fields added since next to their kin.
FLAT_ORDER = ("mode", "data_dir", "workdir", "backbone", "weights",
              "image_size", "feature_block", "approach", "epochs",
              "finetune_epochs", "learning_rate", "finetune_learning_rate",
              "unfreeze", "gradual_unfreeze", "optimizer", "weight_decay",
              "lr_schedule", "warmup_epochs", "lr_decay", "label_smoothing",
              "l2sp", "ema", "batch_size",
              "advisor_sample",
              "advisor_scratch_fraction", "backbones", "validation_split",
              "test_split", "seed", "augment", "dropout", "cache_budget_mb",
              "feature_cache", "distribution", "feature_cache_views",
              "jit_compile", "mixed_precision", "tensorboard",
              "demo_labels_per_class",
              "demo_pretrain_epochs", "export_dir", "inputs", "output",
              "top_k", "export_tflite", "overwrite")

# Fields of earlier versions that are gone, with why: named in the error
# for a flag or a Config field, and dropped from a stored config.json (a
# run resumes with the decision it stored).
REMOVED_FIELDS = dict.fromkeys(
    ("advisor_large_per_class", "advisor_similar_gain",
     "advisor_scratch_gain", "advisor_scratch_per_class",
     "advisor_earlier_margin", "advisor_reference_margin", "advisor_tie_se",
     "advisor_random_gain", "advisor_scratch_horizon"),
    "removed in tl_keras 0.2: the advisor has no thresholds to set; it "
    "estimates each approach's accuracy and picks the best (docs/advisor.md)")

# Fields that may change between a run and its resumption without changing
# what the run computes.
RESUMABLE_FIELDS = ("overwrite", "cache_budget_mb", "jit_compile",
                    "distribution", "mode", "backbones",
                    "export_dir", "inputs", "output", "top_k",
                    "export_tflite", "tensorboard")


# Modes that read a labelled folder (unless the data is passed in).
_DATA_MODES = ("train", "evaluate", "advise", "rank", "compare")


def _check_apart(data_dir, workdir):
    """Refuses a workdir that is the data folder or inside it: the run's
    files would become a class folder of the next scan, and --overwrite
    would move the images aside. (The data inside the workdir is allowed:
    the demo keeps its generated images there.)"""
    if io.inside(workdir, data_dir):
        fail("workdir", f"a folder outside --data_dir ({data_dir!r}): not "
             f"the data folder or inside it", workdir)


@dataclasses.dataclass(frozen=True, init=False)
class Config:
    """What to train, on what, how, and where to put it.

    Build it from flat field names (`Config(data_dir="images",
    workdir="runs/a", epochs=5)`), from sections (`Config(data=DataConfig(
    ...))`), or both; unnamed fields keep their defaults.
    """

    data: _sections.DataConfig
    model: _sections.ModelConfig
    training: _sections.TrainingConfig
    runtime: _sections.RuntimeConfig
    export: _sections.ExportConfig
    advisor: _sections.AdvisorConfig

    def __init__(self, data=None, model=None, training=None, runtime=None,
                 export=None, advisor=None, **fields):
        given = {"data": data, "model": model, "training": training,
                 "runtime": runtime, "export": export, "advisor": advisor}
        by_section = _route(fields)
        for name, cls in SECTIONS.items():
            section = given[name] if given[name] is not None else cls()
            if not isinstance(section, cls):
                fail(name, f"a {cls.__name__}", section)
            if by_section.get(name):
                section = dataclasses.replace(section, **by_section[name])
            object.__setattr__(self, name,
                               home_expanded(plain_numbers(section)))

    def validate(self, require_data_dir=True):
        """Checks every section, then what depends on several; returns
        self so calls can chain.

        Args:
          require_data_dir: False when the data comes another way (arrays
            passed to `train(config, data=...)`).

        Raises:
          InputError: naming the field, what is allowed and what was given.
        """
        for name in SECTIONS:
            check_types(getattr(self, name))
            getattr(self, name).validate()
        mode = self.runtime.mode
        needs_data = mode in _DATA_MODES and require_data_dir
        if needs_data and not self.data.data_dir:
            fail("data_dir", "a folder of class sub-folders", "")
        if not self.runtime.workdir and not (
                mode in ("predict", "evaluate") and self.export.export_dir):
            fail("workdir", "a folder path", "")
        if mode == "predict" and not self.export.inputs:
            fail("inputs", "image files, folders or globs", "")
        if mode == "rank" and "" in (
                b.strip() for b in self.advisor.backbones.split(",")):
            # An empty name ('a,,b', 'a,': a shell variable that was
            # empty) was dropped without a word.
            fail("backbones", "comma-separated backbone names or .keras "
                 "paths, none empty", self.advisor.backbones)
        if mode in ("rank", "export", "predict", "evaluate") and (
                self.model.feature_block):
            fail("feature_block", f"'' with --mode={mode} (it shapes the "
                 f"base a run trains; rank's candidates differ in blocks, "
                 f"and an export keeps the base it was trained with)",
                 self.model.feature_block)
        self._check_views()
        self._check_writable()
        if needs_data and self.runtime.workdir:
            _check_apart(self.data.data_dir, self.runtime.workdir)
        if needs_data:  # last: the one check that reads the disk
            check_data_dir(self.data.data_dir)
        return self

    def _check_writable(self):
        """Each path this mode writes can be written (`io.unwritable`),
        before any work: the workdir (and its lock beside it), an
        export's folder, predict's or evaluate's --output."""
        mode, workdir = self.runtime.mode, self.runtime.workdir
        paths = {"workdir": workdir if mode not in (
            "predict", "evaluate", "export") else ""}
        if mode == "export":
            paths["export_dir"] = self.export.export_dir or (
                workdir and os.path.join(workdir, "export"))
        if mode in ("predict", "evaluate"):
            paths["output"] = self.export.output
        for name, path in paths.items():
            problem = path and io.unwritable(path)
            if not problem and name == "workdir" and os.path.isdir(path):
                # A resumed run's own folder (made read-only since: it
                # took the lock, then failed writing config.json).
                problem = io.unwritable(os.path.join(path, "config.json"))
            if problem:
                raise InputError(
                    f"Invalid {name}: {problem}. Allowed: a path this "
                    f"process can write (missing parent folders are "
                    f"created). Received: {name}={path!r}")

    def _check_views(self):
        """A number of --feature_cache_views is refused where no cached
        view could be used (the cache off, no augmentation) or hold the
        labels (mixed pairs), and 1 (no augmented view). (A scratch run
        has no frozen stage either, but compare and auto train scratch
        beside the others under one config.)"""
        views, mixes = (cache_views(self.training.feature_cache_views),
                        self.data.label_mixes())
        if views in ("auto", 0):  # auto: views only where they apply
            return
        if not self.training.feature_cache:
            why = ("--feature_cache=false (the views are cached features; "
                   "with the cache off every epoch goes through the base)")
        elif not self.data.augmentations():
            why = ("--augment=none (without augmentation every view is the "
                   "same: the head trains on one cached pass)")
        elif mixes:
            why = (f"--augment={mixes[0]} (a cached view holds each image's "
                   "features with its own label; mixed pairs are drawn "
                   "again every epoch)")
        elif views == 1:
            fail("feature_cache_views", "0, auto or an integer in [2, "
                 f"{MAX_CACHE_VIEWS}] (the first view is the images as they "
                 "are: one view would train the head without augmentation)",
                 views)
        else:
            return
        fail("feature_cache_views", f"0 or auto with {why}", views)

    def replace(self, **fields):
        """Returns a copy with the named fields (flat names, or whole
        sections) changed; validated when used."""
        sections = {name: fields.pop(name) for name in SECTIONS
                    if name in fields}
        for name, section in sections.items():  # None would be defaults
            if section is None:
                fail(name, f"a {name} section to replace this one's", None)
        return Config(**{name: sections.get(name, getattr(self, name))
                         for name in SECTIONS}, **fields)

    def to_dict(self):
        """The flat {field: value} dict written to config.json."""
        flat = {}
        for name in SECTIONS:
            flat.update(dataclasses.asdict(getattr(self, name)))
        return {key: flat[key] for key in FLAT_ORDER}

    def to_flagfile(self):
        """Returns the config as absl flagfile text (one --flag per line).

        --overwrite is written false: it moved a workdir aside once, and a
        reused flags.cfg must not move one aside again, nor let changed
        settings pass the workdir check unnoticed."""
        lines = ["# Resolved flags of this run; reuse with --flagfile=. "
                 "(--overwrite is a one-time action: always false here.)"]
        for key, value in self.to_dict().items():
            if key == "overwrite":
                value = False
            if isinstance(value, bool):
                value = "true" if value else "false"
            lines.append(f"--{key}={value}")
        return "\n".join(lines) + "\n"


def config_fields():
    """Returns every field of every section (dataclasses.Field), in
    FLAT_ORDER: the flags `cli.py` defines."""
    fields = {f.name: f for cls in SECTIONS.values()
              for f in dataclasses.fields(cls)}
    return [fields[name] for name in FLAT_ORDER]


# Fields compared by what they mean, not how they are written (a flag's
# "2" is the API's 2), and what a config.json older than a field stands
# for when that is not today's default (before views, the head of an
# augmented run trained through the base every epoch: 0, not 'auto').
def _augment_names(value):
    """--augment as a set: the augmenter applies its layers in one fixed
    order whatever the flag's (`data.augment.build_augmenter`), so
    'zoom,flip' resumes a 'flip,zoom' run."""
    return (frozenset() if value in ("none", "") else
            frozenset(a.strip() for a in value.split(",")))


def _same_folder(path):
    """A path field's folder, however spelled ('runs/t/', './runs/t', its
    absolute path): the same run was refused as other settings."""
    return os.path.realpath(path) if path else path


def _weights_read(flat):
    """The weights a run with the settings `flat` builds its base with:
    a .keras base keeps the file's own under 'imagenet' and 'none' alike
    (a weights file given replaces them), so a run stored with one
    resumes under the other."""
    if flat["backbone"].endswith(".keras") and flat["weights"] in (
            "imagenet", "none"):
        return "own"
    return flat["weights"]


_NORMALISED = {"feature_cache_views": cache_views, "augment": _augment_names,
               "workdir": _same_folder, "data_dir": _same_folder}
_BEFORE_FIELD = {"feature_cache_views": 0}


def config_differences(stored, current):
    """Returns 'field: stored -> current' strings for result-changing fields.

    A field that `stored` (an older config.json) lacks counts as the
    value the run it describes had: its default then (`_BEFORE_FIELD`),
    else today's.
    """
    stored = with_defaults({**_BEFORE_FIELD, **without_removed(stored)})
    values = current.to_dict()
    approach = current.training.approach
    # Settings a train run does not read (a scratch or transfer run's
    # fine-tune stage, a fixed approach's advisor) were unread by the
    # stored run of the same approach too. A .keras base's weights are
    # compared as `_weights_read` reads them: 'none' against a stored file
    # is another base.
    unread = [k for k in unread_fields(current) if k != "weights" or (
        approach == "scratch")] if stored["approach"] == approach and (
        current.runtime.mode == "train") else ()
    diffs = []
    for key, value in values.items():
        if key in RESUMABLE_FIELDS or key in unread:
            continue
        if key == "data_dir" and value == "":
            # Arrays given in memory: their digest in data.json decides
            # (earlier runs on arrays recorded a data_dir they never read).
            continue
        same = _NORMALISED.get(key, lambda v: v)
        if (_weights_read(stored) != _weights_read(values)
                if key == "weights" else same(stored[key]) != same(value)):
            diffs.append(f"{key}: {stored[key]!r} -> {value!r}")
    return diffs


def without_removed(flat):
    """`flat` (a stored config dict) without the fields of earlier
    versions that are gone (`REMOVED_FIELDS`)."""
    return {k: v for k, v in flat.items() if k not in REMOVED_FIELDS}


def with_defaults(flat):
    """`flat` (a stored config dict) with every field it lacks at its
    default (fields added since it was written)."""
    return {**Config().to_dict(), **flat}


def _route(fields):
    """Groups flat field names by section; an unknown name is an error."""
    by_section = {}
    for key, value in fields.items():
        section = FIELD_SECTIONS.get(key)
        if key in REMOVED_FIELDS:
            raise InputError(
                f"Invalid config field {key!r}: {REMOVED_FIELDS[key]}. "
                f"Allowed: the fields `python run.py --help` lists. "
                f"Received: {key}={value!r}")
        if section is None:
            raise InputError(
                f"Unknown config field {key!r}. Allowed: "
                f"{', '.join(sorted(FIELD_SECTIONS))}. Received: "
                f"{key}={value!r}")
        by_section.setdefault(section, {})[key] = value
    return by_section
