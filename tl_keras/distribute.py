"""Where the step runs: the tf.distribute strategy, XLA and precision.

`placement(config)` turns `--distribution`, `--jit_compile` and
`--mixed_precision` into a `Placement`: the strategy every variable is
created under, whether the train step is XLA-compiled, the Keras dtype
policy, and which task of a multi-worker cluster this process is. Each
choice is explicit and recorded in metrics.json, so a run reports the path
that actually ran (Keras's own `jit_compile="auto"` silently turns XLA off
under any strategy; see DESIGN.md).

Multi-worker runs read `TF_CONFIG`. Keras 3.15's `fit` fails under
`MultiWorkerMirroredStrategy` (keras-team/keras#20585);
`_patch_keras_for_multi_worker` is a narrow fix applied only while the
installed Keras still has the failing code.
"""

import dataclasses
import inspect
import json
import logging
import os
import re

import keras
import tensorflow as tf

from tl_keras.config import InputError

log = logging.getLogger("tl_keras")

_STRATEGIES = {}  # one strategy per kind and process (MWMS allows only one)


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in a cluster (a single process: chief 0 of 1)."""

    type: str = "chief"
    index: int = 0
    num_workers: int = 1
    has_chief_job: bool = False  # the cluster names a 'chief' job

    @property
    def is_chief(self):
        """The chief writes checkpoints, metrics and the export: the
        'chief' task, or worker 0 when the cluster has no chief job."""
        return self.type == "chief" or (
            self.type == "worker" and self.index == 0
            and not self.has_chief_job)

    @property
    def name(self):
        return f"{self.type}-{self.index}"


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

        return [int(round(float(v))) for v in all_reduce().numpy()]

    def policy_scope(self):
        """A context with this run's Keras dtype policy as the global one
        (restored afterwards: the policy is process-wide state)."""
        return _PolicyScope(self.precision)


def placement(config):
    """Resolves the config's distribution, XLA and precision settings.

    Raises:
      InputError: a malformed TF_CONFIG, a strategy this machine cannot
        run, a batch size not divisible by the replicas, or
        jit_compile=true where XLA cannot compile the step.
    """
    kind, task = _resolve_kind(config.distribution)
    strategy = _strategy(kind)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise InputError(
            f"Invalid batch_size: it is global and split across {replicas} "
            f"replicas ({kind}), so it must be divisible by {replicas}. "
            f"Allowed: a multiple of {replicas}. Received: "
            f"batch_size={config.batch_size}")
    jit = resolve_jit_compile(config.jit_compile, strategy)
    precision = resolve_precision(config.mixed_precision)
    log.info("Distribution %s (%s, %d replica(s)%s); XLA %s; precision %s",
             kind, type(strategy).__name__, replicas,
             f", {task.name} of {task.num_workers} workers"
             if task.num_workers > 1 else "", "on" if jit else "off",
             precision)
    return Placement(kind, strategy, jit, precision, task)


def _resolve_kind(setting):
    """Returns (kind, Task); 'auto' becomes one of the concrete kinds."""
    tf_config = os.environ.get("TF_CONFIG", "")
    if setting == "multi_worker" or (setting == "auto" and tf_config):
        task = parse_tf_config(tf_config)
        if task.num_workers > 1 or setting == "multi_worker":
            return "multi_worker", task
    if setting == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return ("mirrored" if len(gpus) > 1 else "one_device"), Task()
    return setting, Task()


def parse_tf_config(text):
    """Validates a TF_CONFIG string; returns this process's `Task`.

    Raises:
      InputError: missing, not JSON, no cluster/task, an unknown task type
        or index, a malformed or repeated address.
    """
    example = ('{"cluster": {"worker": ["host1:port", "host2:port"]}, '
               '"task": {"type": "worker", "index": 0}}')

    def fail(problem):
        raise InputError(
            f"Invalid TF_CONFIG for distribution=multi_worker: {problem}. "
            f"Allowed: JSON like {example} (same cluster on every worker, "
            f"its own task on each). Received: TF_CONFIG={text!r}")

    if not text:
        fail("the environment variable is not set")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        fail(f"not JSON ({e})")
    if not isinstance(spec, dict):
        fail("not a JSON object")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        fail("no 'cluster' object")
    if not isinstance(task, dict):
        fail("no 'task' object")
    seen = {}
    for job, addresses in cluster.items():
        if job not in ("chief", "worker"):
            fail(f"job {job!r} is not supported (only 'chief' and "
                 f"'worker')")
        if not isinstance(addresses, list) or not addresses:
            fail(f"cluster[{job!r}] is not a non-empty list of addresses")
        for i, address in enumerate(addresses):
            if not (isinstance(address, str)
                    and re.fullmatch(r"[^\s:]+:\d{1,5}", address)):
                fail(f"cluster[{job!r}][{i}] = {address!r} is not host:port")
            if address in seen:
                fail(f"{address} is listed twice ({seen[address]} and "
                     f"{job}[{i}])")
            seen[address] = f"{job}[{i}]"
    if len(cluster.get("chief", [])) > 1:
        fail("more than one chief")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        fail(f"task type {task_type!r} is not a job of the cluster "
             f"({', '.join(cluster)})")
    if not isinstance(index, int) or not 0 <= index < len(
            cluster[task_type]):
        fail(f"task index {index!r} is not in [0, "
             f"{len(cluster[task_type]) - 1}] for job {task_type!r}")
    return Task(task_type, index, sum(len(v) for v in cluster.values()),
                has_chief_job="chief" in cluster)


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
        devices = ([d.name for d in tf.config.list_logical_devices("GPU")]
                   or [d.name for d in tf.config.list_logical_devices("CPU")])
        strategy = tf.distribute.MirroredStrategy(devices)
    elif kind == "multi_worker":
        _patch_keras_for_multi_worker()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
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


def resolve_jit_compile(setting, strategy=None):
    """Turns the jit_compile setting into the bool passed to compile().

    'auto' means XLA on GPU/TPU with one replica per process and off
    otherwise: on CPU XLA was 2.4-14x slower here, and under
    MirroredStrategy on CPU devices it fails. 'true' is checked by
    compiling a step that reads a variable under the strategy (the failing
    case), so it fails before training rather than at its first step.

    Raises:
      InputError: jit_compile=true where XLA cannot compile the step.
    """
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
    """
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


class _PolicyScope:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)


def _patch_keras_for_multi_worker():
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
