"""Where the step runs: the tf.distribute strategy, XLA and precision.

`placement(runtime, batch_size)` turns `--distribution`, `--jit_compile`
and `--mixed_precision` into a `Placement`: the strategy every variable is
created under, whether the train step is XLA-compiled, the Keras dtype
policy, and which task of a multi-worker cluster this process is. Each
choice is explicit and recorded in metrics.json, so a run reports the path
that actually ran.
"""

import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from tl_keras.distribute.cluster import Task, parse_tf_config
from tl_keras.distribute.compile_options import (
    resolve_jit_compile,
    resolve_precision,
)
from tl_keras.distribute.keras_fix import (
    patch_keras_for_multi_worker,
    prime_keras_saving,
)
from tl_keras.errors import InputError

log = logging.getLogger("tl_keras")

_STRATEGIES = {}  # one strategy per kind and process (MWMS allows only one)
# The placement lines said in this process: a compare or the demo places
# each of its runs the same way, and said so once per run.
_SAID = set()


@dataclasses.dataclass(frozen=True)
class Placement:
    """What a run executes on; see `placement()`."""

    kind: str
    strategy: tf.distribute.Strategy
    jit_compile: bool
    precision: str
    task: Task

    @property
    def replicas(self):
        return self.strategy.num_replicas_in_sync

    def describe(self, batch_size):
        """A dict for metrics.json: the hardware path the run used."""
        return {
            "distribution": self.kind,
            "strategy": type(self.strategy).__name__,
            "replicas": self.replicas,
            "workers": self.task.num_workers,
            "global_batch_size": batch_size,
            "per_replica_batch_size": batch_size // self.replicas,
            "gpus": len(tf.config.list_logical_devices("GPU")),
            "jit_compile": self.jit_compile,
            "mixed_precision": self.precision,
        }

    def from_chief(self, values):
        """The chief's `values` (small non-negative ints) on every process.

        In a multi-worker run only the chief decides what is trained (e.g.
        --approach=auto, whose measurements can differ between processes:
        a short training run on CPU is not bit-reproducible), and every
        worker must train the same thing, or their collectives would not
        match. One all-reduce in which only the chief's replicas contribute
        (each a share of the values); other processes' `values` are
        ignored. A single process gets its `values` back.
        """
        if self.task.num_workers <= 1:
            return [int(v) for v in values]
        local = self.replicas // self.task.num_workers
        share = tf.constant([float(v) / local if self.task.is_chief else 0.0
                             for v in values], tf.float64)

        @tf.function
        def all_reduce():
            per_replica = self.strategy.run(lambda: tf.identity(share))
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM,
                                        per_replica, axis=None)

        try:
            agreed = all_reduce().numpy()
        except tf.errors.OpError as e:  # a peer stopped before agreeing
            raise InputError(
                f"Invalid run: another process of the cluster stopped "
                f"before it agreed on the run (its log says why: e.g. its "
                f"workdir is locked or refused), so {self.task.name} stops "
                f"too. Allowed: what that process's error asks for. "
                f"Received: {type(e).__name__} from the collective") from None
        return [int(round(float(v))) for v in agreed]

    def sync_from_chief(self, variables):
        """Sets `variables` on every process to the chief's values: one
        all-reduce of them all (as float64, exact for float32 weights and
        integer counters), in which only the chief's replicas contribute.

        Resume state is read from files, and each worker has its own: a
        worker killed one epoch before the chief, or whose folder was
        lost, would otherwise go on from other weights than the chief's,
        and MultiWorkerMirroredStrategy would keep the copies apart
        silently (every copy applies the same all-reduced gradients). A
        single process does nothing."""
        if self.task.num_workers <= 1 or not variables:
            return
        local = self.replicas // self.task.num_workers
        flat = tf.concat([tf.reshape(tf.cast(v, tf.float64), [-1])
                          for v in variables], 0)
        share = flat / local if self.task.is_chief else tf.zeros_like(flat)

        @tf.function
        def all_reduce(x):  # an argument: no weights baked into the graph
            per_replica = self.strategy.run(tf.identity, args=(x,))
            return self.strategy.reduce(tf.distribute.ReduceOp.SUM,
                                        per_replica, axis=None)

        values, start = all_reduce(share), 0
        for v in variables:
            size = int(np.prod(v.shape))
            value = tf.reshape(values[start:start + size], v.shape)
            dtype = tf.as_dtype(v.dtype)  # Keras variables: a string
            if dtype.is_integer:  # e.g. the optimizer's step counter
                value = tf.round(value)
            v.assign(tf.cast(value, dtype))
            start += size

    def policy_scope(self):
        """A context with this run's Keras dtype policy as the global one
        (restored afterwards: the policy is process-wide state)."""
        return _PolicyScope(self.precision)


def placement(runtime, batch_size):
    """Resolves the run's distribution, XLA and precision settings.

    Args:
      runtime: the config's `RuntimeConfig`.
      batch_size: the global batch size (it must split evenly).

    Raises:
      InputError: a malformed TF_CONFIG, a strategy this machine cannot
        run, a batch size not divisible by the replicas, or
        jit_compile=true where XLA cannot compile the step.
    """
    kind, task = _resolve_kind(runtime.distribution)
    strategy = _strategy(kind)
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise InputError(
            f"Invalid batch_size: it is global and split across {replicas} "
            f"replicas ({kind}), so it must be divisible by {replicas}. "
            f"Allowed: a multiple of {replicas}. Received: "
            f"batch_size={batch_size}")
    jit = resolve_jit_compile(runtime.jit_compile, strategy)
    precision = resolve_precision(runtime.mixed_precision)
    workers = (f", {task.name} of {task.num_workers} workers"
               if task.num_workers > 1 else "")
    line = (f"Distribution {kind} ({type(strategy).__name__}, {replicas} "
            f"replica(s){workers}); XLA {'on' if jit else 'off'}; "
            f"precision {precision}")
    (log.debug if line in _SAID else log.info)("%s", line)
    _SAID.add(line)
    return Placement(kind, strategy, jit, precision, task)


def check_one_process(runtime, batch_size=None):
    """Refuses a multi-worker cluster for a mode that runs in one process
    (compare, the demo, advise, rank): every worker would measure, train
    and write the same records. Each of compare's runs is a train run,
    which does run on several workers. With `batch_size` (compare and the
    demo, which train), the rest of `placement`'s checks too, before the
    mode writes anything (a bad --distribution failed after the demo's
    images or compare's decision.json were written)."""
    task = _resolve_kind(runtime.distribution)[1]
    if task.num_workers > 1:
        raise InputError(
            f"Invalid distribution: --mode={runtime.mode} runs in one "
            f"process. Allowed: one process (compare's runs are train runs: "
            f"run those with multi_worker). Received: distribution="
            f"{runtime.distribution} ({task.name} of {task.num_workers} "
            f"workers)")
    if batch_size is not None:
        placement(runtime, batch_size)


def _resolve_kind(setting):
    """Returns (kind, Task); 'auto' becomes one of the concrete kinds."""
    tf_config = os.environ.get("TF_CONFIG", "")
    if setting == "multi_worker" or (setting == "auto" and tf_config):
        task = parse_tf_config(tf_config, setting)
        if task.num_workers > 1 or setting == "multi_worker":
            return "multi_worker", task
    if setting == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return ("mirrored" if len(gpus) > 1 else "one_device"), Task()
    if tf_config:  # a worker of a cluster trained alone, into its folder
        log.warning("TF_CONFIG is set but --distribution=%s runs this "
                    "process alone and ignores it (multi_worker or auto "
                    "reads it).", setting)
    return setting, Task()


def _strategy(kind):
    if kind in _STRATEGIES:
        return _STRATEGIES[kind]
    if kind == "one_device":
        # TensorFlow's default strategy: one device (the first GPU when
        # there is one), and no dataset distribution (OneDeviceStrategy
        # would pass every pipeline through the auto-shard rewrite, which
        # warns about each assert_cardinality for nothing).
        strategy = tf.distribute.get_strategy()
    elif kind == "mirrored":
        # All GPUs; without GPUs, the CPU's logical devices (one unless
        # tf.config.set_logical_device_configuration split it).
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            log.warning("--distribution=mirrored found no GPU: it mirrors "
                        "over %d CPU device(s).", len(devices))
        strategy = tf.distribute.MirroredStrategy(devices)
    elif kind == "multi_worker":
        patch_keras_for_multi_worker()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        prime_keras_saving()  # after: collectives configure at start-up
    elif kind == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as e:
            raise InputError(
                f"Invalid distribution: no TPU is reachable from this "
                f"machine ({str(e).splitlines()[0]}). Allowed: auto, "
                f"one_device, mirrored, multi_worker. Received: "
                f"distribution='tpu'") from e
        strategy = tf.distribute.TPUStrategy(resolver)
    else:
        raise InputError(
            "Invalid distribution. Allowed: auto | one_device | mirrored | "
            f"multi_worker | tpu. Received: distribution={kind!r}")
    _STRATEGIES[kind] = strategy
    return strategy


class _PolicyScope:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)
