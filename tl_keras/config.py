"""The run configuration: one frozen dataclass, validated, saved with the run.

Every field is also a command-line flag of the same name (`cli.py` defines
the flags from the field metadata below), so a config, a `flags.cfg` and a
command line are three spellings of one thing.
"""

import dataclasses
import json
import os

TRAINED_APPROACHES = ("scratch", "transfer", "finetune")  # what auto picks
APPROACHES = TRAINED_APPROACHES + ("auto",)
MODES = ("train", "demo", "export", "predict", "evaluate", "advise", "rank",
         "compare")
AUGMENTATIONS = ("flip", "rotation", "zoom")
JIT_CHOICES = ("auto", "true", "false")
DISTRIBUTIONS = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


class InputError(ValueError):
    """A user-controlled input is invalid; the message says which, what is
    allowed and what was received."""


def _field(default, help, choices=None):
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Config:
    """What to train, on what, how, and where to put it."""

    mode: str = _field(
        "train",
        "train: run one approach on --data_dir. demo: the bundled offline "
        "demo (pretrain on digits 0-4, then scratch vs transfer vs finetune "
        "on digits 5-9 with few labels). export: re-export --workdir's "
        "model to --export_dir. predict: score --inputs with an export. "
        "evaluate: score an export on the labelled folder --data_dir. "
        "advise: measure --data_dir with the base and write the decision "
        "--approach=auto would take, without training. rank: score the "
        "--backbones candidates on --data_dir and print them ranked. "
        "compare: run scratch, transfer and finetune (and the advisor's "
        "pick) on --data_dir; write report.md and export the best.",
        MODES,
    )
    data_dir: str = _field(
        "",
        "Folder with one sub-folder of images per class, or train/ val/ "
        "test/ folders that each hold the class sub-folders.",
    )
    workdir: str = _field(
        "", "Where the run writes everything; the same workdir resumes."
    )
    backbone: str = _field(
        "efficientnet_b0",
        "A registered backbone name (e.g. mobilenet_v3_large, "
        "efficientnet_v2_b0, resnet50) or a path to a saved .keras model.",
    )
    weights: str = _field(
        "imagenet",
        "imagenet | none | path to a .weights.h5 or .keras file for the "
        "backbone.",
    )
    image_size: int = _field(
        0, "Square input size in pixels; 0 = the backbone's default."
    )
    approach: str = _field(
        "finetune",
        "scratch: train everything from random init. transfer: frozen "
        "base, train a new head. finetune: transfer, then unfreeze blocks "
        "and train at --finetune_learning_rate. auto: measure the data "
        "with the frozen base and pick one (see <workdir>/decision.json).",
        APPROACHES,
    )
    epochs: int = _field(10, "Epochs of the head stage (or of scratch).")
    finetune_epochs: int = _field(10, "Epochs of the fine-tune stage.")
    learning_rate: float = _field(
        1e-3, "Adam learning rate of the head / scratch stage."
    )
    finetune_learning_rate: float = _field(
        1e-5, "Adam learning rate of the fine-tune stage (keep it tiny)."
    )
    unfreeze: str = _field(
        "all",
        "How much of the base the fine-tune stage trains, in whole blocks: "
        "'all' or a number N of top blocks. BatchNorm stays frozen.",
    )
    batch_size: int = _field(32, "Global batch size.")
    advisor_sample: int = _field(
        2000, "auto / advise / rank: training images sampled to measure.")
    advisor_large_per_class: int = _field(
        100, "auto: 'large' data from this many images per class (median).")
    advisor_similar_gain: float = _field(
        0.5,
        "auto: 'similar' domain when the frozen features' probe accuracy "
        "gain over chance, (acc - chance) / (1 - chance), is at least this.")
    advisor_scratch_gain: float = _field(
        0.1,
        "auto: with large, different data, train from scratch when the gain "
        "is below this (features near chance) ...")
    advisor_scratch_per_class: int = _field(
        1000, "... and there are at least this many images per class.")
    advisor_earlier_margin: float = _field(
        0.05,
        "auto: an earlier layer's gain above the last layer's by more than "
        "this marks the data as far from the pretraining domain.")
    advisor_reference_margin: float = _field(
        0.1,
        "auto: train from scratch when the pretrained features' gain beats "
        "the same architecture's random-init features' gain by less than "
        "this (the pretraining brings nothing to this data).")
    advisor_scratch_fraction: float = _field(
        0.2,
        "auto / advise / compare: a short from-scratch run on the sampled "
        "images, this fraction of --epochs long (rounded up; 0 skips it); "
        "train from scratch when it already matches the frozen features' "
        "linear probe on the validation set.")
    advisor_tie_se: float = _field(
        1.0,
        "auto: measured accuracies closer than this many standard errors "
        "(binomial with the Agresti-Coull adjustment, over the validation "
        "images they are measured on) are "
        "a tie: the scratch run matches the probe when below it by at most "
        "this many standard errors of their difference (the run only gets "
        "better with the full budget), and the features count as similar "
        "when their gain is below --advisor_similar_gain by at most this "
        "many standard errors of the gain (finetune keeps its stage only "
        "when it beats the head on validation); 0 = strict.")
    advisor_random_gain: float = _field(
        0.75,
        "auto: train from scratch when the same architecture with random "
        "weights already gains at least this on the data (its features' "
        "linear probe): the task is easy for the architecture itself. 1 "
        "turns it off.")
    advisor_scratch_horizon: float = _field(
        0.5,
        "auto: the scratch run also matches the probe when, at the rate it "
        "climbed over its second half, it reaches it within this many run "
        "lengths more (linear, so kept short; 0 = its best only).")
    backbones: str = _field(
        "", "rank: comma-separated candidate backbones (names or .keras).")
    validation_split: float = _field(
        0.15, "Fraction of each class held out for validation."
    )
    test_split: float = _field(
        0.15, "Fraction of each class held out for the final test."
    )
    seed: int = _field(42, "Seed of the split, shuffling and initialisation.")
    augment: str = _field(
        "flip,rotation,zoom",
        "Comma-separated training augmentations run in tf.data "
        "(flip, rotation, zoom), or 'none'.",
    )
    dropout: float = _field(0.2, "Dropout rate before the new head.")
    cache_budget_mb: int = _field(
        1024,
        "Decoded, resized images are cached in memory when they fit in "
        "this many MiB; otherwise they are decoded every epoch. Cached "
        "features beyond it spill to <workdir>/features/.",
    )
    feature_cache: bool = _field(
        True,
        "Train the head of a frozen base on pooled features computed once "
        "(much faster), when augmentation is off; the result is the same "
        "model as the full loop's.",
    )
    distribution: str = _field(
        "auto",
        "tf.distribute strategy. auto: multi_worker when TF_CONFIG is set, "
        "mirrored over several GPUs, else one_device. multi_worker reads "
        "TF_CONFIG (run the same command on every machine). --batch_size "
        "is global and must divide by the replica count.",
        DISTRIBUTIONS,
    )
    feature_cache_views: int = _field(
        0,
        "With augmentation on: cache this many augmented views of the "
        "training set for the head stage (epoch e trains on view e mod K); "
        "0 trains through the frozen base every epoch instead.",
    )
    jit_compile: str = _field(
        "auto",
        "XLA for the train step. auto: on with one GPU/TPU replica per "
        "process, off on CPU (where XLA is slower). true: force it (fails "
        "before training where XLA cannot run).",
        JIT_CHOICES,
    )
    mixed_precision: str = _field(
        "auto",
        "Keras dtype policy. auto: mixed_float16 on GPUs with tensor cores, "
        "mixed_bfloat16 on TPU, float32 on CPU. Logits and softmax stay "
        "float32; float16 uses dynamic loss scaling.",
        PRECISIONS,
    )
    demo_labels_per_class: int = _field(
        10, "Demo only: labelled training images per target class."
    )
    demo_pretrain_epochs: int = _field(
        8, "Demo only: epochs of pretraining the base on the source task."
    )
    export_dir: str = _field(
        "",
        "export / predict: the SavedModel folder; default <workdir>/export.",
    )
    inputs: str = _field(
        "",
        "predict: comma-separated image files, folders or glob patterns.",
    )
    output: str = _field(
        "", "predict: also write the predictions to this .csv or .json."
    )
    top_k: int = _field(3, "predict: how many classes to report per image.")
    export_tflite: bool = _field(
        False,
        "Also write <export>/model.tflite (float32 input at the model's "
        "size, built-in ops only).",
    )
    overwrite: bool = _field(
        False,
        "Start over in a workdir that holds a different run (the old one "
        "is moved aside to <workdir>.replaced-<time>, not deleted).",
    )

    def validate(self, require_data_dir=True):
        """Checks every field; returns self so calls can chain.

        Args:
          require_data_dir: False when the data comes another way (arrays
            passed to `train(config, data=...)`).

        Raises:
          ValueError: naming the field, what is allowed and what was given.
        """
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                _fail(f.name, " | ".join(choices), value)
        if (self.mode in ("train", "evaluate", "advise", "rank", "compare")
                and require_data_dir
                and not self.data_dir):
            _fail("data_dir", "a folder of class sub-folders", "")
        if not self.workdir and not (self.mode in ("predict", "evaluate")
                                     and self.export_dir):
            _fail("workdir", "a folder path", "")
        if self.mode == "predict" and not self.inputs:
            _fail("inputs", "image files, folders or globs", "")
        if self.output and not self.output.endswith((".csv", ".json")):
            _fail("output", "a path ending in .csv or .json", self.output)
        _check_range("top_k", self.top_k, 1, 1000)
        if not self.backbone:
            _fail("backbone", "a backbone name or a .keras path", "")
        _check_weights(self.weights)
        _check_range("image_size", self.image_size, 0, 4096)
        _check_range("epochs", self.epochs, 1, 100000)
        _check_range("finetune_epochs", self.finetune_epochs, 1, 100000)
        _check_range("batch_size", self.batch_size, 1, 1 << 20)
        _check_range("demo_labels_per_class", self.demo_labels_per_class,
                     1, 100)
        _check_range("demo_pretrain_epochs", self.demo_pretrain_epochs,
                     1, 1000)
        _check_range("cache_budget_mb", self.cache_budget_mb, 0, 1 << 30)
        _check_range("feature_cache_views", self.feature_cache_views, 0, 100)
        _check_range("advisor_sample", self.advisor_sample, 10, 1000000)
        _check_range("advisor_large_per_class", self.advisor_large_per_class,
                     1, 10**9)
        _check_range("advisor_scratch_per_class",
                     self.advisor_scratch_per_class, 1, 10**9)
        for name in ("advisor_similar_gain", "advisor_scratch_gain",
                     "advisor_earlier_margin", "advisor_reference_margin",
                     "advisor_scratch_fraction", "advisor_random_gain"):
            if not 0 <= getattr(self, name) <= 1:
                _fail(name, "a float in [0, 1]", getattr(self, name))
        if not 0 <= self.advisor_scratch_horizon <= 5:
            _fail("advisor_scratch_horizon", "a float in [0, 5]",
                  self.advisor_scratch_horizon)
        if not 0 <= self.advisor_tie_se <= 5:
            _fail("advisor_tie_se", "a float in [0, 5]",
                  self.advisor_tie_se)
        if self.mode == "rank" and not self.backbones:
            _fail("backbones", "comma-separated backbone names or .keras "
                  "paths", "")
        for name in ("learning_rate", "finetune_learning_rate"):
            value = getattr(self, name)
            if not 0 < value < 1:
                _fail(name, "a float in (0, 1)", value)
        if not 0 < self.validation_split < 1:
            _fail("validation_split", "a float in (0, 1)",
                  self.validation_split)
        if not 0 <= self.test_split < 1:
            _fail("test_split", "a float in [0, 1)", self.test_split)
        if self.validation_split + self.test_split >= 0.9:
            _fail("validation_split + test_split", "less than 0.9",
                  self.validation_split + self.test_split)
        if not 0 <= self.dropout < 1:
            _fail("dropout", "a float in [0, 1)", self.dropout)
        self.unfreeze_blocks()
        self.augmentations()
        return self

    def unfreeze_blocks(self):
        """Returns None for 'all', else the number of top blocks."""
        if self.unfreeze == "all":
            return None
        try:
            n = int(self.unfreeze)
        except ValueError:
            n = 0
        if n < 1:
            _fail("unfreeze", "'all' or a positive integer", self.unfreeze)
        return n

    def augmentations(self):
        """Returns the augmentation names as a tuple (empty for 'none')."""
        if self.augment in ("none", ""):
            return ()
        names = tuple(a.strip() for a in self.augment.split(","))
        for name in names:
            if name not in AUGMENTATIONS:
                _fail("augment",
                      "'none' or a comma-separated subset of "
                      + ", ".join(AUGMENTATIONS), self.augment)
        return names

    def replace(self, **changes):
        """Returns a copy with `changes` applied (validated when used)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_flagfile(self):
        """Returns the config as absl flagfile text (one --flag per line)."""
        lines = ["# Resolved flags of this run; reuse with --flagfile=."]
        for key, value in self.to_dict().items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            lines.append(f"--{key}={value}")
        return "\n".join(lines) + "\n"


# Fields that may change between a run and its resumption without changing
# what the run computes.
RESUMABLE_FIELDS = ("overwrite", "cache_budget_mb", "jit_compile",
                    "distribution", "mode", "backbones",
                    "export_dir", "inputs", "output", "top_k",
                    "export_tflite")


def config_differences(stored, current):
    """Returns 'field: stored -> current' strings for result-changing fields."""
    diffs = []
    for key, value in current.to_dict().items():
        if key in RESUMABLE_FIELDS:
            continue
        if key in stored and stored[key] != value:
            diffs.append(f"{key}: {stored[key]!r} -> {value!r}")
    return diffs


def load_config_json(path):
    """Reads a config.json written by a run; returns a plain dict."""
    with open(path) as f:
        return json.load(f)


def _fail(field, allowed, received):
    raise InputError(
        f"Invalid {field}. Allowed: {allowed}. Received: {field}={received!r}"
    )


def _check_range(name, value, low, high):
    if not isinstance(value, int) or not low <= value <= high:
        _fail(name, f"an integer in [{low}, {high}]", value)


def _check_weights(weights):
    if weights in ("imagenet", "none"):
        return
    if not weights.endswith((".weights.h5", ".keras")):
        _fail("weights", "imagenet | none | a .weights.h5 or .keras path",
              weights)
    if not os.path.isfile(weights):
        raise InputError(
            f"Invalid weights: no such file. Allowed: imagenet | none | an "
            f"existing .weights.h5 or .keras path. Received: "
            f"weights={weights!r}"
        )
