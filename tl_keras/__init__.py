"""tl_keras: image classifiers by scratch training, transfer learning or
fine-tuning, with Keras 3 and TensorFlow.

    import tl_keras
    config = tl_keras.Config(data_dir="images/", workdir="runs/a",
                             backbone="efficientnet_v2_b0",
                             approach="finetune")
    metrics = tl_keras.train(config)
    # Or let the data decide (approach="auto"), or try all three:
    summary = tl_keras.compare(config.replace(workdir="runs/cmp"))

Importing tl_keras defines no absl flags; only `tl_keras.cli` does.
"""

__version__ = "0.1.0"

from tl_keras.advisor import advise, rank
from tl_keras.backbones import (
    Backbone,
    ImageNormalization,
    build_backbone,
    get_backbone_spec,
    list_backbones,
    list_blocks,
    register_backbone,
)
from tl_keras.compare import compare
from tl_keras.config import Config, InputError
from tl_keras.data import ImageData, from_arrays, make_datasets
from tl_keras.export import export_saved_model, load_exported
from tl_keras.train import train
from tl_keras.transfer import build_classifier, configure_stage

__all__ = [
    "Backbone",
    "Config",
    "ImageData",
    "ImageNormalization",
    "InputError",
    "advise",
    "build_backbone",
    "build_classifier",
    "compare",
    "configure_stage",
    "export_saved_model",
    "from_arrays",
    "get_backbone_spec",
    "list_backbones",
    "list_blocks",
    "load_exported",
    "make_datasets",
    "rank",
    "register_backbone",
    "train",
]
