"""What an asset costs: device seconds per stage times an hourly price per device type.

A stage's seconds come from its own timing (``ms_<stage>`` in the lineage); its device share
is what the actor of its pool reserved from Ray (``num_gpus``, ``num_cpus``; a chain of CPU
stages reserves the most any member asks, ``stages.chain.pool_resources``). So per asset and
stage::

    gpu_s_<stage> = seconds x GPUs the actor reserved
    cpu_s_<stage> = seconds x CPUs the actor reserved
    usd_<stage>   = gpu_s x price(gpu type) / 3600 + cpu_s x price("cpu") / 3600

A hosted stage (``stages.hosted``: a model behind a provider's API) holds no device of ours
worth pricing: it is priced by what the provider bills, per asset::

    usd_<stage>   = billed units x the price per unit (the card's published one, or
                    ``pricing.usd_per_unit`` for its card)

with its ``gpu_s`` and ``cpu_s`` 0. Every figure is rounded to a nano-dollar (``USD_PLACES``) and kept as decimals, so ``cost_usd`` is exactly the
sum of a row's stages, and a run's totals exactly the sums of its rows. Time a stage spent on
a row that failed there is not charged to any asset (the lineage has no seconds for it).

Ray does not say which GPU model a node has: ``pricing.gpu`` in the job spec does.

Default prices (``DEFAULT_USD_PER_HOUR``): AWS EC2 On-Demand, Linux, US East (N. Virginia),
per device: the instance's hourly price divided by its GPUs (so a GPU-hour carries its share
of the host's CPUs and memory), and a general-purpose instance's price per vCPU (Ray's
``num_cpus`` counts logical CPUs: vCPUs). Other clouds ask far less for the same GPU (the
docs' cost page lists the ranges read in 2026): put your own contract's prices in
``pricing:`` or in a prices file.

- ``h100`` 6.88: p5.48xlarge (8 x H100 80GB) $55.04/h / 8, after AWS's June 2025 cut.
- ``a100`` 4.10: p4d.24xlarge (8 x A100 40GB) $32.77/h / 8, as listed in 2024 (not refreshed).
- ``l4`` 0.80: g6.xlarge (1 x L4, 4 vCPU) $0.8048/h.
- ``cpu`` 0.05: m7i.large (2 vCPU) $0.1008/h / 2, per vCPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field

from factory.core.strict import Strict
from stages.chain import Pool

if TYPE_CHECKING:
    import pyarrow as pa

#: Hourly on-demand prices per device (see the module docstring for their sources and date).
DEFAULT_USD_PER_HOUR: Mapping[str, float] = MappingProxyType({
    "h100": 6.88,   # AWS p5.48xlarge $55.04/h / 8 GPUs, us-east-1, after the June 2025 cut
    "a100": 4.10,   # AWS p4d.24xlarge $32.77/h / 8 GPUs, us-east-1, as listed in 2024
    "l4": 0.80,     # AWS g6.xlarge $0.8048/h (1 GPU, 4 vCPU), us-east-1
    "cpu": 0.05,    # AWS m7i.large $0.1008/h / 2 vCPU, us-east-1
})
DEFAULT_GPU = "h100"
CPU = "cpu"
#: Dollars are kept to this many decimal places (a nano-dollar) in the lineage and totals.
USD_PLACES = 9
USD_TYPE_PRECISION = 18  # decimal128(18, 9): up to a billion dollars per asset
_QUANTUM = Decimal(1).scaleb(-USD_PLACES)
_DEVICE = r"^[a-z0-9][a-z0-9_.-]{0,31}$"


class PricingSpec(Strict):
    """``pricing:`` in a job spec: which GPU the cluster has and prices over the defaults.

    Attributes:
        gpu: the device type the GPU stages run on (a key of the price table).
        file: a YAML or JSON file with the same keys (``gpu``, ``usd_per_hour``); relative to
            the job spec. The spec's own keys win over the file's, the file's over defaults.
        usd_per_hour: hourly prices per device type (``cpu`` is per logical CPU).
        usd_per_unit: prices per billed unit of hosted cards, by card name
            (``generate/fal-flux-pro``), over the cards' published prices.
    """

    gpu: str | None = Field(None, pattern=_DEVICE)
    file: str | None = Field(None, min_length=1)
    usd_per_hour: dict[str, float] = Field(default_factory=dict)
    usd_per_unit: dict[str, float] = Field(default_factory=dict)


class _PriceFile(Strict):
    gpu: str | None = Field(None, pattern=_DEVICE)
    usd_per_hour: dict[str, float] = Field(default_factory=dict)
    usd_per_unit: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True)
class Prices:
    """The price table of a run: hourly dollars per device type, and the GPU type used."""

    gpu: str = DEFAULT_GPU
    usd_per_hour: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_USD_PER_HOUR))
    #: prices per billed unit of hosted cards, by card name, over the cards' own
    usd_per_unit: Mapping[str, float] = field(default_factory=dict)

    @property
    def gpu_usd_per_hour(self) -> float:
        return self.usd_per_hour[self.gpu]

    @property
    def cpu_usd_per_hour(self) -> float:
        return self.usd_per_hour[CPU]

    def usd(self, gpu_s: float, cpu_s: float) -> Decimal:
        """Dollars for device seconds, rounded to ``USD_PLACES``."""
        exact = (Decimal(repr(gpu_s)) * Decimal(repr(self.gpu_usd_per_hour))
                 + Decimal(repr(cpu_s)) * Decimal(repr(self.cpu_usd_per_hour))) / 3600
        return exact.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)

    def unit_price(self, share: StageShare) -> float:
        """A hosted stage's price per billed unit: the job's for its card, else the card's."""
        return self.usd_per_unit.get(share.model, share.usd_per_unit or 0.0)

    def units_usd(self, units: float, share: StageShare) -> Decimal:
        """Dollars for a hosted stage's billed units, rounded to ``USD_PLACES``."""
        exact = Decimal(repr(float(units))) * Decimal(repr(self.unit_price(share)))
        return exact.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)

    def as_dict(self) -> dict[str, Any]:
        out = {"gpu": self.gpu, "usd_per_hour": dict(sorted(self.usd_per_hour.items()))}
        if self.usd_per_unit:
            out["usd_per_unit"] = dict(sorted(self.usd_per_unit.items()))
        return out

    def __hash__(self) -> int:  # a Job (frozen, hashable) holds its prices
        return hash((self.gpu, tuple(sorted(self.usd_per_hour.items())),
                     tuple(sorted(self.usd_per_unit.items()))))


def resolve_prices(spec: PricingSpec, *, base_dir: Path | None,
                   problems: list[str]) -> Prices:
    """The run's prices: defaults, then ``spec.file``, then the spec's own keys. Problems are
    appended as ``pricing.<key>: message`` lines (the file's as ``pricing.file (<path>): ...``)."""
    table = dict(DEFAULT_USD_PER_HOUR)
    units: dict[str, float] = {}
    gpu = DEFAULT_GPU
    if spec.file:
        loaded = _read_file(spec.file, base_dir, problems)
        if loaded is not None:
            table.update(loaded.usd_per_hour)
            units.update(loaded.usd_per_unit)
            gpu = loaded.gpu or gpu
    table.update(spec.usd_per_hour)
    units.update(spec.usd_per_unit)
    gpu = spec.gpu or gpu
    for device, price in spec.usd_per_hour.items():
        _check_price(f"pricing.usd_per_hour.{device}", device, price, problems)
    for card, price in spec.usd_per_unit.items():
        _check_unit_price(f"pricing.usd_per_unit.{card}", card, price, problems)
    if gpu not in table:
        problems.append(f"pricing.gpu: '{gpu}' has no price (priced: {', '.join(sorted(table))});"
                        f" add it to pricing.usd_per_hour")
    return Prices(gpu=gpu, usd_per_hour=MappingProxyType(table),
                  usd_per_unit=MappingProxyType(units))


def _check_unit_price(key: str, card: str, price: float, problems: list[str]) -> None:
    from stages.registry import REGISTRY

    hosted = [name for name, c in REGISTRY.items() if c.hosted is not None]
    if card not in hosted:
        problems.append(f"{key}: not a hosted card (hosted: {', '.join(sorted(hosted))})")
    if not price >= 0 or price == float("inf"):
        problems.append(f"{key}: a price per unit must be a finite number >= 0 (got {price!r})")


def _check_price(key: str, device: str, price: float, problems: list[str]) -> None:
    import re

    if not re.match(_DEVICE, device):
        problems.append(f"{key}: device type must match {_DEVICE}")
    if not price >= 0 or price == float("inf"):
        problems.append(f"{key}: an hourly price must be a finite number >= 0 (got {price!r})")


def _read_file(name: str, base_dir: Path | None, problems: list[str]) -> _PriceFile | None:
    from pydantic import ValidationError

    path = Path(name) if Path(name).is_absolute() or base_dir is None else base_dir / name
    where = f"pricing.file ({path})"
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        problems.append(f"{where}: cannot read: {exc}")
        return None
    try:
        loaded = _PriceFile.model_validate(data if data is not None else {})
    except ValidationError as exc:
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "top level"
            message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{where}: {key}: {message}")
        return None
    for device, price in loaded.usd_per_hour.items():
        _check_price(f"{where}: usd_per_hour.{device}", device, price, problems)
    for card, price in loaded.usd_per_unit.items():
        _check_unit_price(f"{where}: usd_per_unit.{card}", card, price, problems)
    return loaded


@dataclass(frozen=True)
class StageShare:
    """The device share an actor of a stage's pool reserves; for a hosted stage none, and
    its card's price per billed unit (``usd_per_unit``) instead."""

    name: str
    model: str
    gpus: float
    cpus: float
    usd_per_unit: float | None = None

    @property
    def hosted(self) -> bool:
        return self.usd_per_unit is not None


def stage_shares(pools: Sequence[Pool]) -> tuple[StageShare, ...]:
    """Each stage's reserved share, in chain order, from the job's pools (``Job.pools``): its
    pool's resources (a fused chain of CPU stages holds the most any member asks while each of
    them runs); a hosted stage is priced by its billed units instead."""
    return tuple(StageShare(p.name, p.card.name, 0.0, 0.0, p.card.hosted.usd_per_unit)
                 if p.card.hosted is not None else
                 StageShare(p.name, p.card.name, pool.resources.num_gpus,
                            pool.resources.num_cpus) for pool in pools for p in pool.plans)


@dataclass(frozen=True)
class CostModel:
    """Turns a lineage row's stage milliseconds into its device seconds and dollars.

    ``channels``: assets a rendered row becomes; its stage time is split evenly between them.
    """

    prices: Prices
    shares: tuple[StageShare, ...]
    channels: int = 1

    def columns(self) -> list[tuple[str, str]]:
        """Lineage columns, ``(name, "gpu"|"cpu"|"usd")`` per stage, then ``cost_usd``."""
        out = []
        for s in self.shares:
            out += [(f"gpu_s_{s.name}", "s"), (f"cpu_s_{s.name}", "s"), (f"usd_{s.name}", "usd")]
        return out + [("cost_usd", "usd")]

    def row(self, ms: Mapping[str, float | None],
            units: Mapping[str, float | None] = MappingProxyType({})) -> dict[str, Any]:
        """Cost columns of one asset from its ``ms_<stage>`` values (None or 0: not rendered
        here) and, for hosted stages, the units the provider billed (``<stage>_billed_units``)."""
        if not any(ms.values()) and not any(units.values()):
            # nothing rendered here (an asset already in the store: most rows of a refresh)
            return dict(self._unrendered)
        return self._priced(ms, units)

    @cached_property
    def _unrendered(self) -> dict[str, Any]:
        """The cost columns of a row no stage rendered, priced once."""
        return self._priced({}, {})

    def _priced(self, ms: Mapping[str, float | None],
                units: Mapping[str, float | None]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        total = Decimal(0)
        for s in self.shares:
            seconds = (ms.get(s.name) or 0.0) / 1000.0 / self.channels
            gpu_s, cpu_s = seconds * s.gpus, seconds * s.cpus
            if s.hosted:
                billed = units.get(s.name) or 0.0
                usd = self.prices.units_usd(billed / self.channels if billed == billed else 0.0,
                                            s)
            else:
                usd = self.prices.usd(gpu_s, cpu_s)
            out[f"gpu_s_{s.name}"], out[f"cpu_s_{s.name}"], out[f"usd_{s.name}"] = gpu_s, cpu_s, usd
            total += usd
        out["cost_usd"] = total
        return out


def usd_type() -> pa.DataType:
    """The Arrow type of dollar columns."""
    import pyarrow as pa

    return pa.decimal128(USD_TYPE_PRECISION, USD_PLACES)


@dataclass
class CostTotals:
    """A run's running cost totals per stage (exact decimal dollars)."""

    gpu_s: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    usd: dict[str, Decimal] = field(default_factory=dict)

    def add(self, stage: str, gpu_s: float, cpu_s: float, usd: Decimal) -> None:
        self.gpu_s[stage] = self.gpu_s.get(stage, 0.0) + gpu_s
        self.cpu_s[stage] = self.cpu_s.get(stage, 0.0) + cpu_s
        self.usd[stage] = self.usd.get(stage, Decimal(0)) + usd

    def add_row(self, priced: Mapping[str, Any], stages: Sequence[str], times: int = 1) -> None:
        """One row priced by ``CostModel.row``: its seconds and dollars per stage, ``times``
        over (a row's channel assets each carry its share)."""
        for stage in stages:
            self.add(stage, priced[f"gpu_s_{stage}"] * times, priced[f"cpu_s_{stage}"] * times,
                     priced[f"usd_{stage}"] * times)

    @property
    def total_usd(self) -> Decimal:
        return sum(self.usd.values(), Decimal(0))

    def summary(self, prices: Prices) -> dict[str, Any]:
        """The run summary's ``cost``: dollars as numbers with at most ``USD_PLACES`` places
        (``Decimal(repr(x))`` gives the exact decimal back)."""
        return {"usd": float(self.total_usd), **prices.as_dict(),
                "stages": {s: {"gpu_s": round(self.gpu_s[s], 6), "cpu_s": round(self.cpu_s[s], 6),
                               "usd": float(self.usd[s])} for s in self.usd}}
