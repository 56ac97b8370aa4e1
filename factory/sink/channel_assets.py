"""The sink of a job with ``channels:``: one asset per (manifest row, channel).

``write_channel_assets`` takes ``factory.sink.assets.write_assets``'s place at the end of the chain
when the job lists channels (``factory.run.pipeline.sink_task``). Each rendered row's finished
image is framed for every channel (``factory.spec.channels.render``), encoded once with the
generated-image XMP packet (``factory.core.provenance``), decoded and measured, and written
create-only under its channel's key (``factory.spec.keys.channel_key``). Every row leaves as one
lineage row per channel, so a run's lineage holds ``channels`` rows per manifest row that was
not rejected:

* ``ok``: written now, or found under its key (``written`` says which);
* ``failed`` with ``failed_stage = "channel"`` and ``channel_rule`` naming the rule the frame
  broke (``size``, ``fill``, ``background``, ``edge``, ``cutout``, ``bytes``, ``metadata``...),
  or with the stage that failed the row before the sink (every channel fails with it);
* a rejected row stays one row (the rejects table lists manifest rows).

The last channel's asset is the row's commit marker: the work list looks a row up by that key,
so it is written last, and only when every other channel of the row was written. A row with a
failing channel is therefore rendered again by the next run, like any failure, and a row whose
last asset exists has all of them.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from factory.core import images, metrics
from factory.spec.channels import Channel, Measures, NoSubject
from factory.spec.keys import channel_key, work_hash
from factory.core.provenance import Provenance
from factory.sink.assets import (SHA_META, STATUS_EXISTS, WORK_META, SinkConfig,
                                 stored_digest)
from factory.core.status import STATUS_FAILED, STATUS_OK
from stages.product import PRODUCT

CHANNEL_STAGE = "channel"
#: Lineage columns a channel run adds (name, Arrow type alias).
CHANNEL_COLUMNS = (("channel", "string"), ("channel_rule", "string"), ("width", "int64"),
                   ("height", "int64"), ("fill_ratio", "double"),
                   ("background_purity", "double"))


@dataclass(frozen=True)
class ChannelSinkConfig:
    """The job's sink settings plus its channels.

    Attributes:
        sink: the store and the run's metric labels (its encoding settings are unused).
        channels: the job's channels, in spec order (the last is the row's marker).
        prints: each channel's fingerprint (``factory.spec.keys.channel_fingerprints``).
        provenance: what every asset's XMP packet says.
        route_prints: in a job with routes, each route's channel fingerprints (a row's
            assets are keyed by its route's chain).
        route_provenance: in a job with routes, each route's XMP provenance (its models).
    """

    sink: SinkConfig
    channels: tuple[Channel, ...]
    prints: tuple[str, ...]
    provenance: Provenance | None = None
    route_prints: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    route_provenance: Mapping[str, Provenance] = field(default_factory=dict)


def write_channel_assets(batch: dict[str, np.ndarray], *,
                         config: ChannelSinkConfig) -> dict[str, np.ndarray]:
    """Ray Data task: fan each row out to its channels; return lineage rows, no pixels."""
    n = len(batch["sku"])
    channels, prints, store = config.channels, config.prints, config.sink.store
    pixels = images.load("image", batch) if "image" in batch else [None] * n
    packet = config.provenance.packet() if config.provenance is not None else b""
    packets = {route: p.packet() for route, p in config.route_provenance.items()}
    out: list[dict[str, Any]] = []  # one dict of overrides per output row, with its source
    for i in range(n):
        status = batch["status"][i]
        row = {k: batch[k][i] for k in batch if k not in ("image", PRODUCT)}
        if config.route_prints and row.get("route"):  # a routed row: its route's chain
            prints, packet = config.route_prints[row["route"]], packets.get(row["route"], b"")
        if status not in (STATUS_OK, STATUS_EXISTS, STATUS_FAILED):  # rejected: once
            out.append({"src": i, "output_key": ""})
            continue
        keys = [channel_key(fp, c.name, c.extension, row) for c, fp in zip(channels, prints)]
        if status == STATUS_EXISTS:
            if keys[-1] != batch["output_key"][i]:
                raise RuntimeError(f"row {row.get('row')}: the work list's key "
                                   f"{batch['output_key'][i]} is not its last channel's")
            for j, (channel, key) in enumerate(zip(channels, keys)):
                out.append({"src": i, "status": STATUS_OK, "channel": channel.name,
                            "output_key": key, "sha256": "", "written": False,
                            "bytes": int(batch["bytes"][i]) if j == len(keys) - 1 else 0})
            continue
        if status == STATUS_FAILED:
            for channel in channels:
                out.append({"src": i, "channel": channel.name, "output_key": ""})
            continue
        rendered = []
        for channel, fp, key in zip(channels, prints, keys):
            result = {"src": i, "channel": channel.name, "output_key": key, "written": False}
            try:
                if pixels[i] is None:
                    raise ValueError("no image reached the sink")
                data, measures = _render(pixels[i], channel, packet)
            except Exception as exc:  # noqa: BLE001 - this asset's failure, not the batch's
                result.update(status=STATUS_FAILED, failed_stage=CHANNEL_STAGE,
                              channel_rule="subject" if isinstance(exc, NoSubject) else "render",
                              output_key="",
                              error=f"{channel.name}: {type(exc).__name__}: {exc}")
                rendered.append((result, None, fp))
                continue
            result.update(width=measures.width, height=measures.height,
                          fill_ratio=measures.fill, background_purity=measures.purity,
                          bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            if measures.rule:
                result.update(status=STATUS_FAILED, failed_stage=CHANNEL_STAGE,
                              channel_rule=measures.rule, output_key="", bytes=0, sha256="",
                              error=f"{channel.name}: {measures.rule}: {measures.reason}")
                data = None
            rendered.append((result, data, fp))
        complete = all(data is not None for _, data, _ in rendered)
        for j, (result, data, fp) in enumerate(rendered):
            last = j == len(rendered) - 1
            if data is not None and last and not complete:
                # the marker stays unwritten so the next run renders this row again
                failed = [r["channel"] for r, d, _ in rendered[:-1] if d is None]
                result.update(status=STATUS_FAILED, failed_stage=CHANNEL_STAGE,
                              channel_rule="held", output_key="", bytes=0, sha256="",
                              error=f"{result['channel']}: held back until channel(s) "
                                    f"{', '.join(failed)} pass; the next run renders the row "
                                    "again")
                data = None
            if data is not None:
                channel = channels[j]
                # A store that fails for good propagates: the run stops uncommitted.
                result["written"] = store.put_if_absent(
                    result["output_key"], data, content_type=f"image/{channel.format}",
                    metadata={WORK_META: work_hash(fp, row), SHA_META: result["sha256"]})
                if not result["written"]:  # the stored object's bytes, not this encoding's
                    result["sha256"], result["bytes"] = stored_digest(store, result["output_key"])
                result["status"] = STATUS_OK
            out.append(result)
    return _columns(batch, out, config.sink)


def _render(array: np.ndarray, channel: Channel, packet: bytes) -> tuple[bytes, Measures]:
    """Frame, encode with the XMP packet, and measure the decoded file."""
    from PIL import Image

    from factory.spec.channels import measure, render
    from factory.core.provenance import save_options

    framed = render(array, channel)
    options: dict[str, Any] = save_options(channel.format, packet) if packet else {}
    if channel.format in ("jpeg", "webp"):
        options["quality"] = channel.quality
    else:
        options["compress_level"] = 1
    buffer = io.BytesIO()
    framed.pixels.save(buffer, format=images.ENCODINGS[channel.format], **options)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as decoded:
        written = np.asarray(decoded.convert("RGBA" if "A" in decoded.getbands() else "RGB"))
    return data, measure(written, framed, channel, encoded=data)


def _columns(batch: dict[str, np.ndarray], out: list[dict[str, Any]],
             config: SinkConfig) -> dict[str, np.ndarray]:
    src = np.array([o["src"] for o in out], dtype=np.int64)
    columns = {k: np.asarray(v)[src] for k, v in batch.items() if k not in ("image", PRODUCT)}
    defaults: dict[str, Any] = {"status": None, "error": None, "failed_stage": None,
                                "output_key": "", "sha256": "", "bytes": 0, "written": False,
                                "channel": "", "channel_rule": "", "width": None,
                                "height": None, "fill_ratio": None, "background_purity": None}
    for name, default in defaults.items():
        base = columns.get(name)
        values = np.empty(len(out), dtype=object)
        for k, o in enumerate(out):
            if name in o:
                values[k] = o[name]
            elif base is not None:
                values[k] = base[k]
            else:
                values[k] = default
        columns[name] = values
    columns["written"] = columns["written"].astype(bool)
    columns["bytes"] = columns["bytes"].astype(np.int64)
    for name in ("width", "height", "fill_ratio", "background_purity"):
        values = columns[name]
        columns[name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    ok = columns["status"] == STATUS_OK
    written = columns["written"]
    tags = config.labels.tags()
    metrics.inc("factory_sink_assets_written", int(written.sum()), tags)
    metrics.inc("factory_sink_assets_skipped", int(ok.sum() - written.sum()), tags)
    metrics.inc("factory_sink_bytes_written", int(columns["bytes"][written].sum()), tags)
    return columns
