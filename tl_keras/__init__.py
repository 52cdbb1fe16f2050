"""tl_keras: image classifiers by scratch training, transfer learning or
fine-tuning, with Keras 3 and TensorFlow.

    import tl_keras
    config = tl_keras.Config(data_dir="images/", workdir="runs/a",
                             backbone="efficientnet_v2_b0",
                             approach="finetune")
    metrics = tl_keras.train(config)
    # Or let the data decide (approach="auto"), or try all three:
    summary = tl_keras.compare(config.replace(workdir="runs/cmp"))

Importing tl_keras defines no absl flags (only `tl_keras.cli` does) and
loads no TensorFlow: each name below is imported from its module on first
use, so `python run.py --help` answers at Python's start-up speed.

A saved `model.keras` holds tl_keras's layers (and, with some recipe
options, its optimizer and loss); Keras finds them once `tl_keras.models`
is imported, which happens on first use of any name below, and at once
when Keras was imported before tl_keras (as in `import keras` then
`import tl_keras`). A classifier on a KerasHub backbone also needs
keras_hub's layers: `tl_keras.load_model(path)` imports what the file
holds, then loads it with keras.saving.load_model.
"""

import importlib
import sys

from tl_keras.version import __version__ as __version__

# Public name -> the module that defines it.
_EXPORTS = {
    "AdvisorConfig": "tl_keras.config",
    "Backbone": "tl_keras.models",
    "BackboneSpec": "tl_keras.models",
    "Config": "tl_keras.config",
    "DataConfig": "tl_keras.config",
    "ExportConfig": "tl_keras.config",
    "ImageData": "tl_keras.data",
    "FeatureStandardization": "tl_keras.models",
    "ImageNormalization": "tl_keras.models",
    "InputError": "tl_keras.errors",
    "ModelConfig": "tl_keras.config",
    "RuntimeConfig": "tl_keras.config",
    "TrainingConfig": "tl_keras.config",
    "advise": "tl_keras.advisor",
    "build_backbone": "tl_keras.models",
    "build_classifier": "tl_keras.models",
    "compare": "tl_keras.modes.compare",
    "configure_stage": "tl_keras.models",
    "export_saved_model": "tl_keras.export",
    "from_arrays": "tl_keras.data",
    "get_backbone_spec": "tl_keras.models",
    "list_backbones": "tl_keras.models",
    "list_blocks": "tl_keras.models",
    "load_exported": "tl_keras.export",
    "load_model": "tl_keras.models",
    "make_datasets": "tl_keras.data",
    "rank": "tl_keras.advisor",
    "register_backbone": "tl_keras.models",
    "train": "tl_keras.training",
}

__all__ = sorted(_EXPORTS)


if "keras" in sys.modules:  # cheap now: register the layers for Keras
    importlib.import_module("tl_keras.models.layers")
    importlib.import_module("tl_keras.models.optimizers")


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tl_keras' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
