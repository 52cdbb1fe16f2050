"""The cluster: which task of a multi-worker run this process is.

Multi-worker runs read `TF_CONFIG` (the same cluster on every machine, its
own task on each); `parse_tf_config` checks it and names what is wrong.
"""

import dataclasses
import json
import re

from tl_keras.errors import InputError


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


def parse_tf_config(text, setting="multi_worker"):
    """Validates a TF_CONFIG string; returns this process's `Task`.

    Args:
      text: TF_CONFIG's value.
      setting: the --distribution that reads it (auto or multi_worker).

    Raises:
      InputError: missing, not JSON, a key given twice, no cluster/task,
        an unknown task type or index, a malformed or repeated address.
    """
    example = ('{"cluster": {"worker": ["host1:port", "host2:port"]}, '
               '"task": {"type": "worker", "index": 0}}')

    def fail(problem):
        raise InputError(
            f"Invalid TF_CONFIG for distribution={setting}: {problem}. "
            f"Allowed: JSON like {example} (same cluster on every worker, "
            f"its own task on each). Received: TF_CONFIG={text!r}")

    if not text:
        fail("the environment variable is not set")
    try:
        spec = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        fail(f"not JSON ({e})")
    except KeyError as e:  # json.loads kept the last one silently
        fail(f"key {e.args[0]!r} is given twice")
    if not isinstance(spec, dict):
        fail("not a JSON object")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        fail("no 'cluster' object")
    if not isinstance(task, dict):
        fail("no 'task' object")
    _check_cluster(cluster, fail)
    if len(cluster.get("chief", [])) > 1:
        fail("more than one chief")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in cluster:
        fail(f"task type {task_type!r} is not a job of the cluster "
             f"({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not (
            0 <= index < len(cluster[task_type])):
        fail(f"task index {index!r} is not in [0, "
             f"{len(cluster[task_type]) - 1}] for job {task_type!r}")
    return Task(task_type, index, sum(len(v) for v in cluster.values()),
                has_chief_job="chief" in cluster)


def _check_cluster(cluster, fail):
    """Calls `fail(problem)` for a job other than chief / worker, an empty
    job, an address that is not host:port or [IPv6]:port with a port in
    [1, 65535], or one listed twice."""
    seen = {}
    for job, addresses in cluster.items():
        if job not in ("chief", "worker"):
            fail(f"job {job!r} is not supported (only 'chief' and "
                 f"'worker')")
        if not isinstance(addresses, list) or not addresses:
            fail(f"cluster[{job!r}] is not a non-empty list of addresses")
        for i, address in enumerate(addresses):
            port = isinstance(address, str) and re.fullmatch(
                r"(?:[^\s:\[\]]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})", address)
            if not port or not 1 <= int(port.group(1)) <= 65535:
                fail(f"cluster[{job!r}][{i}] = {address!r} is not host:port "
                     f"(a port in [1, 65535])")
            if address in seen:
                fail(f"{address} is listed twice ({seen[address]} and "
                     f"{job}[{i}])")
            seen[address] = f"{job}[{i}]"


def _unique_keys(pairs):
    """json.loads's object_pairs_hook: a dict, or KeyError naming a key
    given twice."""
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise KeyError(key)
    return dict(pairs)
