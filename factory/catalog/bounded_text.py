"""Untrusted manifest text, read within bounds: lines, CSV records and text safe to pass on.

Every text reader reads lines of at most ``MAX_LINE`` bytes: a longer line is skipped to its
end without being held (``Overlong``) and becomes that row's reject, so one huge line in a
``.jsonl.gz`` cannot exhaust the driver's memory. ``CsvRecords`` is ``csv.reader`` over such
lines that survives any bytes: a record the csv module cannot read is a ``CsvFault`` (that
row's reject) and reading goes on after it. No reader passes a lone surrogate on (Arrow's
string columns and UTF-8 encoders refuse one): bad bytes are kept as ``surrogateescape``
surrogates only until the row holding them is rejected, naming the field.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from typing import Any, Iterator

#: The longest line (or CSV/JSONL record) a text reader holds, in bytes: a longer one is that
#: row's reject, skipped to its end without being held, so one huge line cannot exhaust memory.
MAX_LINE = 1 << 24
#: Bytes per read from a manifest stream (on S3, one ranged GET).
READ_BUFFER = 1 << 20
_SURROGATE = re.compile("[\ud800-\udfff]")


def safe_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (for names and messages).

    Readers never pass a lone surrogate on: Arrow's string columns, JSON with
    ``ensure_ascii=False`` and UTF-8 encoders all refuse one."""
    if not has_surrogate(text):
        return text
    return _SURROGATE.sub("\ufffd", text)


def field_label(name: str, index: int) -> str:
    """How a reject names a field: its name, made safe, or its position when it has none."""
    return safe_text(name).strip() or f"(column {index + 1})"


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (from a JSON ``\\ud800`` escape, or bytes that
    were not UTF-8 decoded with ``surrogateescape``)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


@dataclass(frozen=True)
class Overlong:
    """A line longer than ``MAX_LINE``: it was skipped to its end, never held whole.

    Attributes:
        size: its length in bytes, line ending included.
        quotes: how many ``"`` bytes it held (a CSV reader finds its way back with them).
    """

    size: int
    quotes: int


def bounded_lines(stream: Any, limit: int = MAX_LINE) -> Iterator[bytes | Overlong]:
    """The lines of a binary stream (each ends at ``\\n``, the last maybe not), or
    ``Overlong`` for one longer than ``limit`` bytes; at most ``limit + 1`` bytes are held."""
    reader = io.BufferedReader(stream, READ_BUFFER)
    while True:
        line = reader.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit:
            yield line
            continue
        size, quotes = len(line), line.count(b'"')
        while not line.endswith(b"\n"):
            line = reader.readline(READ_BUFFER)
            if not line:
                break
            size, quotes = size + len(line), quotes + line.count(b'"')
        yield Overlong(size, quotes)


# The csv module's own limit on one field, in characters: no single line reaches it (a line is
# bounded by ``MAX_LINE`` bytes), so only a quoted field running over many lines can.
csv.field_size_limit(MAX_LINE)


@dataclass(frozen=True)
class CsvFault:
    """A record the csv module could not read (a field over its limit, an over-long line)."""

    reason: str


class _LineTooLong(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


_NEWLINES = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


class _CsvLines:
    """The text lines ``csv.reader`` pulls from a binary stream.

    Lines end at ``\\n``, ``\\r\\n`` or a bare ``\\r`` (as ``newline=""`` splits them), each
    at most ``MAX_LINE`` bytes (a longer one raises ``_LineTooLong``, having been skipped);
    UTF-8 with undecodable bytes kept by ``surrogateescape`` (the row holding them is then
    rejected alone) and a BOM at the start dropped. ``position`` counts the bytes handed out,
    ``quotes`` the ``"`` since the caller last reset it (at a record's start); ``bare_cr``
    says whether any line ended at a bare ``\\r``.
    """

    def __init__(self, stream: Any) -> None:
        self._lines = bounded_lines(stream)
        self._pending: list[bytes] = []
        self._encoding = "utf-8-sig"
        self.position = 0
        self.quotes = 0
        self.bare_cr = False

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        if not self._pending:
            line = next(self._lines)
            if isinstance(line, Overlong):
                self.position += line.size
                self.quotes += line.quotes
                raise _LineTooLong(line.size)
            cr = line.find(b"\r")
            if cr == -1 or (cr == len(line) - 2 and line[-1] == 10):  # none, or "\r\n" only
                self._pending = [line]
            else:
                self._pending = _NEWLINES.findall(line)[::-1]
                self.bare_cr = True
        piece = self._pending.pop()
        self.position += len(piece)
        self.quotes += piece.count(b'"')
        text = piece.decode(self._encoding, errors="surrogateescape")
        self._encoding = "utf-8"
        return text


class CsvRecords:
    """``csv.reader`` over a binary stream that survives any bytes.

    Each item is a record's fields, or a ``CsvFault`` for a record the csv module could not read
    (a quoted field over its limit, a line over ``MAX_LINE``): that record is one row's reject
    and reading goes on from where it ends, the first line end outside quotes (an even number
    of ``"`` since the record began).

    Attributes:
        position: bytes of the stream consumed by the records read so far.
    """

    def __init__(self, stream: Any, delimiter: str = ",") -> None:
        self._lines = _CsvLines(stream)
        self._reader = csv.reader(self._lines, delimiter=delimiter, strict=False)

    @property
    def position(self) -> int:
        return self._lines.position

    @property
    def bare_cr(self) -> bool:
        """Whether a line so far ended at a bare ``\\r`` (old Mac line endings)."""
        return self._lines.bare_cr

    def __iter__(self) -> CsvRecords:
        return self

    def __next__(self) -> list[str] | CsvFault:
        self._lines.quotes = 0
        try:
            return next(self._reader)
        except _LineTooLong as exc:
            reason = f"a line of {exc.size} bytes, over the {MAX_LINE}-byte limit"
        except csv.Error as exc:
            reason = f"not readable as CSV: {exc}"
        while self._lines.quotes % 2:  # still inside a quoted field: on to its end
            try:
                next(self._lines)
            except StopIteration:
                break
            except _LineTooLong:
                continue
        return CsvFault(reason)
