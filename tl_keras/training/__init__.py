"""Training: the trainer, its stages, checkpoints, the feature cache, the
workdir and what a run measures."""

from tl_keras.training.metrics import classification_metrics, evaluate
from tl_keras.training.stages import Stage, plan_stages
from tl_keras.training.trainer import train

__all__ = ["Stage", "classification_metrics", "evaluate", "plan_stages",
           "train"]
