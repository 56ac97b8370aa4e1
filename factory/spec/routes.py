"""Routing by tier: a manifest column picks a route, a named chain of the spec's stages.

A catalog is not uniform: a hero image earns a premium chain, ten thousand thumbnails do not.
``routes:`` in a job spec names chains drawn from its ``stages:`` list::

    routes:
      column: tier              # the manifest column that picks the route (default "tier")
      default: thumbnail        # for rows whose column is empty or missing; none: a reject
      chains:
        thumbnail: [generate_fast, segment, recolor]
        hero: [generate, segment, upscale, recolor, lora]

Each route's stages keep their order in ``stages:``, and each route is checked as a chain of
its own (every stage's inputs made by the rows or an earlier stage of that route). The job
still runs one plan through one set of actor pools: every stage's pool serves each route that
uses it, and a stage passes the rows of other routes through untouched (``stages.base.Stage``
reads the routes it serves from its plan). A row's route is part of its work item (the
``route`` column), its asset key's chain fingerprint is its route's chain, and the lineage and
the run summary record it. A row whose column names no route is rejected like any bad row.

This module parses and checks ``routes:`` (``resolve_routes``, called by ``factory.spec.job``)
into a frozen ``Routes``, the name other code looks routes up by (``Routes.get``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from factory.core.strict import Strict
from stages.base import StagePlan

#: The lineage and work-item column that holds a row's route.
ROUTE_COLUMN = "route"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class RoutesSpec(Strict):
    """``routes:`` in a job spec, as written (``resolve_routes`` checks it against stages)."""

    column: str = Field("tier", min_length=1, max_length=128)
    default: str | None = None
    chains: dict[str, list[str]] = Field(min_length=1)


@dataclass(frozen=True)
class Route:
    """One route: its name and its stages' names, in the order the spec lists the stages."""

    name: str
    stages: tuple[str, ...]

    def __contains__(self, stage: str) -> bool:
        return stage in self.stages


@dataclass(frozen=True)
class Routes:
    """A job's routes: which manifest column picks one, the default, and the chains."""

    column: str
    default: str | None
    chains: tuple[Route, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.chains)

    def get(self, name: str) -> Route:
        """The route called ``name``; ``KeyError`` naming the routes there are."""
        for route in self.chains:
            if route.name == name:
                return route
        raise KeyError(f"no route named '{name}' (routes: {', '.join(self.names)})")

    def pick(self, fields: Mapping[str, Any]) -> Route:
        """The route a manifest row's fields pick; ``ValueError`` with the reason it picks
        none (the caller rejects the row, naming ``column``)."""
        value = str(fields.get(self.column) or "").strip()
        if not value:
            if self.default is None:
                raise ValueError(f"empty, and routes.default is not set (routes: "
                                 f"{', '.join(self.names)})")
            return self.get(self.default)
        try:
            return self.get(value)
        except KeyError:
            raise ValueError(f"'{value[:64]}' names no route (routes: "
                             f"{', '.join(self.names)})") from None

    def serving(self, stage: str) -> tuple[str, ...]:
        """The routes that go through ``stage``."""
        return tuple(r.name for r in self.chains if stage in r)


def resolve_routes(spec: RoutesSpec, stage_names: list[str], problems: list[str], *,
                   check_chain: Callable[[list[int], str], None],
                   keep: list[str] | tuple[str, ...] = ()) -> Routes:
    """Check ``routes:`` against the spec's stages and freeze it.

    Args:
        spec: the parsed ``routes:`` mapping.
        stage_names: the names of the spec's stages that resolved, in ``stages:`` order.
        problems: ``routes.<key>: message`` lines are appended here.
        check_chain: checks one route as a chain, given the indices of its stages in
            ``stage_names`` and the key path to name (``routes.chains.<name>``).
        keep: the spec's ``keep_intermediates``: not supported with routes (the chain up to
            a stage, which keys an intermediate, differs per route).

    Returns:
        The routes (complete only when no problem was appended).
    """
    import re

    position = {name: i for i, name in enumerate(stage_names)}
    chains: list[Route] = []
    for name, stages in spec.chains.items():
        where = f"routes.chains.{name}"
        if not re.fullmatch(_NAME, name):
            problems.append(f"{where}: a route name must match {_NAME}")
        if not stages:
            problems.append(f"{where}: a route needs at least one stage")
            continue
        indices: list[int] = []
        for j, stage in enumerate(stages):
            if stage not in position:
                problems.append(f"{where}[{j}]: no stage named '{stage}' "
                                f"(stages: {', '.join(stage_names)})")
            elif position[stage] in indices:
                problems.append(f"{where}[{j}]: stage '{stage}' is listed twice")
            elif indices and position[stage] < indices[-1]:
                problems.append(f"{where}[{j}]: stage '{stage}' comes before "
                                f"'{stage_names[indices[-1]]}' in stages:; a route keeps "
                                "the stages' order")
            else:
                indices.append(position[stage])
        if len(indices) == len(stages):
            check_chain(indices, where)
        chains.append(Route(name=name, stages=tuple(stages)))
    names = [r.name for r in chains]
    if spec.default is not None and spec.default not in spec.chains:
        problems.append(f"routes.default: no route named '{spec.default}' "
                        f"(routes: {', '.join(spec.chains)})")
    if keep:
        problems.append("keep_intermediates: not supported with routes (an intermediate's "
                        "chain differs per route); remove one of them")
    used = {stage for stages in spec.chains.values() for stage in stages}
    for i, stage in enumerate(stage_names):
        if stage not in used:
            problems.append(f"stages[{i}]: stage '{stage}' is on no route; add it to one of "
                            f"routes.chains ({', '.join(names)}) or remove it")
    return Routes(column=spec.column, default=spec.default, chains=tuple(chains))


def route_stages(stages: tuple[StagePlan, ...], route: Route) -> tuple[StagePlan, ...]:
    """The ``StagePlan``s of ``route``, in chain order (a job's ``stages`` filtered)."""
    return tuple(plan for plan in stages if plan.name in route)


def describe(routes: Routes) -> list[str]:
    """Lines for ``factory validate``: the column, the default and each route's chain."""
    default = f"default '{routes.default}'" if routes.default else "no default (empty: rejected)"
    lines = [f"routes by column '{routes.column}', {default}:"]
    lines += [f"  route {r.name}: {' → '.join(r.stages)}" for r in routes.chains]
    return lines
