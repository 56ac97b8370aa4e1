"""The stage contract: a frozen card (data) plus a callable class in Ray Data's shape.

A card says what a model is (registry name, stage kind, weights source and revision, the columns
it needs and adds, default resources, a typed params class). A runtime class loads the model once
in ``__init__`` and transforms one batch in ``__call__``. The base class owns ``__call__``: it
checks columns, skips rows that are not ``ok``, times the call, turns per-row exceptions into
``status``/``error`` values and never drops the SKU id; subclasses implement ``_load`` and
``_predict`` only.

Two kinds of exception are not a row's: a store that fails for good (``StorageError``) and a
device fault (``is_device_fault``: a CUDA error, out of memory, a lost GPU). Each propagates
out of the actor, so the run stops uncommitted and a rerun resumes it; a batch that runs out
of memory is never split into rows that each run out of memory again.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from factory.core import images, metrics
from factory.core.status import STATUS_FAILED, STATUS_OK
from factory.core.strict import Strict
from factory.core.metrics import RunLabels
from factory.store.s3 import S3Options, StorageError
from stages.device_faults import DeviceFault, is_device_fault
from stages.precision import policy_key
from stages.product import FIDELITY, PRODUCT, composite, fidelity_delta_e, resize_layer

log = logging.getLogger(__name__)

STAGE_KINDS = ("source", "generate", "segment", "scene", "upscale", "recolor", "lora",
               "identity")

#: Internal output name for the fidelity figure a protecting stage measured (written to the
#: ``FIDELITY`` column whichever card declares it).
FIDELITY_COLUMN = "__fidelity__"


class StageParams(Strict):
    """Base of every stage's typed, frozen parameters; unknown keys are errors.

    Every param is part of the stage's params hash (and so of every asset key) except:
    ``key_neutral`` ones, which say how work is done and never what it makes (a fetch
    timeout, a thread count), and ``key_added`` ones while they hold their default: options a
    card gained after keys were in use, so jobs that do not set them keep their keys.
    """

    key_neutral: ClassVar[frozenset[str]] = frozenset()
    key_added: ClassVar[frozenset[str]] = frozenset()

    def key_params(self) -> dict[str, Any]:
        """The params that make an asset what it is, as JSON-ready values."""
        values = self.model_dump(mode="json")
        fields = type(self).model_fields
        for name in self.key_neutral:
            values.pop(name, None)
        for name in self.key_added:
            if name in values and getattr(self, name) == fields[name].default:
                del values[name]
        return values


class NoParams(StageParams):
    """For stages that take no parameters."""


@dataclass(frozen=True)
class Resources:
    """What one actor of a stage's pool asks Ray for, and how the pool is shaped.

    Attributes:
        num_gpus: GPUs per actor; fractions let small models share one GPU.
        num_cpus: CPUs per actor. Set explicitly: a GPU actor holding a whole CPU can starve
            the read and sink tasks on small nodes.
        batch_size: rows per ``__call__``.
        concurrency: actors in the pool.
    """

    num_gpus: float = 0.0
    num_cpus: float = 1.0
    batch_size: int = 8
    concurrency: int = 1


@dataclass(frozen=True)
class HostedApi:
    """Where a hosted model lives and how it bills (``stages.hosted``): a card's ``hosted``.

    Attributes:
        provider: the provider's client that calls it (``fal``).
        endpoint: the provider's id of the model (``fal-ai/flux-pro/v1.1``).
        unit: what a result is billed by: ``megapixels`` (of the image delivered), ``images``
            or ``seconds`` (of inference, as the provider reports it).
        usd_per_unit: the provider's published price per unit (a job's ``pricing`` may
            override it per card).
        price_source: where and when that price was read.
        concurrency: requests one actor keeps in flight at most (the provider's limit per key,
            shared out over the pool's actors by the job's ``concurrency``).
        requests_per_s: submissions per second the provider allows a key (0: no limit), shared
            evenly over the pool's actors: each actor spaces its submissions
            ``concurrency / requests_per_s`` seconds apart.
    """

    provider: str
    endpoint: str
    unit: str
    usd_per_unit: float
    price_source: str = ""
    concurrency: int = 4
    requests_per_s: float = 0.0


@dataclass(frozen=True)
class StageCard:
    """A model as data. Adding a model of an existing family is adding a card.

    Attributes:
        name: registry name, ``kind/model``.
        kind: one of ``STAGE_KINDS``.
        runtime: the runtime class (its module keeps heavy imports inside ``_load``).
        params: the typed params class.
        source: hub id, local path or ``tiny:NAME`` (a tiny model built by
            ``factory models make-tiny``); empty for stages without weights.
        revision: weights revision (hub commit or tag); part of every asset's fingerprint.
        weight_format: ``safetensors``, ``onnx`` or ``none``.
        cpu_only: the stage's maths runs on the CPU whatever it holds (no model to put on a
            GPU): a job reserving a GPU for it is rejected at validation.
        inputs: columns a row must carry into the stage.
        outputs: columns the stage adds or replaces (image columns).
        metrics: per-asset numbers the stage records, as ``(column, arrow type name)``; they
            land in the lineage table.
        resources: default resources; a job spec may override each field.
        cost_weight: relative cost per asset, for routing and reports.
        description: one line for ``factory models list``.
        example_params: params that make a valid stage, for cards whose params have required
            fields (a recolor palette); the contract suite and the docs use them.
        defaults: the card's own param defaults (size, steps, guidance, ...), over the params
            class's; a job spec overrides them key by key (``make_params``).
        family: the model architecture (``sd``, ``sdxl``, ``flux``, ``swin2sr``, ``u2net``):
            what the tiny stand-in of the contract suite is built as.
        cuda_dtype: the dtype its model card advises on a GPU; ``dtype: auto`` (the default)
            resolves to it on CUDA and to float32 on a CPU.
        hosted: for a model behind a provider's API (``stages.hosted``): which, and its price
            per billed unit; None for a model that runs on the cluster.
    """

    name: str
    kind: str
    runtime: type[Stage]
    params: type[StageParams] = NoParams
    source: str = ""
    revision: str = "main"
    weight_format: str = "none"
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    metrics: tuple[tuple[str, str], ...] = ()
    resources: Resources = field(default_factory=Resources)
    cost_weight: float = 1.0
    description: str = ""
    example_params: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    family: str = ""
    cuda_dtype: str = "float32"
    cpu_only: bool = False
    hosted: HostedApi | None = None

    def make_params(self, overrides: Mapping[str, Any] = MappingProxyType({})) -> StageParams:
        """The typed params: the params class's defaults, then the card's, then ``overrides``
        (a job spec's ``params``), key by key."""
        return self.params.model_validate({**self.defaults, **overrides})


@dataclass(frozen=True)
class StagePlan:
    """One resolved stage of a job: the card plus the spec's choices, frozen.

    This is what travels to each actor through ``fn_constructor_kwargs``. ``source`` is
    resolved for this machine (a path or hub id); ``source_ref`` is what the card or spec said,
    and is what fingerprints use, so keys do not depend on where the models directory is.
    ``models_dir`` is where ``tiny:NAME`` references in params (a LoRA, say) resolve; ``s3``
    (the job's ``S3Options``) and ``cache_dir`` are how ``s3://`` weights are fetched.
    ``routes``: in a job with routes (``factory.spec.routes``), the routes this stage serves; rows
    of other routes pass through it untouched. Empty: every row. ``weights``: what the weights
    hold (``stages.weights.weights_identity``: a content digest or a hub commit), for keys
    that change when weights are replaced under the same revision; empty where not resolved.
    """

    name: str
    card: StageCard
    params: StageParams
    source: str
    revision: str
    resources: Resources
    allow_pickle: bool = False
    source_ref: str = ""
    models_dir: str = ""
    #: None: the environment's settings (``factory.core.settings``).
    s3: S3Options | None = None
    cache_dir: str = ""
    routes: tuple[str, ...] = ()
    weights: str = ""
    #: for a hosted stage: the run's output store URI, where it keeps the requests it made
    #: (``stages.hosted``), set by the pipeline; empty: no record (outside a run)
    requests_uri: str = ""

    @property
    def model_id(self) -> str:
        return self.card.name

    @property
    def precision(self) -> str:
        """What the stage's precision adds to its assets' keys: its ``dtype`` policy and, for
        ``auto``, the rule it resolves by on each device (``stages.precision.policy_key``);
        empty for a stage without a ``dtype``. Derived from ``params``, so never stale."""
        policy = getattr(self.params, "dtype", None)
        return policy_key(policy, self.card.cuda_dtype) if policy else ""


class StageInputError(RuntimeError):
    """A batch lacks a column the stage needs: a bug in chain validation, not a row fault."""


class Stage(ABC):
    """Base runtime class: Ray Data calls an instance once per batch.

    Subclasses set nothing in ``__call__``; they implement ``_load`` (once per actor) and
    ``_predict`` (a dict of input columns for the ``ok`` rows -> a dict of output columns).
    Image columns arrive and leave as lists of ``HxWxC uint8`` arrays.
    """

    image_columns: ClassVar[tuple[str, ...]] = ("image", PRODUCT)
    #: Stage kinds that may change pixels of an image that carries a product layer: each
    #: composites the product's pixels back unless its params release them
    #: (``protects_product``), and measures ``fidelity_delta_e``.
    protecting_kinds: ClassVar[tuple[str, ...]] = ("upscale", "recolor", "lora")

    def __init__(self, *, plan: StagePlan, labels: RunLabels = RunLabels(),
                 threads: int | None = None) -> None:
        self.plan = plan
        self.labels = labels
        self.params = plan.params
        self.device = "cpu"
        #: the dtype name its model runs in (``stages.precision``); empty without a torch model
        self.precision = ""
        # ``threads``: set by the pool this stage runs in (a ``StageChain``); else its own
        self.threads = use_cores(plan.resources) if threads is None else threads
        try:
            # the weights as this node has them: the driver resolved the source on its own
            # machine (tiny: models are built here, s3:// ones copied into the cache)
            self.plan = replace(plan, source=self.fetch(plan.source, ref=plan.source_ref))
            self._load()
            if self.threads and "torch" in sys.modules:  # imported before we set the variable
                sys.modules["torch"].set_num_threads(self.threads)
        except Exception as exc:
            raise RuntimeError(
                f"stage '{plan.name}': model '{plan.card.name}' from '{plan.source}' "
                f"failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        self.placement = _placement(self.device, self.precision)
        log.info("stage %s: %s loaded, %s, %s CPU threads", plan.name, plan.card.name,
                 self.placement, self.threads or "default")

    def fetch(self, source: str, *, ref: str = "") -> str:
        """Where this node finds ``source`` (the driver's resolution of ``ref``): ``s3://`` is
        copied into the cache once, ``tiny:`` models are built here if missing."""
        from stages.weights import locate

        return locate(source, ref=ref or source, s3_options=self.plan.s3,
                      cache_dir=self.plan.cache_dir)

    def _load(self) -> None:
        """Load weights once per actor. Default: nothing to load."""

    @abstractmethod
    def _predict(self, rows: dict[str, Any]) -> dict[str, Sequence[Any]]:
        """Outputs for the ``ok`` rows: column name -> one value per row."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [c for c in ("sku", "status", *self.plan.card.inputs) if c not in batch]
        if missing:
            raise StageInputError(
                f"stage '{self.plan.name}' needs columns {missing}; batch has {sorted(batch)}"
            )
        n = len(batch["sku"])
        status = batch["status"].astype(object)
        error = _column(batch, "error", n)
        failed_stage = _column(batch, "failed_stage", n)
        outputs: dict[str, np.ndarray] = {}
        mine = self._serves(batch, n)
        ok = np.flatnonzero((status == STATUS_OK) & mine)
        started = time.perf_counter()
        if ok.size:
            self._run_rows(batch, ok, outputs, status, error, failed_stage)
        if ok.size and PRODUCT in batch and self.plan.card.kind in self.protecting_kinds:
            self._protect_product(batch, ok, outputs, status)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        # rows of routes this stage does not serve keep what earlier stages gave them
        passing = np.flatnonzero((status == STATUS_OK) & ~mine)
        if passing.size:
            _keep_values(batch, outputs, passing, self.image_columns)
        result = dict(batch)
        metric_names = {name for name, _ in self.plan.card.metrics}
        for column, values in outputs.items():
            if column == FIDELITY_COLUMN:  # the product's fidelity, measured after protecting
                result[FIDELITY] = values
            elif column in self.image_columns:
                result.update(images.store(column, values))
            elif column not in metric_names:
                result[column] = values
        for column in self.plan.card.outputs:
            # every batch carries the stage's image columns, even one with no ok rows
            if column in self.image_columns and column not in result:
                result.update(images.store(column, [None] * n))
        for name, _ in self.plan.card.metrics:
            values = outputs.get(name, np.full(n, None, dtype=object))
            result[name] = np.array([np.nan if v is None else float(v) for v in values])
            if passing.size and name in batch and name not in outputs:
                result[name][passing] = batch[name][passing]
        result["status"], result["error"], result["failed_stage"] = status, error, failed_stage
        per_row = elapsed_ms / ok.size if ok.size else 0.0
        done = (status == STATUS_OK) & mine  # a row passing through is not charged here
        result[f"ms_{self.plan.name}"] = np.where(done, per_row, 0.0)
        result[f"{self.plan.name}_placement"] = np.where(done, self.placement, "").astype(object)
        self._record(int(mine.sum()), ok.size, int(done.sum()), elapsed_ms / 1000.0)
        return result

    @property
    def protects_product(self) -> bool:
        """Whether this stage puts the product's incoming pixels back over what it made
        (``protect_product`` in its params; true where it has none)."""
        return bool(getattr(self.params, "protect_product", True))

    def _protect_product(self, batch, ok, outputs, status) -> None:
        """For each rendered row with a product layer: the layer at the output's size, the
        product's incoming pixels composited back (``protects_product``), and the asset's
        fidelity to the source photo so far (``stages.product``)."""
        made = outputs.get("image")
        if made is None:
            return
        layers = images.load(PRODUCT, batch)
        incoming = images.load("image", batch)
        n = len(batch["sku"])
        out_layers = outputs.setdefault(PRODUCT, np.empty(n, dtype=object))
        fidelity = batch[FIDELITY].astype(np.float64).copy() if FIDELITY in batch \
            else np.full(n, np.nan)
        for i in ok:
            if status[i] != STATUS_OK or made[i] is None or layers[i] is None:
                continue
            image = made[i]
            layer = resize_layer(layers[i], image.shape[:2])
            if self.protects_product and layer[..., 3].any():
                # the product as it came in: its solid pixels from the incoming image (a
                # stage before may have changed them on purpose), its soft edge from the
                # layer (the incoming edge pixels hold the scene too); resampled under its
                # own alpha, premultiplied, so the scene never bleeds into it
                alpha = layers[i][..., 3:]
                rgb = np.where(alpha == 255, incoming[i][..., :3], layers[i][..., :3])
                own = np.concatenate([rgb, alpha], axis=2)
                image = composite(image, resize_layer(own, image.shape[:2]))
            made[i], out_layers[i] = image, layer
            fidelity[i] = fidelity_delta_e(image, layer)
        outputs[FIDELITY_COLUMN] = fidelity

    def _serves(self, batch: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        """Which rows this stage renders: in a job with routes, those of the routes it serves
        (``StagePlan.routes``, the batch's ``route`` column); otherwise every row."""
        if not self.plan.routes or "route" not in batch:
            return np.ones(n, dtype=bool)
        served = frozenset(self.plan.routes)
        return np.array([route in served for route in batch["route"]], dtype=bool)

    def _record(self, rows_in: int, attempted: int, passed: int, seconds: float) -> None:
        """This batch's metrics (Ray's metrics agent; see ``factory.core.metrics``)."""
        tags = self.labels.tags(stage=self.plan.name, model=self.plan.card.name,
                                device=self.device)
        metrics.inc("factory_stage_rows_in", rows_in, tags)
        metrics.inc("factory_stage_rows_out", passed, tags)
        metrics.inc("factory_stage_failures", attempted - passed, tags)
        if attempted:
            for _ in range(passed):
                metrics.observe("factory_stage_asset_seconds", seconds / attempted, tags)
            metrics.inc("factory_stage_gpu_seconds", seconds * self.plan.resources.num_gpus, tags)

    def _run_rows(self, batch, ok, outputs, status, error, failed_stage) -> None:
        try:
            self._assign(outputs, ok, self._predict(self._take(batch, ok)), len(batch["sku"]))
            return
        except StorageError:  # the store, not a row: the run stops uncommitted and resumes
            raise
        except Exception as exc:  # one bad row must not fail its batch-mates: retry row by row
            if is_device_fault(exc):  # the device, not a row (nor a reason to try each row)
                raise self._device_fault(exc) from exc
            if ok.size == 1:
                self._fail(ok[0], status, error, failed_stage)
                log.warning("stage %s: sku %s failed: %s", self.plan.name, batch["sku"][ok[0]],
                            error[ok[0]])
                return
        for i in ok:
            try:
                rows = self._take(batch, np.array([i]))
                self._assign(outputs, np.array([i]), self._predict(rows), len(batch["sku"]))
            except StorageError:
                raise
            except Exception as exc:
                if is_device_fault(exc):
                    raise self._device_fault(exc) from exc
                self._fail(i, status, error, failed_stage)
                log.warning("stage %s: sku %s failed: %s", self.plan.name, batch["sku"][i], error[i])

    def _device_fault(self, exc: BaseException) -> DeviceFault:
        """The run's error for a device fault in this stage: stage, model, where it ran."""
        if isinstance(exc, DeviceFault):
            return exc
        text = " ".join(str(exc).split())[:500]
        log.error("stage %s: device fault on %s: %s", self.plan.name, self.placement, text)
        return DeviceFault(
            f"stage '{self.plan.name}': model '{self.plan.card.name}' hit a device fault on "
            f"{self.placement}: {type(exc).__name__}: {text}. No SKU failed for it; the run "
            "stops uncommitted, and running it again (the same run id) resumes it")

    def _take(self, batch: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, Any]:
        whole = len(idx) == len(batch["sku"])  # the common case: no copy of the pixels
        rows = {key: (value if whole else value[idx]) for key, value in batch.items()}
        for column in self.image_columns:
            if column in rows:
                rows[column] = images.load(column, rows)
        return rows

    @staticmethod
    def _assign(outputs, idx, produced, n) -> None:
        for column, values in produced.items():
            if len(values) != len(idx):
                raise ValueError(f"_predict returned {len(values)} values for '{column}', "
                                 f"expected {len(idx)}")
            target = outputs.setdefault(column, np.empty(n, dtype=object))
            for i, value in zip(idx, values):
                target[i] = value

    def _fail(self, i, status, error, failed_stage) -> None:
        exc_text = traceback.format_exc(limit=2).strip().splitlines()[-1]
        status[i] = STATUS_FAILED
        error[i] = exc_text[:2000]
        failed_stage[i] = self.plan.name


def render_by_size(sizes: Sequence[tuple[int, int]],
                   render: Callable[[list[int], tuple[int, int]], Sequence[Any]]) -> list[Any]:
    """Call ``render(row indices, size)`` once per distinct size (a diffusion pipeline takes
    one size per call) and return the results in row order."""
    out: list[Any] = [None] * len(sizes)
    for size in sorted(set(sizes)):
        idx = [i for i, s in enumerate(sizes) if s == size]
        for i, result in zip(idx, render(idx, size)):
            out[i] = result
    return out


def usable_cores() -> int:
    """CPU cores this process may be scheduled on (its affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def intra_op_threads(resources: Resources, *, cores: int, node_cpus: float) -> int:
    """Threads a CPU actor's maths (torch, onnxruntime) should use: the cores it may really use.

    Ray sets ``OMP_NUM_THREADS`` to an actor's share of its node's *logical* CPUs (the floor of
    ``num_cpus``, at least 1). Where logical CPUs are the node's cores, that share is what Ray
    holds for the actor, and it keeps it. A node with more logical CPUs than cores (the
    factory's local Ray, sized so that every pool fits) holds nothing for anyone: all its actors
    time-share all its cores, and an actor limited to its share leaves cores idle while it is
    the bottleneck (a ``num_cpus: 0.5`` LoRA pass ran on one thread of two). There, a pool's
    actors split the cores between them (``concurrency`` actors, each ``cores // concurrency``
    threads): the other pools are idle most of the time, or are one ``StageChain`` already.

    Args:
        resources: the stage's resources.
        cores: cores this process may run on.
        node_cpus: the node's logical CPUs, as Ray counts them.

    Returns:
        The thread count, at least 1.
    """
    if node_cpus > cores:  # time-shared node
        return max(1, cores // max(1, resources.concurrency))
    return max(1, min(cores, math.floor(resources.num_cpus)))


#: Spins an idle OpenMP thread waits before it sleeps, on a time-shared node (libgomp's own
#: default, 300,000, is ~0.1-1 ms). There the actors' threads outnumber the cores whenever two
#: stages are busy at once, and a thread spinning at a barrier holds the core that its peer,
#: or another stage, needs: a LoRA batch at 2 threads ran 2.0x slower than at 1 thread on a
#: loaded machine with the default, 1.2x with 10,000 (and 3.3x with OMP_WAIT_POLICY=PASSIVE,
#: whose every wake-up waits for the scheduler). A user's GOMP_SPINCOUNT wins.
SHARED_SPINCOUNT = "10000"


def use_cores(resources: Resources) -> int:
    """Set this Ray actor's intra-op threads (``intra_op_threads``) before its model loads.

    Sets ``OMP_NUM_THREADS`` (read by torch when it initialises and by rembg for its
    onnxruntime session) and, after loading, torch's own setting; on a time-shared node also
    a bounded OpenMP spin (``SHARED_SPINCOUNT``). Outside a Ray worker, and for GPU stages
    (the GPU does the maths), nothing changes and 0 is returned.
    """
    if resources.num_gpus > 0:
        return 0
    node_cpus = _node_cpus()
    if node_cpus is None:
        return 0
    cores = usable_cores()
    threads = intra_op_threads(resources, cores=cores, node_cpus=node_cpus)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if node_cpus > cores and threads > 1:
        os.environ.setdefault("GOMP_SPINCOUNT", SHARED_SPINCOUNT)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


def _node_cpus() -> float | None:
    """Logical CPUs of the Ray node this worker runs on; None outside a Ray worker."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        context = ray.get_runtime_context()
        if context.worker.mode != ray.WORKER_MODE:
            return None
        node_id = context.get_node_id()
        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                return float(node.get("Resources", {}).get("CPU", 0.0))
    except Exception:  # noqa: BLE001 - thread tuning is an optimisation; never fail a stage on it
        log.debug("could not read the Ray node's CPUs", exc_info=True)
    return None


def _placement(device: str, precision: str = "") -> str:
    """Where this actor runs: Ray node, the GPU ids Ray assigned, the torch/ORT device, and
    the dtype its model runs in (``dtype=bfloat16``; absent for a stage without one)."""
    dtype = f" dtype={precision}" if precision else ""
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            node = context.get_node_id()[:12]
            actor = (context.get_actor_id() or "driver")[:12]
            gpus = ",".join(str(g) for g in ray.get_gpu_ids())
            return f"node={node} actor={actor} gpus=[{gpus}] device={device}{dtype}"
    except Exception:  # noqa: BLE001 - placement is informational; never fail a stage on it
        log.debug("could not read the Ray placement", exc_info=True)
    return f"node=local actor=local gpus=[] device={device}{dtype}"


def _keep_values(batch: Mapping[str, np.ndarray], outputs: dict[str, np.ndarray],
                 rows: np.ndarray, image_columns: tuple[str, ...]) -> None:
    """Give ``rows`` (passing through the stage) their incoming values in every output column
    the batch already had (an image stays the image an earlier stage of its route made)."""
    for column, values in outputs.items():
        if column not in batch:
            continue
        previous = images.load(column, batch) if column in image_columns else batch[column]
        for i in rows:
            values[i] = previous[i]


def _column(batch: Mapping[str, np.ndarray], name: str, n: int) -> np.ndarray:
    if name in batch:
        return batch[name].astype(object)
    return np.full(n, None, dtype=object)
