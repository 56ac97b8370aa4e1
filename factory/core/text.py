"""User text made safe to store and to show: no control characters, no lone surrogates.

Manifest values, SKUs and the reasons that quote them end in Arrow tables (which refuse lone
surrogates) and on terminals (where ``ESC ]0;...BEL`` retitles the window and a bidi override
reorders what follows). ``escaped`` writes every such character as a Python escape
(``\\x1b``, ``\\u202e``, ``\\ud800``), so the text stays readable, is valid UTF-8, and cannot
act on a terminal; ``shown`` is the same, bounded, for quoting a value inside a message.
"""

from __future__ import annotations

#: Bidi embedding, override and isolate controls: they reorder the text that follows them.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: What ``shown`` keeps of a value, in characters, before its ellipsis.
SHOWN_CHARS = 60
ELLIPSIS = "…"


def escaped(text: object, *, newlines: bool = False) -> str:
    """``text`` with each control (C0, DEL, C1), bidi control, lone surrogate and other
    non-printable character written as its escape; ``newlines`` keeps ``\\n`` as it is (a
    message of several lines)."""
    text = str(text)
    if text.isprintable():  # the common case, checked in C
        return text
    return "".join(ch if (ch.isprintable() and ch not in _BIDI) or (newlines and ch == "\n")
                   else _escape(ch) for ch in text)


def shown(value: object, *, limit: int = SHOWN_CHARS) -> str:
    """``value`` quoted for a message: escaped, and cut at ``limit`` characters with an
    ellipsis (the escapes of what is kept may make it longer)."""
    text = str(value)
    cut = len(text) > limit
    return f"'{escaped(text[:limit])}{ELLIPSIS if cut else ''}'"


def bounded(text: object, *, limit: int = 500) -> str:
    """A whole message made safe (``escaped``) and cut at ``limit`` characters."""
    text = escaped(text)
    return text if len(text) <= limit else text[:limit - 1] + ELLIPSIS


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
