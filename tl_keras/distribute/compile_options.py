"""XLA and mixed precision: resolved explicitly, never left to "auto".

Keras's own `jit_compile="auto"` silently turns XLA off under any
tf.distribute strategy, so tl_keras decides here and records what ran.
"""

import logging

import tensorflow as tf

from tl_keras.config.fields import JIT_CHOICES, PRECISIONS
from tl_keras.errors import InputError, fail

log = logging.getLogger("tl_keras")


def resolve_jit_compile(setting, strategy=None):
    """Turns the jit_compile setting into the bool passed to compile().

    'auto' means XLA on GPU/TPU with one replica per process and off
    otherwise: on CPU XLA was 2.4-14x slower here, and under
    MirroredStrategy on CPU devices it fails. 'true' is checked by
    compiling a step that reads a variable under the strategy (the failing
    case), so it fails before training rather than at its first step.

    Raises:
      InputError: jit_compile=true where XLA cannot compile the step, or
        a setting that is none of JIT_CHOICES (False turned XLA on).
    """
    if setting not in JIT_CHOICES:
        fail("jit_compile", " | ".join(JIT_CHOICES), setting)
    strategy = strategy or tf.distribute.get_strategy()
    if setting == "false":
        return False
    if setting == "auto":
        accelerator = bool(tf.config.list_logical_devices("GPU")
                           or isinstance(strategy, tf.distribute.TPUStrategy))
        return accelerator and len(_local_devices(strategy)) == 1
    try:
        _xla_probe(strategy)
    except (tf.errors.OpError, ValueError) as e:
        first = _error_summary(e)
        raise InputError(
            f"Invalid jit_compile: XLA cannot compile the train step under "
            f"{type(strategy).__name__} on "
            f"{', '.join(_local_devices(strategy))} ({first[:300]}). "
            f"Allowed: auto (XLA only where it runs and pays) or false. "
            f"Received: jit_compile='true'") from e
    return True


def _local_devices(strategy):
    """The devices this process's replicas run on."""
    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:  # TF's default strategy: one device
        gpus = tf.config.list_logical_devices("GPU")
        return [gpus[0].name if gpus else "/cpu:0"]


def _error_summary(error):
    """The informative line of a TensorFlow runtime error (its first lines
    are 'Graph execution error:' and a traceback header)."""
    lines = [line.strip() for line in str(error).splitlines()]
    useful = [line for line in lines if line and not line.startswith(
        ("Graph execution", "Detected at node", "File ", "[[", "Cf."))]
    return (useful or [type(error).__name__])[0]


def _xla_probe(strategy):
    with strategy.scope():
        variable = tf.Variable(1.0)

    @tf.function(jit_compile=True)
    def step(x):
        return variable * x

    @tf.function
    def run():
        return strategy.run(step, args=(tf.constant(2.0),))

    run()


def resolve_precision(setting):
    """Turns --mixed_precision into a Keras dtype policy name.

    'auto' is mixed_float16 on GPUs with tensor cores (compute capability
    7.0 or newer), mixed_bfloat16 on TPUs, float32 otherwise (CPUs gain
    nothing from 16-bit compute).

    Raises:
      InputError: a setting that is none of PRECISIONS.
    """
    if setting not in PRECISIONS:
        fail("mixed_precision", " | ".join(PRECISIONS), setting)
    if setting == "mixed_float16" and not tf.config.list_logical_devices(
            "GPU"):
        log.warning("--mixed_precision=mixed_float16 without a GPU: 16-bit "
                    "compute gains nothing here (auto picks float32).")
    if setting != "auto":
        return setting
    if tf.config.list_logical_devices("TPU"):
        return "mixed_bfloat16"
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get(
            "compute_capability", (0, 0))
        if capability >= (7, 0):
            return "mixed_float16"
    return "float32"
