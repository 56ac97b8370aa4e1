"""Job specs: YAML parsed once into frozen typed objects, validated before Ray starts.

``load_job(path)`` returns a ``Job`` or raises ``SpecError`` listing every problem with the
file and key path (``stages[1].params.strength``). Besides types and unknown keys it checks the
chain: each stage's input columns must be produced by the rows or an earlier stage.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from factory.core import settings
from factory.core.strict import Strict
from factory.core.text import escaped, shown
from factory.catalog.commerce_formats import CatalogOptions
from factory.spec.channels import Channel, ChannelError
from factory.spec.job_keys import JobKeys, job_keys
from factory.spec.prices import Prices, PricingSpec, resolve_prices
from factory.spec.publish import PublishConfig, PublishSpec, resolve_publish
from factory.spec.notify import NotifyConfig, NotifySpec, resolve_notify
from factory.spec.qa import QaConfig, QaSpec, resolve_qa
from factory.spec.routes import Routes, RoutesSpec, resolve_routes
from factory.store.s3 import S3Options
from factory.spec.seasons import ScheduleSpec, SeasonSpec, check_seasons, season_stage
from factory.spec.templating import TemplateError, template_fields
from stages.base import StagePlan
from stages.chain import Pool, pool_layout
from stages.precision import Dtype
from stages.source_photo import SOURCE_URI
from stages.registry import UnknownModelError, get_card
from stages.weights import resolve_source, weights_identity

# Columns every validated row carries before the first stage.
ROW_COLUMNS = ("sku", "variant", "seed", "prompt", "negative_prompt", "row")
DIFFUSION_KINDS = ("generate", "lora")
#: Run ids, and every spec name that becomes part of a key or a path (stage names, route
#: names): a plain name that cannot climb out of the output prefix. Matched whole
#: (``fullmatch``): ``$`` would let a trailing newline through.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class SpecError(ValueError):
    """A job spec that cannot run; ``problems`` are ``key.path: message`` lines, with any
    control character a spec value held escaped (``factory.core.text``)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = escaped(source)
        problems = [escaped(p) for p in problems]
        self.problems = problems
        super().__init__(f"{source}: invalid job spec:\n" + "\n".join(f"  {p}" for p in problems))


class ManifestSpec(Strict):
    """The catalog: a manifest file, or a Shopify / Merchant Center export as exported."""

    uri: str = Field(min_length=1)
    format: Literal["csv", "parquet", "jsonl", "shopify", "merchant-tsv",
                    "merchant-xml"] | None = None
    #: Shopify product statuses rendered; other products' rows are skipped (not rows).
    status: tuple[Literal["active", "draft", "archived", "unlisted"], ...] = Field(
        ("active",), min_length=1)
    #: A Shopify variant without a SKU: a stable id from handle and option values, or a reject.
    missing_sku: Literal["derive", "reject"] = "derive"


class OutputSpec(Strict):
    uri: str = Field(min_length=1)
    #: A local ``uri`` that every node of the cluster mounts (NFS, a PersistentVolume): only
    #: then may a multi-node Ray write to a local path.
    shared_mount: bool = False
    image_format: Literal["png", "webp", "jpeg"] = "png"
    quality: int = Field(92, ge=1, le=100)
    png_compression: int = Field(1, ge=0, le=9)


class StorageSpec(Strict):
    """S3-compatible store settings; unset ones come from the environment (README)."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] | None = None
    retry_mode: Literal["standard", "adaptive"] | None = None
    max_attempts: int | None = Field(None, ge=1, le=20)
    create_only: Literal["auto", "if-none-match", "checked"] | None = None


class PromptSpec(Strict):
    template: str = Field(min_length=1)
    negative: str = ""


class ResourcesSpec(Strict):
    num_gpus: float | None = Field(None, ge=0)
    num_cpus: float | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1, le=4096)
    concurrency: int | None = Field(None, ge=1, le=1024)


class StageSpec(Strict):
    kind: str
    model: str
    name: str | None = None
    source: str | None = None
    revision: str | None = None
    allow_pickle: bool = False
    params: dict[str, Any] = Field(default_factory=dict)
    resources: ResourcesSpec = ResourcesSpec()


class BudgetSpec(Strict):
    """``budget:``: the run's cap in dollars (``factory.cost.budget``); rows past it are deferred."""

    usd: Decimal = Field(gt=0)


class JobSpec(Strict):
    name: str = Field(min_length=1, max_length=128)
    manifest: ManifestSpec
    output: OutputSpec
    run_id: str | None = None
    seed: int = Field(0, ge=0, lt=2**63)
    variant: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    prompt: PromptSpec | None = None
    storage: StorageSpec = StorageSpec()
    keep_intermediates: list[str] = Field(default_factory=list)
    #: Consecutive CPU stages run in one actor pool (``stages.chain``); false: a pool each.
    fuse_cpu_stages: bool = True
    #: The precision of every torch stage that does not set its own ``params.dtype``
    #: (``stages.precision``): ``auto`` resolves per device; ``float32`` pins full precision.
    dtype: Dtype = "auto"
    seasons: list[SeasonSpec] = Field(default_factory=list)
    schedules: list[ScheduleSpec] = Field(default_factory=list)
    stages: list[StageSpec] = Field(min_length=1)
    #: Channel presets by name, or mappings of ``factory.spec.channels.Channel`` fields.
    channels: list[str | dict[str, Any]] = Field(default_factory=list)
    #: Prices per device type and the GPU type used (``factory.spec.prices``).
    pricing: PricingSpec = PricingSpec()
    #: Named chains of the stages, picked per row by a manifest column (``factory.spec.routes``).
    routes: RoutesSpec | None = None
    #: A cap on the run's dollars (``factory.cost.budget``); ``--budget`` overrides it.
    budget: BudgetSpec | None = None
    #: A brand QA gate on what the stages measure (``factory.spec.qa``).
    qa: QaSpec | None = None
    #: Webhooks told when a run ends (``factory.spec.notify``); not part of a run's identity.
    notify: NotifySpec | None = None
    #: Publishing each committed run back to its catalog's formats (``factory.spec.publish``);
    #: not part of a run's identity.
    publish: PublishSpec | None = None


@dataclass(frozen=True)
class Job:
    """A validated job: everything the pipeline needs, frozen."""

    name: str
    source: str
    spec_hash: str
    #: An explicit run id (``run_id:`` in the spec, or ``--run-id``); None derives one from
    #: the run's inputs (``factory.run.identity``) once the manifest has been scanned.
    run_id: str | None
    manifest_uri: str
    manifest_format: str
    output: OutputSpec
    seed: int
    variant: str
    prompt_template: str
    negative_template: str
    template_fields: tuple[str, ...]
    stages: tuple[StagePlan, ...]
    s3: S3Options = S3Options()
    keep_intermediates: tuple[str, ...] = ()
    #: Consecutive CPU-only stages share one actor pool (``stages.chain.pools``).
    fuse_cpu_stages: bool = True
    #: How a commerce export becomes manifest rows (status filter, SKU-less variants).
    catalog: CatalogOptions = CatalogOptions()
    seasons: tuple[SeasonSpec, ...] = ()
    schedules: tuple[ScheduleSpec, ...] = ()
    season: str | None = None
    warnings: tuple[str, ...] = ()
    #: One asset per channel and row; empty: one asset per row.
    channels: tuple[Channel, ...] = ()
    #: The run's price table (``pricing:`` over ``factory.spec.prices``'s defaults).
    prices: Prices = Prices()
    #: Routes by tier (``factory.spec.routes``); None: every row runs every stage.
    routes: Routes | None = None
    #: The run's cap in dollars (``budget.usd``, ``--budget``); None: no cap. Part of the
    #: run's inputs (``factory.run.identity``), not of ``spec_hash``.
    budget_usd: Decimal | None = None
    #: The brand QA gate (``factory.spec.qa``); None: no gate, no extra pass.
    qa: QaConfig | None = None
    #: The webhooks told when a run ends (``factory.spec.notify``); None: none.
    notify: NotifyConfig | None = None
    #: The formats each committed run is published in (``factory.spec.publish``); None: none.
    publish: PublishConfig | None = None
    #: The assets' key fingerprints (``factory.spec.job_keys``), derived from the fields above.
    keys: JobKeys = field(init=False, repr=False, compare=False)
    #: The actor pools and what each asks Ray for (``stages.chain.pool_layout``), likewise.
    pools: tuple[Pool, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Derived here rather than passed in: every Job (parsed, seasoned, overridden) carries
        # the keys and pools of its own stages and output, so none can hold a stale copy.
        object.__setattr__(self, "pools", pool_layout(
            self.stages, fuse=self.fuse_cpu_stages, keep=self.keep_intermediates))
        object.__setattr__(self, "keys", job_keys(
            self.stages, image_format=self.output.image_format, quality=self.output.quality,
            routes=self.routes, qa=self.qa, channels=self.channels,
            keep=self.keep_intermediates))

    def with_season(self, name: str | None, *, today: date | None = None) -> Job:
        """The job inside a season: by ``name``, or the season whose window holds ``today``
        when ``name`` is None; ``"none"`` means no season. The overlay's prompt is appended to
        the prompt template, its palette replaces every recolor stage's, its LoRA every lora
        stage's; the season is one of the run's inputs (the derived run id names it)."""
        if name == "none" or not self.seasons:
            if name not in (None, "none"):
                raise SpecError(self.source, [f"season '{name}': the spec has no seasons"])
            return self
        if name is None:
            today = today or datetime.now(timezone.utc).date()
            season = next((s for s in self.seasons if s.contains(today)), None)
            if season is None:
                return self
        else:
            season = next((s for s in self.seasons if s.name == name), None)
            if season is None:
                raise SpecError(self.source, [f"season '{name}': not in the spec (seasons: "
                                              f"{', '.join(s.name for s in self.seasons)})"])
        stages = tuple(season_stage(plan, season) for plan in self.stages)
        template = self.prompt_template + season.prompt
        return replace(self, stages=stages, prompt_template=template, season=season.name,
                       template_fields=tuple(dict.fromkeys(
                           self.template_fields + template_fields(season.prompt))))

    def with_overrides(self, *, output_uri: str | None = None, run_id: str | None = None,
                       budget_usd: Decimal | None = None) -> Job:
        """The same job with the CLI's ``--output``/``--run-id``/``--budget`` applied."""
        job = self
        if budget_usd is not None:
            if not budget_usd.is_finite() or not budget_usd > 0:
                raise SpecError(self.source, [f"budget.usd: must be a number > 0 (got "
                                              f"{budget_usd})"])
            job = replace(job, budget_usd=budget_usd)
        if output_uri:
            job = replace(job, output=job.output.model_copy(update={"uri": output_uri}))
        if run_id:
            _check_run_id(run_id, self.source)
            job = replace(job, run_id=run_id)
        return job


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}'", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path, error: type[SpecError] = SpecError) -> Any:
    """A spec file's YAML document (a key given twice is an error); an unreadable file or bad
    YAML raises ``error`` naming the file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(source, [f"cannot read: {exc}"]) from exc
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise error(source, [f"not valid YAML: {exc}"]) from exc


def load_job(path: str | Path) -> Job:
    """Read and validate a job spec file."""
    return parse_job(read_yaml(path), source=str(path))


def parse_job(data: Any, *, source: str = "<spec>") -> Job:
    """Validate a parsed YAML document into a ``Job``."""
    if not isinstance(data, dict):
        raise SpecError(source, ["top level: expected a mapping of keys"])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, _pydantic_problems(exc)) from exc
    problems: list[str] = []
    warnings: list[str] = []
    try:
        s3_options = S3Options.from_settings(**spec.storage.model_dump())
    except (TypeError, ValueError) as exc:
        problems.append(f"storage: {exc}")
        s3_options = S3Options()
    plans = _plan_stages(spec, problems, s3_options)
    fields: tuple[str, ...] = ()
    if spec.prompt is not None:
        try:
            fields = template_fields(spec.prompt.template) + template_fields(spec.prompt.negative)
        except TemplateError as exc:
            problems.append(f"prompt.template: {exc}")
    routes = _resolve_routes(spec, plans, problems, warnings)
    if routes is None:
        _check_chain(spec, plans, problems, warnings)
    else:  # each stage serves the routes that use it (``stages.base.Stage``)
        plans = [replace(p, routes=routes.serving(p.name)) for p in plans]
    if spec.run_id is not None and not _RUN_ID.fullmatch(spec.run_id):
        problems.append(f"run_id: {shown(spec.run_id)} must match {_RUN_ID.pattern}")
    _check_names(spec, problems)
    manifest_format = spec.manifest.format or _infer_format(spec.manifest.uri, problems)
    names = [p.name for p in plans]
    check_seasons(spec.seasons, spec.schedules, problems)
    channels = _resolve_channels(spec, problems)
    prices = resolve_prices(spec.pricing, problems=problems,
                            base_dir=Path(source).parent if Path(source).is_file() else None)
    for i, name in enumerate(spec.keep_intermediates):
        if name not in names:
            problems.append(f"keep_intermediates[{i}]: no stage named '{name}' "
                            f"(stages: {', '.join(names)})")
    qa = resolve_qa(spec.qa, plans, routes, problems) if spec.qa is not None else None
    notify = resolve_notify(spec.notify, problems) if spec.notify is not None else None
    publish = resolve_publish(
        spec.publish, channels=tuple(c.name for c in channels), manifest_format=manifest_format,
        problems=problems, warnings=warnings) if spec.publish is not None else None
    if problems:
        raise SpecError(source, problems)
    # prices change what a run costs, not what it renders: they are not part of its identity;
    # a budget is, as a run input of its own (``factory.run.identity``), whether spec or --budget;
    # webhooks change who hears of a run, not what it renders; publishing, where it is written
    hashed = {k: v for k, v in data.items()
              if k not in ("pricing", "budget", "notify", "publish")}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()
    return Job(
        name=spec.name,
        source=source,
        spec_hash=digest,
        run_id=spec.run_id,
        manifest_uri=spec.manifest.uri,
        manifest_format=manifest_format,
        output=spec.output,
        seed=spec.seed,
        variant=spec.variant,
        prompt_template=spec.prompt.template if spec.prompt else "",
        negative_template=spec.prompt.negative if spec.prompt else "",
        template_fields=tuple(dict.fromkeys(fields)),
        stages=tuple(plans),
        s3=s3_options,
        keep_intermediates=tuple(dict.fromkeys(spec.keep_intermediates)),
        fuse_cpu_stages=spec.fuse_cpu_stages,
        catalog=CatalogOptions(statuses=tuple(dict.fromkeys(spec.manifest.status)),
                               missing_sku=spec.manifest.missing_sku),
        seasons=tuple(spec.seasons),
        schedules=tuple(spec.schedules),
        warnings=tuple(warnings),
        channels=channels,
        prices=prices,
        routes=routes,
        budget_usd=spec.budget.usd if spec.budget is not None else None,
        qa=qa,
        notify=notify,
        publish=publish,
    )


def _plan_stages(spec: JobSpec, problems: list[str], s3_options: S3Options) -> list[StagePlan]:
    plans: list[StagePlan] = []
    names: set[str] = set()
    for i, stage in enumerate(spec.stages):
        where = f"stages[{i}]"
        try:
            card = get_card(stage.model, stage.kind)
        except UnknownModelError as exc:
            problems.append(f"{where}.model: {exc}")
            continue
        if card.kind != stage.kind:
            problems.append(f"{where}.kind: model '{card.name}' is a '{card.kind}' stage, "
                            f"not '{stage.kind}'")
            continue
        name = stage.name or stage.kind
        if name in names:
            problems.append(f"{where}.name: stage name '{name}' is used twice; give each a name")
        names.add(name)
        given = stage.params
        if spec.dtype != "auto" and "dtype" in card.params.model_fields:
            given = {"dtype": spec.dtype, **stage.params}  # the stage's own dtype wins
        try:
            params = card.make_params(given)  # the card's defaults, key by key
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, prefix=f"{where}.params"))
            continue
        overrides = {k: v for k, v in stage.resources.model_dump().items() if v is not None}
        resources = replace(card.resources, **overrides) if overrides else card.resources
        if resources.num_gpus > 0 and card.cpu_only:
            problems.append(f"{where}.resources.num_gpus: {card.name} runs on the CPU and "
                            "cannot use a GPU; set it to 0")
        source = resolve_source(stage.source or card.source, settings.models_dir())
        revision = stage.revision or card.revision
        try:  # a stage without weights (no source) is its revision
            weights = (weights_identity(source, revision, s3_options=s3_options)
                       if stage.source or card.source else revision)
        except Exception as exc:  # noqa: BLE001 - a spec problem naming the stage, not a crash
            problems.append(f"{where}.source: cannot read the weights at {source}: {exc}")
            continue
        plans.append(StagePlan(
            name=name,
            card=card,
            params=params,
            source=source,
            revision=revision,
            weights=weights,
            resources=resources,
            allow_pickle=stage.allow_pickle,
            source_ref=stage.source or card.source,
            models_dir=str(settings.models_dir()),
            s3=s3_options,
            cache_dir=str(settings.cache_dir()),
        ))
    return plans


def _check_chain(spec: JobSpec, plans: list[StagePlan], problems: list[str],
                 warnings: list[str], *, where: str = "stages") -> None:
    """Each stage's inputs come from the rows or an earlier stage of ``plans`` (the whole
    chain, or one route's: ``where`` is the key path problems name)."""
    available = set(ROW_COLUMNS)
    upscaled = cut = False
    for i, plan in enumerate(plans):
        if plan.card.kind == "source":
            if i:
                problems.append(f"{where}[{i}]: the source stage '{plan.name}' turns each "
                                "row's photo into its first image: it must come first")
            available.add(SOURCE_URI)
        if plan.card.kind == "scene" and not cut:
            problems.append(f"{where}[{i}]: scene stage '{plan.name}' builds the scene "
                            "around a cut-out: put a segment stage (segment/studio-key for "
                            "studio shots) before it")
        cut = cut or plan.card.kind == "segment"
        for column in plan.card.inputs:
            if column == "prompt" and spec.prompt is None:
                problems.append(f"{where}[{i}]: '{plan.card.name}' needs a prompt; add "
                                "'prompt.template' to the spec")
            elif column not in available:
                problems.append(f"{where}[{i}]: '{plan.card.name}' needs column '{column}', "
                                "which no earlier stage produces")
        if plan.card.kind in DIFFUSION_KINDS and upscaled:
            warnings.append(f"{where}[{i}]: diffusion stage '{plan.name}' runs after an "
                            "upscale; its cost grows with the pixel count")
        upscaled = upscaled or plan.card.kind == "upscale"
        available.update(plan.card.outputs)


def _resolve_routes(spec: JobSpec, plans: list[StagePlan], problems: list[str],
                    warnings: list[str]) -> Routes | None:
    """``routes:`` checked against the stages (``factory.spec.routes``), each route as a chain of
    its own; None without ``routes:``."""
    if spec.routes is None:
        return None
    complete = len(plans) == len(spec.stages)  # else a stage's own problem is reported

    def check(indices: list[int], where: str) -> None:
        if complete:
            _check_chain(spec, [plans[i] for i in indices], problems, warnings, where=where)

    return resolve_routes(spec.routes, [stage.name or stage.kind for stage in spec.stages],
                          problems, check_chain=check, keep=spec.keep_intermediates)


def _resolve_channels(spec: JobSpec, problems: list[str]) -> tuple[Channel, ...]:
    from factory.spec.channels import resolve

    try:
        return resolve(spec.channels)
    except ChannelError as exc:
        problems.extend(exc.problems)
        return ()


def _check_run_id(run_id: str, source: str) -> None:
    if not _RUN_ID.fullmatch(run_id):
        raise SpecError(source, [f"run_id: {shown(run_id)} must match {_RUN_ID.pattern}"])


def _check_names(spec: JobSpec, problems: list[str]) -> None:
    """Names that reach keys and paths are plain names: a stage's (``intermediates/<stage>/``,
    its actor pool), a route's (its rows' ``route`` column, the summary); the job's name is
    free text (run ids take a slug of it) but holds no control character. Channel, season and
    schedule names are held to the same pattern by their own fields."""
    if not spec.name.isprintable():
        problems.append(f"name: {shown(spec.name)} holds control characters")
    for i, stage in enumerate(spec.stages):
        if stage.name is not None and not _KEY_NAME.fullmatch(stage.name):
            problems.append(f"stages[{i}].name: {shown(stage.name)} must match "
                            f"{_KEY_NAME.pattern} (it names the stage's keys)")
    for name in (spec.routes.chains if spec.routes is not None else ()):
        # ``resolve_routes`` reports every other bad route name; it matches with ``$``
        if not _KEY_NAME.fullmatch(name) and _KEY_NAME.fullmatch(name.rstrip("\n")):
            problems.append(f"routes.chains.{escaped(name)}: a route name must match "
                            f"{_KEY_NAME.pattern} (it ends in a newline)")


def _infer_format(uri: str, problems: list[str]) -> str:
    # A .csv whose header is a Shopify product export's is read as one (factory.catalog.manifest).
    for suffix, fmt in ((".csv", "csv"), (".parquet", "parquet"), (".jsonl", "jsonl"),
                        (".ndjson", "jsonl"), (".tsv", "merchant-tsv"), (".txt", "merchant-tsv"),
                        (".xml", "merchant-xml"), (".rss", "merchant-xml")):
        if uri.lower().endswith(suffix):
            return fmt
    problems.append(f"manifest.format: cannot tell the format of '{uri}'; set it to csv, "
                    "parquet, jsonl, shopify, merchant-tsv or merchant-xml")
    return ""


def _pydantic_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for err in exc.errors():
        parts = [prefix] if prefix else []
        for loc in err["loc"]:
            if isinstance(loc, int):
                parts[-1:] = [f"{parts[-1]}[{loc}]"] if parts else [f"[{loc}]"]
            else:
                parts.append(str(loc))
        key = ".".join(parts) or "top level"
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        # ``notify:`` may hold a secret pasted where it does not belong: never quoted back
        quiet = err["type"] in ("extra_forbidden", "missing") or err["loc"][:1] == ("notify",)
        got = "" if quiet else f" (got {err['input']!r})"
        problems.append(f"{key}: {message}{got}"[:500])
    return problems
