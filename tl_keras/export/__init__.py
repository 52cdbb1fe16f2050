"""Serving: the SavedModel (and TFLite) export, and loading it back."""

from tl_keras.export.predictor import ExportedClassifier, load_exported
from tl_keras.export.saved_model import (
    SIGNATURES,
    build_manifest,
    export_saved_model,
)
from tl_keras.export.tflite import convert_to_tflite

__all__ = [
    "SIGNATURES",
    "ExportedClassifier",
    "build_manifest",
    "convert_to_tflite",
    "export_saved_model",
    "load_exported",
]
