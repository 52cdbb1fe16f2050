"""The sections of a run's configuration, frozen dataclasses that validate
themselves. Every field is also a command-line flag of the same name
(`cli.py` defines the flags from the field metadata), so a config section,
a `flags.cfg` and a command line are spellings of one thing.
`config.Config` puts the sections together.
"""

import dataclasses
import re

from tl_keras.config.fields import (
    APPROACHES,
    AUGMENTATIONS,
    DISTRIBUTIONS,
    FINETUNE_ONLY,
    JIT_CHOICES,
    LABEL_MIXES,
    MODES,
    PRECISIONS,
    cache_views,
    check_fields,
    check_weights,
    field,
)
from tl_keras.errors import check_fraction, check_range, fail


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from; how they are split, batched, augmented."""

    data_dir: str = field(
        "",
        "Folder with one sub-folder of images per class, or train/ val/ "
        "test/ folders that each hold the class sub-folders.",
    )
    validation_split: float = field(
        0.15, "Fraction of each class held out for validation.")
    test_split: float = field(
        0.15, "Fraction of each class held out for the final test.")
    batch_size: int = field(32, "Global batch size.")
    seed: int = field(42, "Seed of the split, shuffling and initialisation.")
    augment: str = field(
        "flip,rotation,zoom",
        "Comma-separated training augmentations run in tf.data "
        "(flip, rotation, zoom, randaugment: Keras's RandAugment, 2 ops "
        "at magnitude 0.5; mixup: Keras's MixUp, alpha 0.2; cutmix: "
        "Keras's CutMix, at most one of the two), or 'none'.",
    )
    cache_budget_mb: int = field(
        1024,
        "Decoded, resized images are cached in memory when they fit in "
        "this many MiB; otherwise they are decoded every epoch. Cached "
        "features beyond it spill to <workdir>/features/ (and a transfer "
        "run's test features are not cached).",
    )

    def validate(self):
        """Checks this section; returns self. Raises InputError."""
        check_fields(self)
        check_range("batch_size", self.batch_size, 1, 1 << 20)
        check_range("seed", self.seed, 0, 2**31 - 1)  # Keras: < 2**32
        check_range("cache_budget_mb", self.cache_budget_mb, 0, 1 << 30)
        check_fraction("validation_split", self.validation_split,
                       open_low=True, open_high=True)
        check_fraction("test_split", self.test_split, open_high=True)
        if self.validation_split + self.test_split >= 0.9:
            fail("validation_split + test_split", "less than 0.9",
                 self.validation_split + self.test_split)
        self.augmentations()
        return self

    def augmentations(self):
        """Returns the augmentation names as a tuple (empty for 'none')."""
        if self.augment in ("none", ""):
            return ()
        names = tuple(a.strip() for a in self.augment.split(","))
        for name in names:  # a repeat is a typo, not a stronger one
            if name not in AUGMENTATIONS or names.count(name) > 1:
                fail("augment", "'none' or a comma-separated subset of "
                     + ", ".join(AUGMENTATIONS) + ", each once", self.augment)
        if len(self.label_mixes(names)) > 1:
            fail("augment", "at most one of " + ", ".join(LABEL_MIXES),
                 self.augment)
        return names

    def label_mixes(self, names=None):
        """The augmentations that mix labels (mixup or cutmix), a tuple."""
        names = self.augmentations() if names is None else names
        return tuple(n for n in names if n in LABEL_MIXES)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: which base, its weights and input size, the new head."""

    backbone: str = field(
        "efficientnet_b0",
        "A registered backbone name (e.g. mobilenet_v3_large, "
        "efficientnet_v2_b0, resnet50), hub:PRESET (a KerasHub preset name "
        "or local preset folder) or a path to a saved .keras model.",
    )
    weights: str = field(
        "imagenet",
        "imagenet | none | path to a .weights.h5 or .keras file for the "
        "backbone. A .keras backbone keeps its own weights unless a file is "
        "given; imagenet on a hub: backbone means the preset's weights.",
    )
    image_size: int = field(
        0, "Square input size in pixels; 0 = the backbone's default.")
    feature_block: str = field(
        "",
        "Cut the base after this block (e.g. block4 of vgg16; an unknown "
        "name lists the blocks) so the head trains on earlier, more generic "
        "features; '' = the whole base. Kept in model.keras and the export.")
    dropout: float = field(0.2, "Dropout rate before the new head.")

    def validate(self):
        """Checks this section; returns self. Raises InputError."""
        check_fields(self)
        if self.backbone.strip() in ("", "hub:"):
            fail("backbone", "a backbone name, hub:PRESET or a .keras path",
                 self.backbone)
        check_weights(self.weights)
        check_range("image_size", self.image_size, 0, 4096)
        check_fraction("dropout", self.dropout, open_high=True)
        return self


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """What trains, how long and how fast."""

    approach: str = field(
        "finetune",
        "scratch: train everything from random init. transfer: frozen "
        "base, train a new head. finetune: transfer, then unfreeze blocks "
        "and train at --finetune_learning_rate. auto: measure the data "
        "with the frozen base and pick one (see <workdir>/decision.json).",
        APPROACHES)
    epochs: int = field(10, "Epochs of the head stage (or of scratch).")
    finetune_epochs: int = field(10, "Epochs of the fine-tune stage.")
    learning_rate: float = field(
        1e-3, "Adam learning rate of the head / scratch stage.")
    finetune_learning_rate: float = field(
        1e-5, "Adam learning rate of the fine-tune stage (keep it tiny).")
    unfreeze: str = field(
        "all", "How much of the base the fine-tune stage trains, in whole "
        "blocks: 'all' or a number N of top blocks. BatchNorm stays frozen.")
    gradual_unfreeze: int = field(
        0, "Fine-tune stage: the top block trains first, one more block "
           "of --unfreeze's every this many epochs (ULMFiT); 0 = all at once.")
    optimizer: str = field(
        "adam",
        "adam, or adamw: Adam with decoupled --weight_decay (not on biases, "
        "BatchNorm / LayerNorm scales and offsets).", ("adam", "adamw"))
    weight_decay: float = field(
        0.0, "adamw: decoupled weight decay per step, times the LR.")
    lr_schedule: str = field(
        "constant",
        "Per stage: constant, or cosine decay to 0 over the stage (after "
        "any warmup).", ("constant", "cosine"))
    warmup_epochs: int = field(
        0, "Per stage: epochs of linear warmup to the stage's LR (from LR / "
           "warmup steps).")
    lr_decay: float = field(
        1.0,
        "Fine-tune stage: block k from the top trains at LR x lr_decay^k "
        "(layer-wise decay; the head and the top block at the full LR); "
        "1 = one LR for all.")
    label_smoothing: float = field(
        0.0, "Label smoothing of the cross-entropy loss, in [0, 1).")
    l2sp: float = field(
        0.0, "Fine-tune stage: L2-SP, a penalty l2sp/2 x ||w - w0||^2 "
             "pulling the unfrozen base weights w toward their pretrained "
             "values w0 (Li et al. 2018); 0 = off.")
    ema: float = field(
        0.0, "Exponential moving average of the trained weights, decay per "
        "step (e.g. 0.999, warmed up as tf.train.ExponentialMovingAverage "
        "does); validation, the best-epoch checkpoint, model.keras and the "
        "export use the averaged weights; 0 = off.")
    feature_cache: bool = field(
        True, "Train the head of a frozen base on pooled features computed "
        "once (much faster; the full loop's model), or with augmentation "
        "on cached views (--feature_cache_views).")
    feature_cache_views: str = field(
        "auto", "Augmentation on: the head of a frozen base trains on this "
        "many (K >= 2) cached views, the images as they are and K-1 augmented "
        "(epoch e on view e mod K); 0: the base every epoch. auto: 2 on large "
        "data (median 100+ per class) without mixup/cutmix, else 0.")

    def validate(self):
        """Checks this section; returns self. Raises InputError."""
        check_fields(self)
        check_range("epochs", self.epochs, 1, 100000)
        check_range("finetune_epochs", self.finetune_epochs, 1, 100000)
        for name in ("learning_rate", "finetune_learning_rate"):
            check_fraction(name, getattr(self, name), open_low=True,
                           open_high=True)
        cache_views(self.feature_cache_views)
        self.unfreeze_blocks()
        self._validate_recipe()
        return self

    def _validate_recipe(self):
        check_fraction("weight_decay", self.weight_decay, 0.0, 1.0)
        if bool(self.weight_decay) != (self.optimizer == "adamw"):
            fail("weight_decay", "above 0 with --optimizer=adamw (0 is "
                 "adam), else 0 (Adam's coupled L2 is not offered)",
                 f"{self.weight_decay} with optimizer={self.optimizer}")
        check_fraction("label_smoothing", self.label_smoothing, 0.0, 1.0,
                       open_high=True)
        check_fraction("lr_decay", self.lr_decay, 0.0, 1.0, open_low=True)
        check_fraction("l2sp", self.l2sp, 0.0, 10.0)
        check_fraction("ema", self.ema, 0.0, 1.0, open_high=True)
        check_range("gradual_unfreeze", self.gradual_unfreeze, 0,
                    max(0, self.finetune_epochs - 1))
        if self.gradual_unfreeze and self.unfreeze == "1":
            fail("gradual_unfreeze", "0 with --unfreeze=1 (one block: "
                 "nothing to unfreeze gradually)", self.gradual_unfreeze)
        for name, off in FINETUNE_ONLY.items():
            value = getattr(self, name)
            if value != off and self.approach in ("scratch", "transfer"):
                fail(name, f"{off:g} unless --approach=finetune or auto (it "
                     f"applies to the fine-tune stage's blocks)",
                     f"{value} with approach={self.approach}")
        both = self.approach in ("finetune", "auto")
        shortest = min(self.epochs, self.finetune_epochs if both else 99999)
        if not 0 <= self.warmup_epochs < max(1, shortest):
            fail("warmup_epochs", f"an integer in [0, {max(0, shortest - 1)}]"
                 f" (fewer than the shortest stage's --epochs={self.epochs}"
                 + (f", --finetune_epochs={self.finetune_epochs}" if both
                    else "") + ")", self.warmup_epochs)

    def unfreeze_blocks(self):
        """Returns None for 'all', else the number of top blocks."""
        if self.unfreeze == "all":
            return None
        if not re.fullmatch("[1-9][0-9]*", self.unfreeze):  # not 01, +1, 1_0
            fail("unfreeze", "'all' or a positive integer", self.unfreeze)
        return int(self.unfreeze)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """What to do, where to write it, and what it runs on."""

    mode: str = field(
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
    workdir: str = field(
        "", "Where the run writes everything; the same workdir resumes.")
    overwrite: bool = field(
        False,
        "Start over in a workdir that holds a different run (the old one "
        "is moved aside to <workdir>.replaced-<time>, not deleted).",
    )
    distribution: str = field(
        "auto",
        "tf.distribute strategy. auto: multi_worker when TF_CONFIG is set, "
        "mirrored over several GPUs, else one_device. multi_worker reads "
        "TF_CONFIG (run the same command on every machine). --batch_size "
        "is global and must divide by the replica count.",
        DISTRIBUTIONS,
    )
    jit_compile: str = field(
        "auto",
        "XLA for the train step. auto: on with one GPU/TPU replica per "
        "process, off on CPU (where XLA is slower). true: force it (fails "
        "before training where XLA cannot run).",
        JIT_CHOICES,
    )
    mixed_precision: str = field(
        "auto",
        "Keras dtype policy. auto: mixed_float16 on GPUs with tensor cores, "
        "mixed_bfloat16 on TPU, float32 on CPU. Logits and softmax stay "
        "float32; float16 uses dynamic loss scaling.",
        PRECISIONS,
    )
    tensorboard: bool = field(
        True, "Write TensorBoard events to <workdir>/logs/tensorboard/ "
        "(the chief's); --notensorboard skips them.")
    demo_labels_per_class: int = field(
        10, "Demo only: labelled training images per target class.")
    demo_pretrain_epochs: int = field(
        8, "Demo only: epochs of pretraining the base on the source task.")

    def validate(self):
        """Checks this section; returns self. Raises InputError."""
        check_fields(self)
        # Two: the advisor's measurements need two training images a class.
        check_range("demo_labels_per_class", self.demo_labels_per_class,
                    2, 100)
        check_range("demo_pretrain_epochs", self.demo_pretrain_epochs,
                    1, 1000)
        return self


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The SavedModel export; the predict / evaluate modes' files."""

    export_dir: str = field(
        "", "export / predict / evaluate: the SavedModel folder; default "
        "<workdir>/export.")
    export_tflite: bool = field(
        False, "Also write <export>/model.tflite (float32 input at the "
        "model's size, built-in ops only).")
    inputs: str = field(
        "", "predict: comma-separated image files, folders or glob patterns.")
    output: str = field(
        "", "predict / evaluate: also write the results to this .csv or "
        ".json (evaluate: .json).")
    top_k: int = field(3, "predict: how many classes to report per image.")

    def validate(self):
        """Checks this section; returns self. Raises InputError."""
        check_fields(self)
        if self.output and not self.output.endswith((".csv", ".json")):
            fail("output", "a path ending in .csv or .json", self.output)
        check_range("top_k", self.top_k, 1, 1000)
        return self


@dataclasses.dataclass(frozen=True)
class AdvisorConfig:
    """How auto, advise, rank and compare measure the data and decide."""

    advisor_sample: int = field(
        2000, "auto / advise / rank / compare: training images sampled to "
        "measure.")
    advisor_scratch_fraction: float = field(
        0.2,
        "auto / advise / compare: a short from-scratch run on the sampled "
        "images, this fraction of --epochs long (rounded up; at most 9% "
        "of a compare's training; 0 skips it and scratch is never "
        "chosen): scratch is chosen only when it beats the pretrained "
        "features' estimate by a standard error.")
    backbones: str = field(
        "", "rank: comma-separated candidate backbones (names, hub:PRESET "
        "or .keras).")

    def validate(self):
        """Checks this section; returns self. Raises InputError."""
        check_fields(self)
        check_range("advisor_sample", self.advisor_sample, 10, 1000000)
        check_fraction("advisor_scratch_fraction",
                       self.advisor_scratch_fraction)
        return self
