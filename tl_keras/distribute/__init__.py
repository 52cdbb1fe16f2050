"""Where the step runs: strategy, cluster, XLA, precision."""

from tl_keras.distribute.cluster import Task, parse_tf_config
from tl_keras.distribute.compile_options import (
    resolve_jit_compile,
    resolve_precision,
)
from tl_keras.distribute.strategy import Placement, placement

__all__ = [
    "Placement",
    "Task",
    "parse_tf_config",
    "placement",
    "resolve_jit_compile",
    "resolve_precision",
]
