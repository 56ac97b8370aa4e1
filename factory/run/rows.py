"""Row validation: each manifest row becomes a work item (``ok``) or a rejection.

``validate_batch`` runs as a Ray Data task over the ``ManifestDatasource`` stream. A rejected
row keeps its row number, the field at fault and the reason, and travels to the sink with
``status = "rejected"``: nothing is dropped, and good rows go on.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from factory.core.text import bounded, shown
from factory.spec.keys import KeyRoom, asset_key, normal_form
from factory.spec.routes import ROUTE_COLUMN, Routes
from factory.spec.templating import TemplateError, render, template_fields
from factory.core.status import STATUS_OK, STATUS_REJECTED
from stages.colour import parse_palette

if TYPE_CHECKING:
    from factory.spec.job import Job

MAX_SIZE = 8192
#: A validated row's photo reference, in a job with a source stage (``factory.run.sources``).
PHOTO = "photo"
_VARIANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class RowRules:
    """What a row must satisfy, derived from the job spec and the manifest scan."""

    seed: int
    variant: str
    prompt_template: str = ""
    negative_template: str = ""
    duplicate_rejects: Mapping[int, str] = field(default_factory=dict)
    chain_fingerprint: str = ""
    image_ext: str = "png"
    #: With routes (``factory.spec.routes``): the column picks each row's route, and its asset key
    #: comes from its route's ``(chain fingerprint, image ext)`` in ``route_keys``.
    routes: Routes | None = None
    route_keys: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: A job whose chain starts from the row's photo (``factory.run.sources``): the manifest
    #: field holding it, carried as the row's ``photo``; "" for jobs without a source stage.
    photo_column: str = ""
    #: The output store's kind and prefix and every key built from a SKU (``key_room``): a
    #: SKU whose keys would not fit is the row's reject. The default is a local store's room
    #: for one PNG asset per row.
    key_room: KeyRoom = KeyRoom()


class RowReject(ValueError):
    """A row fault: the field at fault and why. Both are made safe here (``factory.core.text``):
    a field name or reason quoting a manifest value holds no control character or lone
    surrogate, whatever the value held, so the reject can go to an Arrow table and a terminal."""

    def __init__(self, field_name: str, reason: str) -> None:
        field_name, reason = bounded(field_name, limit=200), bounded(reason, limit=2000)
        super().__init__(f"{field_name}: {reason}")
        self.field, self.reason = field_name, reason


def key_room(job: Job) -> KeyRoom:
    """The room the job's keys have in its output store: the store's kind and prefix, each
    asset key's extension (one per channel with ``channels:``) and the kept intermediates."""
    exts = (tuple(f"{c.name}.{c.extension}" for c in job.channels) if job.channels
            else (job.keys.chain().ext,))
    return KeyRoom.for_output(job.output.uri, exts=exts,
                              intermediates=tuple(job.keys.intermediates))


def derive_seed(global_seed: int, sku: str, variant: str) -> int:
    """A stable per-SKU seed: the same job seed, SKU and variant always give the same seed."""
    digest = hashlib.sha256(f"{global_seed}:{sku}:{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def check_sku(raw: str | None) -> str:
    """The SKU id as it may appear in a key (NFC: its NFC and NFD spellings are one SKU), or
    ``RowReject``. How long its keys may be depends on the store: ``KeyRoom.problem``."""
    sku = normal_form(raw)
    if not sku:
        raise RowReject("sku", "missing or empty")
    if "/" in sku or "\\" in sku:
        raise RowReject("sku", "must not contain '/' or '\\'")
    if ".." in sku or sku == ".":
        raise RowReject("sku", "must not contain '..' or be '.'")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in sku):
        raise RowReject("sku", f"{shown(sku)} contains control characters")
    return sku


def validate_row(fields: Mapping[str, str | None], rules: RowRules) -> dict[str, Any]:
    """One row's work item; raises ``RowReject`` naming the field at fault."""
    sku = check_sku(fields.get("sku"))
    variant = normal_form(fields.get("variant")) or rules.variant
    if not _VARIANT.fullmatch(variant):
        raise RowReject("variant", f"{shown(variant)} must match {_VARIANT.pattern}")
    too_long = rules.key_room.problem(sku, variant)
    if too_long:
        raise RowReject("sku", f"{shown(sku, limit=40)}: {too_long}")
    seed_text = (fields.get("seed") or "").strip()
    if seed_text:
        try:
            seed = int(seed_text)
        except ValueError:
            raise RowReject("seed", f"{shown(seed_text, limit=40)} is not an integer") from None
        if not 0 <= seed < 2**63:
            raise RowReject("seed", f"{seed} is outside 0 .. 2**63-1")
    else:
        seed = derive_seed(rules.seed, sku, variant)
    width, height = _size(fields, "width"), _size(fields, "height")
    palette = (fields.get("palette") or "").strip()
    if palette:
        try:
            parse_palette(palette)
        except ValueError as exc:
            raise RowReject("palette", str(exc)) from None
    for name in (*template_fields(rules.prompt_template),
                 *template_fields(rules.negative_template), rules.photo_column):
        value = fields.get(name) if name else None
        if isinstance(value, str) and _has_surrogate(value):
            raise RowReject(name, f"{shown(value)} holds a lone surrogate (not text)")
    try:
        prompt = render(rules.prompt_template, fields, name="prompt")
        negative = render(rules.negative_template, fields, name="negative_prompt")
    except TemplateError as exc:
        raise RowReject(exc.field or "prompt", str(exc)) from None
    item = {"sku": sku, "variant": variant, "seed": seed, "prompt": prompt,
            "negative_prompt": negative, "width": width, "height": height, "palette": palette}
    if rules.photo_column:
        item[PHOTO] = (fields.get(rules.photo_column) or "").strip()
    if rules.routes is not None:
        try:
            item[ROUTE_COLUMN] = rules.routes.pick(fields).name
        except ValueError as exc:
            raise RowReject(rules.routes.column, str(exc)) from None
    return item


def _size(fields: Mapping[str, str | None], name: str) -> int:
    text = (fields.get(name) or "").strip()
    if not text:
        return 0
    try:
        value = int(float(text)) if re.fullmatch(r"\d+(\.0+)?", text) else int(text)
    except ValueError:
        raise RowReject(name, f"{shown(text, limit=40)} is not an integer") from None
    if value <= 0 or value > MAX_SIZE or value % 8:
        raise RowReject(name, f"{value} must be a positive multiple of 8 up to {MAX_SIZE}")
    return value


_OUT_COLUMNS = ("sku", "variant", "seed", "prompt", "negative_prompt", "width", "height",
                "palette", "output_key", "row", "status", "error", "failed_stage",
                "reject_field")


def validate_batch(batch: dict[str, np.ndarray], *, rules: RowRules) -> dict[str, np.ndarray]:
    """Ray Data task: ``ManifestDatasource`` rows in, work items and rejections out."""
    columns = (_OUT_COLUMNS + ((ROUTE_COLUMN,) if rules.routes is not None else ())
               + ((PHOTO,) if rules.photo_column else ()))
    out: dict[str, list[Any]] = {name: [] for name in columns}
    for row, fields_json, parse_field, parse_error in zip(
            batch["row"], batch["fields"], batch["parse_field"], batch["parse_error"]):
        fields = json.loads(fields_json)
        row = int(row)
        item = {"sku": str(fields.get("sku") or "").strip(), "variant": "", "seed": 0,
                "prompt": "", "negative_prompt": "", "width": 0, "height": 0, "palette": "",
                "output_key": "", **({ROUTE_COLUMN: ""} if rules.routes is not None else {}),
                **({PHOTO: ""} if rules.photo_column else {})}
        status, error, reject_field = STATUS_OK, "", ""
        try:
            if parse_error:
                raise RowReject(parse_field, parse_error)
            if row in rules.duplicate_rejects:
                raise RowReject("sku", rules.duplicate_rejects[row])
            item = validate_row(fields, rules)
            chain, ext = (rules.route_keys[item[ROUTE_COLUMN]] if rules.routes is not None
                          else (rules.chain_fingerprint, rules.image_ext))
            item["output_key"] = asset_key(chain, ext, item)
        except Exception as exc:  # noqa: BLE001 - no exception escapes a row: it is its reject
            if not isinstance(exc, RowReject):
                exc = RowReject("(row)", f"validation raised {type(exc).__name__}: "
                                f"{shown(exc, limit=200)}")
            status, error, reject_field = STATUS_REJECTED, exc.reason, exc.field
            item["sku"] = _printable(item["sku"])
        for name, value in item.items():
            out[name].append(value)
        out["row"].append(row)
        out["status"].append(status)
        out["error"].append(error)
        out["failed_stage"].append("")
        out["reject_field"].append(reject_field)
    return {name: np.array(values, dtype=np.int64 if name in ("seed", "width", "height", "row")
                           else object) for name, values in out.items()}


def _printable(text: str) -> str:
    """A rejected SKU as it may be kept in a table: escaped (``factory.core.text``), bounded."""
    return bounded(text, limit=200)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
