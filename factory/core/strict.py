"""The one base of every typed spec section: frozen, and strict about unknown keys."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A frozen pydantic model that rejects unknown keys.

    A spec section (job, season, QA gate, channel, pricing, a stage's params) is parsed once
    and then only read: frozen keeps it so, and an unknown key is an error naming it, never a
    silently ignored typo.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
