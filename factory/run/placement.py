"""Where a job may run: cluster capacity, and what every node can reach.

Checked before any model loads:

* **Capacity.** Actor pools that hold every CPU starve the read and sink tasks, and a pool that
  asks for more GPUs than exist never starts: both fail fast. On a cluster with an autoscaler
  the limit is what the cluster can grow to (Ray's own cluster config, as Ray Data reads it),
  so a job that fits the maximum but not today's nodes waits for them, with a message.
* **Reach.** On a Ray with more than one node, a local output directory would split the assets
  across machines: it is refused unless the spec declares it a shared mount. A local manifest
  is read where the driver runs (the read task is pinned to the driver's node).
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

from factory.store.s3 import is_s3
from factory.spec.job import Job

log = logging.getLogger(__name__)

#: CPUs the read, validate, existence-check and sink tasks need besides the actor pools.
TASK_CPUS = 1.0


class ClusterTooSmall(RuntimeError):
    """The job's actor pools cannot all be placed, or would leave no CPU for its tasks."""


class OutputNotShared(ValueError):
    """A local output directory on a multi-node Ray that the spec does not declare shared."""


def logical_cpus_needed(job: Job) -> float:
    """Logical CPUs the job's actor pools hold."""
    return sum(pool.resources.num_cpus * pool.resources.concurrency for pool in job.pools)


def resource_problems(job: Job, resources: Mapping[str, float]) -> list[str]:
    """What ``resources`` (a cluster's CPU and GPU totals) lack for this job; empty if it fits."""
    cpus_needed = logical_cpus_needed(job) + TASK_CPUS
    gpus_needed = sum(pool.resources.num_gpus * pool.resources.concurrency for pool in job.pools)
    problems = []
    if resources.get("CPU", 0.0) < cpus_needed:
        problems.append(f"{cpus_needed:g} CPUs (actor pools {cpus_needed - TASK_CPUS:g} + "
                        f"{TASK_CPUS:g} for read/validate/sink tasks), the cluster has "
                        f"{resources.get('CPU', 0.0):g}; lower the stages' num_cpus")
    if resources.get("GPU", 0.0) < gpus_needed:
        problems.append(f"{gpus_needed:g} GPUs, the cluster has {resources.get('GPU', 0.0):g}")
    return problems


def capacity_verdict(job: Job, now: Mapping[str, float],
                     maximum: Mapping[str, float] | None) -> str:
    """``"fits"`` now, ``"wait"`` for an autoscaler that can grow to fit, or raise.

    Args:
        job: the validated job.
        now: the cluster's resources today.
        maximum: what the autoscaler may grow the cluster to, or None without an autoscaler.

    Raises:
        ClusterTooSmall: the job cannot fit, now or at the cluster's maximum.
    """
    problems = resource_problems(job, now)
    if not problems:
        return "fits"
    if maximum is not None:
        at_most = resource_problems(job, maximum)
        if not at_most:
            return "wait"
        raise ClusterTooSmall(f"job '{job.name}' needs " + "; and ".join(at_most)
                              + " even at the autoscaler's maximum")
    raise ClusterTooSmall(f"job '{job.name}' needs " + "; and ".join(problems))


def check_resources(job: Job) -> None:
    """Fail fast where Ray would wait forever; say so where an autoscaler will add nodes.

    Also refuses an ONNX stage that reserves a GPU its nodes' ONNX Runtime cannot use
    (``onnx_gpu_problems``), asked on the GPU nodes themselves: the driver's own onnxruntime
    says nothing about the workers' (a CPU head node, a laptop).
    """
    import ray

    now = ray.cluster_resources()
    verdict = capacity_verdict(job, now, autoscaler_maximum())
    if verdict == "wait":
        log.warning("job '%s' needs more than the cluster has now (%s); its autoscaler can "
                    "grow to fit, so the stages wait for new nodes",
                    job.name, "; ".join(resource_problems(job, now)))
    if _onnx_gpu_stages(job):
        problems = onnx_gpu_problems(job, onnx_providers_on_gpu_nodes())
        if problems:
            raise GpuUnusable(f"job '{job.name}': " + "; ".join(problems))


class GpuUnusable(RuntimeError):
    """A stage reserves a GPU that the runtime on the GPU nodes cannot use."""


def _onnx_gpu_stages(job: Job) -> list:
    return [p for p in job.stages if p.card.weight_format == "onnx" and p.resources.num_gpus > 0]


def onnx_gpu_problems(job: Job, providers_by_node: Mapping[str, Sequence[str]]) -> list[str]:
    """ONNX stages (rembg) that reserve a GPU where ONNX Runtime has no CUDA provider.

    Args:
        job: the validated job.
        providers_by_node: ``onnxruntime.get_available_providers()`` on each GPU node (an
            empty list where onnxruntime is missing). No GPU nodes yet (an autoscaler will
            add them): nothing to check here; the actor's load refuses instead.

    Returns:
        One line per stage that would hold a GPU idle; empty if none.
    """
    lacking = sorted(node for node, providers in providers_by_node.items()
                     if "CUDAExecutionProvider" not in providers)
    if not lacking:
        return []
    seen = ", ".join(f"{node}: {list(providers_by_node[node])}" for node in lacking)
    return [f"stage '{p.name}' ({p.card.name}) reserves {p.resources.num_gpus:g} GPU, but "
            f"onnxruntime on GPU node(s) has no CUDAExecutionProvider ({seen}); install "
            "onnxruntime-gpu there (the 'gpu' extra; the image has it) or set the stage's "
            "resources.num_gpus to 0" for p in _onnx_gpu_stages(job)]


def onnx_providers_on_gpu_nodes() -> dict[str, list[str]]:
    """``onnxruntime.get_available_providers()`` on every live node with GPUs, asked by a task
    pinned there that holds no CPU or GPU (the providers an ONNX Runtime build was compiled
    with: a CPU build never lists CUDA, on any machine)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def providers() -> list[str]:
        try:
            import onnxruntime
        except ImportError:
            return []
        return list(onnxruntime.get_available_providers())

    nodes = [n for n in alive_nodes() if n.get("Resources", {}).get("GPU", 0) > 0]
    refs = {n["NodeID"][:12]: providers.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote() for n in nodes}
    return {node: ray.get(ref, timeout=120) for node, ref in refs.items()}


def autoscaler_maximum() -> dict[str, float] | None:
    """The resources the autoscaler may grow the cluster to, or None without one."""
    try:
        from ray._private import state

        return state.state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - no autoscaler config (a local Ray): no maximum
        return None


def alive_nodes() -> list[dict]:
    """The cluster's live nodes (Ray's node table)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_output_reach(job: Job, nodes: int) -> None:
    """Refuse a local output directory that not every node of the cluster writes to."""
    if nodes <= 1 or is_s3(job.output.uri) or job.output.shared_mount:
        return
    raise OutputNotShared(
        f"output '{job.output.uri}' is a local directory, but this Ray cluster has {nodes} "
        "nodes: each node would write its assets to its own disk. Use an s3:// URI, or a path "
        "every node mounts (NFS, a PersistentVolume) declared in the spec as "
        "'output: {shared_mount: true}'.")


def driver_node_label() -> dict[str, str]:
    """A Ray label selector that keeps a task on the driver's node (where a local manifest
    is), as Ray's own tools pin a task to a node."""
    import ray

    return {ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()}
