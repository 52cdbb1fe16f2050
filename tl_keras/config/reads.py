"""Which settings each mode and approach reads.

A setting the run does not read is reported, not silently dropped (the
command line and `tl_keras.train` alike), and changing it does not make
a finished or interrupted run "a run with other settings".
"""

import dataclasses
import logging

# The fine-tune stage's own fields, unread by a scratch or transfer run.
FINETUNE_STAGE_FIELDS = ("finetune_epochs", "finetune_learning_rate",
                         "unfreeze")

# The advisor's fields: read by the modes that advise, and by a train run
# whose approach the advisor picks (--approach=auto).
ADVISOR_FIELDS = ("advisor_sample", "advisor_scratch_fraction")

# What rank does not read: it scores each base's last layer in one
# feature pass over unaugmented images; nothing is trained or cut.
RANK_UNREAD = ("epochs", "finetune_epochs", "learning_rate",
               "finetune_learning_rate", "unfreeze", "gradual_unfreeze",
               "optimizer", "weight_decay", "lr_schedule", "warmup_epochs",
               "lr_decay", "label_smoothing", "l2sp", "ema", "feature_cache",
               "feature_cache_views", "feature_block", "dropout", "augment",
               "advisor_scratch_fraction")

# Fields that only some modes read.
MODE_FIELDS = {"inputs": ("predict",), "top_k": ("predict",),
               "output": ("predict", "evaluate"),
               "export_dir": ("export", "predict", "evaluate"),
               "export_tflite": ("train", "compare", "demo", "export"),
               "backbones": ("rank",),
               "demo_labels_per_class": ("demo",),
               "demo_pretrain_epochs": ("demo",),
               # compare and demo train every approach, advise picks one.
               "approach": ("train",),
               "backbone": ("train", "advise", "compare"),
               "weights": ("train", "advise", "compare", "rank"),
               # The demo generates its images at its own size.
               "data_dir": ("train", "evaluate", "advise", "rank",
                            "compare"),
               "image_size": ("train", "advise", "rank", "compare"),
               # advise and rank measure in this process as it is.
               "distribution": ("train", "compare", "demo"),
               "jit_compile": ("train", "compare", "demo"),
               "mixed_precision": ("train", "compare", "demo"),
               "tensorboard": ("train", "compare", "demo")}

# What the modes that serve a finished run read; any other field set is
# reported (predict, evaluate and export take the base, the data settings
# and the recipe from the run, not from flags).
EXPORT_READS = {
    "predict": {"workdir", "export_dir", "inputs", "top_k", "output"},
    "evaluate": {"workdir", "export_dir", "data_dir", "output"},
    "export": {"workdir", "export_dir", "export_tflite"}}


def unread_fields(config):
    """The names of the fields that `config`'s mode (and, for a train
    run, its approach) does not read."""
    mode, approach = config.runtime.mode, config.training.approach
    unread = [name for name, modes in MODE_FIELDS.items()
              if mode not in modes]
    if mode == "train" and approach != "auto":
        unread += ADVISOR_FIELDS
    if mode == "train" and approach in ("scratch", "transfer"):
        unread += FINETUNE_STAGE_FIELDS
    if mode == "train" and approach == "scratch":
        # no frozen base to cache, nor views of it
        unread += ["feature_cache", "feature_cache_views"]
    unread += _unread_weights(config)
    if mode in ("predict", "evaluate") and config.export.export_dir:
        unread.append("workdir")  # it only names <workdir>/export
    if mode == "rank":
        unread += RANK_UNREAD
    if mode in EXPORT_READS:
        unread += [name for name in config.to_dict() if name not in
                   EXPORT_READS[mode] | {"mode", "overwrite"}]
    return list(dict.fromkeys(unread))


def _unread_weights(config):
    """["weights"] where the base is built without them: a scratch run
    (random init), a .keras base given weights=none, which keeps its own
    (none applies to registered bases; `has_pretrained_weights`). Both
    were said at INFO only."""
    mode, model = config.runtime.mode, config.model
    if mode == "train" and config.training.approach == "scratch":
        return ["weights"]
    own = model.backbone.endswith(".keras") and model.weights == "none"
    return ["weights"] if own and mode in ("train", "advise",
                                           "compare") else []


def warn_unread(config):
    """Logs each field set away from its default that `config`'s mode
    (or approach) does not read."""
    values, defaults = config.to_dict(), {}
    for name in ("data", "model", "training", "runtime", "export",
                 "advisor"):  # each section's defaults
        defaults.update(dataclasses.asdict(type(getattr(config, name))()))
    mode, approach = config.runtime.mode, config.training.approach
    # A scratch run's weights=none is what it does anyway.
    quiet = {"weights": "none"} if (mode, approach) == ("train",
                                                       "scratch") else {}
    for name in unread_fields(config):
        if values[name] not in (defaults[name], quiet.get(name)):
            logging.getLogger("tl_keras").warning(
                "--%s=%s is not used by --mode=%s%s.", name, values[name],
                mode, f" --approach={approach}" if mode == "train" else "")
