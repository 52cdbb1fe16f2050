"""The network: backbone registry, tl_keras layers, the classifier, and
the recipe (optimizer, schedule, loss) a stage compiles with."""

from tl_keras.models.backbones import (
    BuiltBackbone,
    build_backbone,
    cut_at_block,
    list_blocks,
    load_model_file,
    reinitialized,
)
from tl_keras.models.backbones import load_model_file as load_model
from tl_keras.models.classifier import (
    all_layers,
    build_classifier,
    build_head,
    check_unfreeze,
    compile_for_stage,
    configure_stage,
    count_params,
    get_base,
)
from tl_keras.models.layers import (
    PREPROCESSING_MODES,
    Backbone,
    FeatureStandardization,
    ImageNormalization,
    TokenPooling,
)
from tl_keras.models.optimizers import (
    LabelAccuracy,
    ScaledAdam,
    SmoothedSparseCrossentropy,
)
from tl_keras.models.registry import (
    BackboneSpec,
    get_backbone_spec,
    list_backbones,
    register_backbone,
)

__all__ = [
    "PREPROCESSING_MODES",
    "LabelAccuracy",
    "ScaledAdam",
    "SmoothedSparseCrossentropy",
    "Backbone",
    "BackboneSpec",
    "BuiltBackbone",
    "FeatureStandardization",
    "ImageNormalization",
    "TokenPooling",
    "all_layers",
    "build_backbone",
    "build_classifier",
    "build_head",
    "cut_at_block",
    "check_unfreeze",
    "compile_for_stage",
    "configure_stage",
    "count_params",
    "get_backbone_spec",
    "get_base",
    "list_backbones",
    "list_blocks",
    "load_model",
    "load_model_file",
    "register_backbone",
    "reinitialized",
]
