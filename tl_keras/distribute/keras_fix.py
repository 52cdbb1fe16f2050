"""Narrow fixes for Keras 3 under MultiWorkerMirroredStrategy.

Keras 3.15's `fit` fails under `MultiWorkerMirroredStrategy`
(keras-team/keras#20585); the patch is applied only while the installed
Keras still has the failing code. And Keras's weight loading creates
variables on every call (`prime_keras_saving`).
"""

import inspect
import logging

import keras
import tensorflow as tf

log = logging.getLogger("tl_keras")


def patch_keras_for_multi_worker():
    """Works around keras-team/keras#20585 where the installed Keras has it.

    Under MultiWorkerMirroredStrategy, Keras 3's TensorFlow trainer
    (1) reduces the first input batch with `strategy.reduce` only to learn
    its shapes, which fails on per-replica batches, and (2) reduces each
    step's scalar logs with `strategy.reduce("MEAN", v, axis=0)`, which
    fails on scalars. The patch takes the first replica's batch for (1)
    and reduces scalars with axis=None for (2). Both replacements act only
    in multi-worker mode and defer to Keras otherwise. Each is applied
    only if the installed Keras still contains the failing call, so a Keras
    that fixed the bug runs unpatched.
    """
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:  # a Keras layout this fix does not know
        return
    if getattr(tf_trainer, "_tl_keras_patched", False):
        return
    in_multi_worker = tf_trainer._collective_all_reduce_multi_worker
    reduce_source = inspect.getsource(tf_trainer.reduce_per_replica)
    build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    patched = []
    if 'strategy.reduce("MEAN", v, axis=0)' in reduce_source:
        keras_reduce = tf_trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if in_multi_worker(strategy) and reduction in ("auto", "mean"):
                return tf.nest.map_structure(
                    lambda v: strategy.reduce("MEAN", v, axis=None), values)
            return keras_reduce(values, strategy, reduction)

        tf_trainer.reduce_per_replica = reduce_per_replica
        patched.append("log reduction")
    if "distribute_strategy.reduce(" in inspect.getsource(build):

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            strategy = self.distribute_strategy
            if iterator is not None and in_multi_worker(strategy):
                for _, _, it in iterator:
                    batch = next(it)
                    break
                # Only the shapes matter here; one replica's batch has them.
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0],
                    batch)
                iterator = None
            return build(self, iterator=iterator, data_batch=data_batch)

        tf_trainer.TensorFlowTrainer._maybe_symbolic_build = (
            _maybe_symbolic_build)
        patched.append("symbolic build")
    tf_trainer._tl_keras_patched = True
    if patched:
        log.info("Keras %s: applied the multi-worker workaround for "
                 "keras-team/keras#20585 (%s)", keras.__version__,
                 ", ".join(patched))


def prime_keras_saving():
    """Makes Keras's weight saving and loading create no variables, so
    that a chief can load its resume state alone.

    Every save or load walks the model with reference objects built by
    `saving_lib.get_attr_skipset`, whose optimizer is an `Optimizer(1.0)`
    with two variables. The function means to build them once per
    process, but Keras 3.15 reads its cache under one key
    ("saving_attr_skiplist_") and writes it under another
    ("saving_attr_skipset_"), so every call builds them again. Under
    MultiWorkerMirroredStrategy creating a variable is a collective (the
    chief's initial value is broadcast): a chief that loads a backup
    while a worker does not waits in a collective the worker never starts
    (measured: "Collective instance 185 expected type 0 and data_type 2
    but got type 1 and data_type 9"). Here, outside the strategy's scope,
    each skip set is built once and stored under the key Keras reads.
    Applied only while the installed Keras has the mismatched keys; the
    cache is per thread, as Keras keeps it, and the fit loop's callbacks
    run on this thread.
    """
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving import saving_lib
        source = inspect.getsource(saving_lib.get_attr_skipset)
    except (ImportError, AttributeError, OSError):
        return
    read, written = "saving_attr_skiplist_", "saving_attr_skipset_"
    if read not in source or written not in source:
        return
    for obj_type in ("Operation", "Layer", "Functional", "Sequential",
                     "Metric", "Optimizer", "Loss"):
        global_state.set_global_attribute(
            read + obj_type, saving_lib.get_attr_skipset(obj_type))
    log.info("Keras %s: cached its saving skip sets (their cache key is "
             "misspelt), so that loading weights creates no variables",
             keras.__version__)
