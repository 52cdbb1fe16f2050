"""The run configuration: sections, the whole `Config`, resume rules."""

from tl_keras.config.config import (
    FIELD_SECTIONS,
    RESUMABLE_FIELDS,
    SECTIONS,
    Config,
    config_differences,
    config_fields,
)
from tl_keras.config.fields import (
    APPROACHES,
    AUGMENTATIONS,
    FINETUNE_ONLY,
    MODES,
    TRAINED_APPROACHES,
)
from tl_keras.config.sections import (
    AdvisorConfig,
    DataConfig,
    ExportConfig,
    ModelConfig,
    RuntimeConfig,
    TrainingConfig,
)
from tl_keras.errors import InputError

__all__ = [
    "APPROACHES",
    "AUGMENTATIONS",
    "FIELD_SECTIONS",
    "FINETUNE_ONLY",
    "MODES",
    "RESUMABLE_FIELDS",
    "SECTIONS",
    "TRAINED_APPROACHES",
    "AdvisorConfig",
    "Config",
    "DataConfig",
    "ExportConfig",
    "InputError",
    "ModelConfig",
    "RuntimeConfig",
    "TrainingConfig",
    "config_differences",
    "config_fields",
]
