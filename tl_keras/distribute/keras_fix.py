"""A narrow fix for keras-team/keras#20585 (multi-worker `fit`).

Keras 3.15's `fit` fails under `MultiWorkerMirroredStrategy`; the patch is
applied only while the installed Keras still has the failing code.
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
