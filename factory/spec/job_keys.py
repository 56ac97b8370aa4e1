"""What a job's assets are keyed by, derived once from the validated job (``Job.keys``).

A row's asset key is ``factory.spec.keys.asset_key(fingerprint, ext, row)``; the fingerprint
covers the row's chain (the job's, or its route's), the output encoding and, where a QA gate
applies, the gate. The row rules (that look a row up before rendering), the QA gate's
re-renders, the sink, the channel sink and the intermediates all read ``JobKeys``, so they
cannot disagree on a key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from factory.spec.channels import Channel
from factory.spec.keys import chain_fingerprint, channel_fingerprints, extension
from factory.spec.qa import QaConfig
from factory.spec.routes import Routes, route_stages
from stages.base import StagePlan

#: Intermediates are written as PNG whatever the output's encoding.
INTERMEDIATE_ENCODING = "png"


@dataclass(frozen=True)
class ChainKeys:
    """How one chain's assets are keyed: the job's whole chain, or one route's.

    Attributes:
        fingerprint: the chain fingerprint of its assets: stages, output encoding, QA gate.
        ext: its assets' file extension (``output.image_format``'s).
        channels: each channel's fingerprint (``factory.spec.keys.channel_fingerprints``);
            empty without ``channels:``.
        lookup: ``(fingerprint, extension)`` of the key a row is looked up by before it
            renders: its asset's or, with channels, its last channel's (the row's commit
            marker, ``factory.sink.channel_assets``).
    """

    fingerprint: str
    ext: str
    channels: tuple[str, ...]
    lookup: tuple[str, str]


@dataclass(frozen=True)
class JobKeys:
    """A job's asset-key fingerprints.

    Attributes:
        chains: each chain's keys: ``None`` for the job's whole chain (the only one of a job
            without routes), then each route's by name.
        intermediates: the fingerprint of the chain up to each stage of
            ``keep_intermediates``, by stage name.
    """

    chains: Mapping[str | None, ChainKeys]
    intermediates: Mapping[str, str]

    def chain(self, route: str | None = None) -> ChainKeys:
        """The keys of ``route``'s chain, or of the job's whole chain."""
        return self.chains[route]

    @property
    def routes(self) -> dict[str, ChainKeys]:
        """Each route's keys by name; empty without routes."""
        return {name: keys for name, keys in self.chains.items() if name is not None}


def job_keys(stages: tuple[StagePlan, ...], *, image_format: str, quality: int,
             routes: Routes | None, qa: QaConfig | None, channels: tuple[Channel, ...],
             keep: Sequence[str]) -> JobKeys:
    """Every fingerprint a job's keys use, from the job's validated parts.

    Args:
        stages: the job's stage plans, in chain order.
        image_format, quality: the output encoding (``output:``).
        routes: the job's routes, or None.
        qa: the job's QA gate, or None.
        channels: the job's channels (empty: one asset per row).
        keep: the stages whose intermediates are kept.
    """
    names = [None, *routes.names] if routes is not None else [None]
    chains = {name: _chain_keys(stages if name is None else route_stages(stages, routes.get(name)),
                                gate=_gate_text(qa, name), image_format=image_format,
                                quality=quality, channels=channels)
              for name in names}
    position = {plan.name: i for i, plan in enumerate(stages)}
    intermediates = {name: chain_fingerprint(stages[:position[name] + 1],
                                             encoding=INTERMEDIATE_ENCODING) for name in keep}
    return JobKeys(chains=chains, intermediates=intermediates)


def _chain_keys(chain: tuple[StagePlan, ...], *, gate: str, image_format: str, quality: int,
                channels: tuple[Channel, ...]) -> ChainKeys:
    fingerprint = chain_fingerprint(chain, encoding=f"{image_format}:{quality}{gate}")
    ext = extension(image_format)
    prints = channel_fingerprints(chain, tuple(c.fingerprint_text() + gate for c in channels))
    lookup = ((prints[-1], f"{channels[-1].name}.{channels[-1].extension}") if channels
              else (fingerprint, ext))
    return ChainKeys(fingerprint=fingerprint, ext=ext, channels=prints, lookup=lookup)


def _gate_text(qa: QaConfig | None, route: str | None) -> str:
    """A gated row's key names its gate (``factory.spec.qa``): "" where no gate applies, so the
    keys of a job without ``qa:`` are what they always were."""
    gate = qa.gate(route) if qa is not None else None
    return f":qa:{gate.fingerprint_text()}" if gate is not None else ""
