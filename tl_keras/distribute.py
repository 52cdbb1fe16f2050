"""Where the step runs: tf.distribute strategy and the XLA switch."""

import logging

import tensorflow as tf

log = logging.getLogger("tl_keras")


def get_strategy():
    """MirroredStrategy over all local GPUs when there are several, else
    the default (single-device) strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def resolve_jit_compile(setting):
    """Turns the jit_compile setting into the bool passed to compile().

    'auto' means XLA on GPU and off on CPU: measured here, XLA on CPU was
    2.4-14x slower, and Keras's own 'auto' silently disables it under any
    tf.distribute strategy (see DESIGN.md). The choice is explicit so the
    run can report which path actually ran.
    """
    if setting == "true":
        return True
    if setting == "false":
        return False
    return bool(tf.config.list_logical_devices("GPU"))


def describe(strategy, jit_compile):
    """A small dict for metrics.json: what hardware path the run used."""
    return {
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "gpus": len(tf.config.list_logical_devices("GPU")),
        "jit_compile": jit_compile,
    }
