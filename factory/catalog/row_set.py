"""Which manifest rows a read keeps: the rows a run's first pass left to render."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class RowSet:
    """Manifest row numbers a read keeps: ``rows`` (sorted), or with ``keep`` False every row
    but those; ``of`` sends whichever list is shorter to the read tasks."""

    rows: np.ndarray
    keep: bool = True
    _lookup: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, wanted: np.ndarray, others: np.ndarray) -> RowSet | None:
        """The set of ``wanted`` rows, given the rows read that are not; None: every row."""
        if len(others) == 0:
            return None
        if len(wanted) <= len(others):
            return cls(np.unique(wanted), keep=True)
        return cls(np.unique(others), keep=False)

    def __contains__(self, row: int) -> bool:
        listed = self._lookup.get("rows")
        if listed is None:  # built once per read task, where the rows are checked
            listed = self._lookup["rows"] = frozenset(self.rows.tolist())
        return (row in listed) == self.keep
