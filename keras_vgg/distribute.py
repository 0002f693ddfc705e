"""Choosing the distribution strategy and the numeric precision (Sec. 3.3).

Sec. 3.3: synchronous data parallelism; each batch is split across GPUs and their gradients
are averaged, so the result is what one device would compute. Here: all visible GPUs of one
machine through `tf.distribute.MirroredStrategy`, several machines through
`MultiWorkerMirroredStrategy` configured by the standard `TF_CONFIG`, one device otherwise.
The recipe's batch is the global batch.

`plan_distribution` only looks (TF_CONFIG, the visible devices) and creates nothing, so
`kvgg fit --dry-run` can print the plan; `make_strategy` then creates the strategy.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import tensorflow as tf

from keras_vgg import limits

__all__ = [
    "DistributionPlan",
    "PrecisionChoice",
    "cpu_has_bf16",
    "make_strategy",
    "plan_distribution",
    "resolve_precision",
]


@dataclasses.dataclass(frozen=True)
class DistributionPlan:
    """What `make_strategy` will create.

    Attributes:
        kind: "one_device", "mirrored" or "multi_worker".
        devices: The local devices used (e.g. ["/gpu:0", "/gpu:1"]).
        num_workers: Number of worker processes (1 without TF_CONFIG).
        worker_index: This process's index among the workers.
        global_batch: The recipe's batch.
    """

    kind: str
    devices: tuple[str, ...]
    num_workers: int = 1
    worker_index: int = 0
    global_batch: int = 256

    @property
    def replicas(self) -> int:
        """Replicas in sync: local devices times workers."""
        return len(self.devices) * self.num_workers

    @property
    def per_replica_batch(self) -> int:
        """The part of the global batch each replica computes."""
        return self.global_batch // self.replicas

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run directory (worker 0)."""
        return self.worker_index == 0

    def describe(self) -> str:
        """One line, e.g. "MirroredStrategy over 4 devices (/gpu:0, ...)"."""
        names = {
            "one_device": "one device",
            "mirrored": "MirroredStrategy",
            "multi_worker": "MultiWorkerMirroredStrategy",
        }
        text = f"{names[self.kind]} ({', '.join(self.devices)})"
        if self.kind == "multi_worker":
            text += f", {self.num_workers} workers, this is worker {self.worker_index}"
        return text


def _tf_config_workers(tf_config: str | None) -> tuple[int, int]:
    """(number of workers, this task's index) from the TF_CONFIG text; (1, 0) without it."""
    if not tf_config:
        return 1, 0
    try:
        config = limits.load_json(tf_config, "TF_CONFIG")
        cluster = config.get("cluster", {})
        workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
        task = config.get("task", {})
        index = int(task.get("index", 0))
        if task.get("type", "worker") == "worker" and cluster.get("chief"):
            index += 1
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"TF_CONFIG: not a valid cluster description: {exc}") from None
    return max(workers, 1), index


def plan_distribution(
    global_batch: int,
    *,
    devices: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> DistributionPlan:
    """Decides the strategy without creating it.

    Args:
        global_batch: The recipe's batch, split evenly across all replicas.
        devices: Local devices to use; default: every visible GPU, else the CPU.
        environ: Where to read TF_CONFIG (default `os.environ`).

    Returns:
        A `DistributionPlan`.

    Raises:
        ValueError: if TF_CONFIG is malformed or the global batch does not split evenly.
    """
    environ = os.environ if environ is None else environ
    num_workers, worker_index = _tf_config_workers(environ.get("TF_CONFIG"))
    if devices is None:
        # Physical, not logical: listing logical devices would start the runtime, after which
        # MultiWorkerMirroredStrategy can no longer configure its collective ops.
        gpus = tf.config.list_physical_devices("GPU")
        devices = [f"/gpu:{i}" for i in range(len(gpus))] if gpus else ["/cpu:0"]
    devices = tuple(devices)
    if num_workers > 1:
        kind = "multi_worker"
    elif len(devices) > 1:
        kind = "mirrored"
    else:
        kind = "one_device"
    plan = DistributionPlan(kind, devices, num_workers, worker_index, global_batch)
    if global_batch % plan.replicas:
        raise ValueError(
            f"run.batch_size: the global batch {global_batch} does not split evenly over "
            f"{plan.replicas} replicas ({plan.describe()})"
        )
    return plan


def make_strategy(plan: DistributionPlan) -> tf.distribute.Strategy:
    """Creates the strategy of a plan.

    For "multi_worker", TF_CONFIG must be set in the environment; the workers then meet at
    the first collective operation.

    Args:
        plan: From `plan_distribution`.

    Returns:
        A `tf.distribute.Strategy`.
    """
    if plan.kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if plan.kind == "mirrored":
        return tf.distribute.MirroredStrategy(list(plan.devices))
    if tf.DeviceSpec.from_string(plan.devices[0]).device_type == "CPU":
        # On the CPU, TensorFlow's default strategy: under OneDeviceStrategy Keras's `fit`
        # runs each step through the distributed-input and replica machinery, measured at
        # about 13 ms a step (30% of a small model's step) on 2 cores.
        return tf.distribute.get_strategy()
    return tf.distribute.OneDeviceStrategy(plan.devices[0])


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """A Keras dtype policy name and why it was chosen."""

    policy: str
    reason: str


def cpu_has_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 flags).

    Args:
        cpuinfo_path: Linux's CPU description; elsewhere the file is missing and the answer
            is False.

    Returns:
        True if the flags list `avx512_bf16` or `amx_bf16`.
    """
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


def resolve_precision(
    precision: str,
    *,
    gpu_capabilities: Sequence[tuple[int, int]] | None = None,
    cpu_bf16: bool | None = None,
) -> PrecisionChoice:
    """Resolves `run.precision` to a Keras dtype policy.

    "auto": bfloat16 on GPUs of compute capability 8.0 or later (Ampere, Hopper) and on CPUs
    with AVX512-BF16 / AMX; float16 (with loss scaling) on older tensor-core GPUs (7.0 to
    7.x); float32 otherwise. The others are taken as given.

    Args:
        precision: "auto", "float32", "mixed_bfloat16" or "mixed_float16".
        gpu_capabilities: Compute capabilities of the GPUs used (default: the visible ones).
        cpu_bf16: Whether the CPU has bfloat16 (default: read /proc/cpuinfo).

    Returns:
        A `PrecisionChoice`.
    """
    if precision != "auto":
        return PrecisionChoice(precision, "as the recipe says")
    if gpu_capabilities is None:
        gpu_capabilities = []
        for gpu in tf.config.list_physical_devices("GPU"):
            details = tf.config.experimental.get_device_details(gpu)
            gpu_capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    if gpu_capabilities:
        lowest = min(gpu_capabilities)
        if lowest >= (8, 0):
            return PrecisionChoice(
                "mixed_bfloat16", f"GPU compute capability {lowest} has bfloat16"
            )
        if lowest >= (7, 0):
            return PrecisionChoice(
                "mixed_float16", f"GPU compute capability {lowest}: float16 tensor cores"
            )
        return PrecisionChoice("float32", f"GPU compute capability {lowest}: no tensor cores")
    if cpu_has_bf16() if cpu_bf16 is None else cpu_bf16:
        return PrecisionChoice("mixed_bfloat16", "CPU has AVX512-BF16/AMX")
    return PrecisionChoice("float32", "no GPU and no bfloat16 on this CPU")
