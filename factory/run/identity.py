"""What a run *is*: the inputs that decide its work, and the run id derived from them.

A run is identified by everything that decides which rows it renders and how: the job spec,
the manifest's content, ``--limit``, the season and the budget. The same inputs give the same
derived run id, so running a job again resumes (or reports) the same run; changed inputs give a
new run id, whose rows that are already in the store are still not rendered again (asset keys
are content-derived). An explicit run id (``run_id:`` in the spec, ``--run-id``) whose committed
run came from other inputs is an error that names the difference, never a silent no-op.

A budget (``budget.usd``, ``--budget``: ``factory.cost.budget``) decides how many rows a run renders,
so it is an input: a rerun with a larger budget is a new run, which renders the rows the first
left ``deferred`` and finds its finished rows in the store. Without a budget the inputs hash as
they did before budgets existed, so earlier runs keep their derived ids.

The inputs are recorded in the committed lineage table's footer summary (``inputs``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Mapping

#: How each input is described when two runs differ.
_LABELS = {"spec_hash": "job spec", "manifest_sha256": "manifest content",
           "manifest_rows": "manifest rows", "limit": "--limit", "season": "season",
           "budget_usd": "budget (USD)", "sources_sha256": "source photos"}


class RunInputsMismatch(ValueError):
    """An explicit run id whose committed run came from other inputs."""

    def __init__(self, run_id: str, differences: list[str]) -> None:
        self.run_id, self.differences = run_id, differences
        super().__init__(
            f"run '{run_id}' is already committed from other inputs: "
            + "; ".join(differences)
            + ". Nothing was rendered. Drop --run-id (the derived run id follows the inputs) "
            "or give a new one.")


@dataclass(frozen=True)
class RunInputs:
    """Everything that decides a run's work.

    Attributes:
        spec_hash: sha256 of the parsed job spec.
        manifest_sha256: sha256 over the manifest's records as the scan read them (row
            numbers, fields, parse errors), so any change to a row's content changes it.
        manifest_rows: rows the run covers (after ``--limit``).
        limit: ``--limit``, or None for the whole manifest.
        season: the season applied, or None.
        budget_usd: the run's budget in dollars (a normalised decimal string: ``budget_text``),
            or None for no cap.
        sources_sha256: in a job that starts from the catalog's photos (``factory.run.sources``):
            a hash of every row's photo content as fetched; None otherwise.
    """

    spec_hash: str
    manifest_sha256: str
    manifest_rows: int
    limit: int | None
    season: str | None
    budget_usd: str | None = None
    sources_sha256: str | None = None

    def digest(self) -> str:
        """A stable hash of the inputs (no budget, no photos: the same hash as before either
        existed)."""
        inputs = asdict(self)
        for optional in ("budget_usd", "sources_sha256"):
            if inputs[optional] is None:
                del inputs[optional]
        text = json.dumps(inputs, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def derived_run_id(self, job_name: str) -> str:
        """``<job name>[-<season>]-<12 hex digits of the inputs' hash>``."""
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", job_name).strip("-")[:64] or "job"
        season = f"-{self.season}" if self.season else ""
        return f"{slug}{season}-{self.digest()[:12]}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, recorded: Mapping[str, Any] | None) -> list[str]:
        """How a committed run's recorded inputs differ from these, one phrase each."""
        if not recorded:
            return ["the committed run records no inputs (it predates run identity)"]
        out = []
        for name, mine in self.as_dict().items():
            theirs = recorded.get(name)
            if theirs != mine:
                out.append(f"{_LABELS[name]} {_show(theirs)} then, {_show(mine)} now")
        return out


def budget_text(usd: Decimal | None) -> str | None:
    """A budget as ``RunInputs`` records it: ``0.50`` and ``0.5`` are the same budget."""
    return None if usd is None else format(usd.normalize(), "f")


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{40,}", value):
        return f"{value[:12]}…"
    return str(value)
