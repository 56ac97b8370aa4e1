"""Prompt templates: jinja2 in a sandbox, every field the template uses must be present.

Templates see the manifest row's fields as plain variables (``{{ title }}``), always strings.
The sandbox (jinja2's ``SandboxedEnvironment``) blocks attribute tricks that reach Python
internals; ``StrictUndefined`` turns a missing field into an error the row validator reports
with the field's name.

The template comes from the job spec, the values from the manifest, which is untrusted: a value
may make the template raise (``{{ (a|int) // (b|int) }}`` with ``b = 0``) or grow without bound
(``{{ 'x' * (n|int) }}``). Whatever rendering raises is that row's ``TemplateError``, never an
exception out of row validation; text is bounded at ``MAX_TEXT`` characters, before a repeat,
padding or replace builds it where the size can be told in advance, and on the rendered output.
"""

from __future__ import annotations

import functools
import re
from functools import lru_cache
from typing import Any, Callable, Mapping

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from factory.core.text import bounded, shown

#: The most characters a rendered prompt, or any text a template builds on the way, may have.
#: Prompt encoders read a few hundred tokens; a longer prompt is a value gone wrong.
MAX_TEXT = 16_384
#: The largest exponent of an integer power (``2 ** 4096`` has 1,234 digits).
MAX_EXPONENT = 4096
#: str methods whose integer arguments size their result.
_SIZED_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "format",
                            "format_map", "replace"})
#: Filters whose arguments size their result (the rest shrink or keep their input's size).
_SIZED_FILTERS = ("center", "indent", "format", "replace", "wordwrap", "truncate")
_WIDTH = re.compile(r"\d+")
_PERCENT_SPEC = re.compile(r"%[-#0 +]*(?:\*|\d*)(?:\.(?:\*|\d*))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")
_NESTED_SPEC = re.compile(r"\{[^{}]*\{")


class TemplateError(ValueError):
    """A template that does not parse, or a row that lacks a field the template needs or
    whose values make the template fail."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class _BoundedEnvironment(SandboxedEnvironment):
    """jinja2's sandbox, with text sizes bounded where a row's values can choose them."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) \
                        and len(seq) * n > MAX_TEXT:
                    raise _too_large(f"{len(seq)} × {n}")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 \
                    and right > MAX_EXPONENT:
                raise jinja2.exceptions.SecurityError(
                    f"exponent {right} is over {MAX_EXPONENT}")
        elif operator == "%" and isinstance(left, str):
            _check_format(left, right if isinstance(right, tuple) else (right,), {})
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(owner, str) and name in _SIZED_METHODS:
            if name.startswith("format"):
                _check_format(owner, args, kwargs)
            elif name == "replace":
                if len(args) >= 2:
                    _check_replace(owner, args[0], args[1])
            else:  # a width
                _check_args(args, kwargs)
        return super().call(context, obj, *args, **kwargs)


def _too_large(what: str) -> jinja2.exceptions.SecurityError:
    return jinja2.exceptions.SecurityError(f"text of {what} characters is over {MAX_TEXT}")


def _check_args(args: tuple, kwargs: Mapping[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_TEXT:
            raise _too_large(str(value))


def _check_format(fmt: str, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """A format string's widths and precisions (``%99999s``, ``{:>99999}``) are bounded, and
    so are the arguments that give them (``%*s``, ``{:{width}}``)."""
    specs = [m.group(0) for m in _PERCENT_SPEC.finditer(fmt)] + _BRACE_SPEC.findall(fmt)
    for digits in _WIDTH.findall("".join(specs)):
        if len(digits) > 6 or int(digits) > MAX_TEXT:
            raise _too_large(digits[:12])
    if "*" in "".join(specs) or _NESTED_SPEC.search(fmt):
        _check_args(args, kwargs)


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        slots = len(text) + 1 if not old else len(text) // len(old)
        if len(text) + slots * len(new) > MAX_TEXT:
            raise _too_large(f"{slots} × {len(new)}")


def _sized_filter(original: Callable[..., Any], name: str) -> Callable[..., Any]:
    @functools.wraps(original)  # keeps jinja2's pass_context / pass_environment marks
    def checked(*args: Any, **kwargs: Any) -> Any:
        values = tuple(a for a in args if isinstance(a, (str, int)))  # not the context
        strings = [a for a in args if isinstance(a, str)]
        if name == "format" and strings:
            _check_format(strings[0], values[1:], kwargs)
        elif name != "replace":  # a width or a length
            _check_args(values, kwargs)
        if name == "replace" and len(strings) >= 3:
            _check_replace(*strings[:3])
        if name == "indent" and len(strings) >= 2:  # a string width is the indent itself
            if len(strings[0]) + (strings[0].count("\n") + 1) * len(strings[1]) > MAX_TEXT:
                raise _too_large("an indent of " + str(len(strings[1])))
        return original(*args, **kwargs)

    return checked


@lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    env = _BoundedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                              keep_trailing_newline=False)
    env.globals.pop("lipsum", None)  # lipsum(n) writes n paragraphs: nothing a prompt needs
    for name in _SIZED_FILTERS:
        env.filters[name] = _sized_filter(env.filters[name], name)
    return env


@lru_cache(maxsize=64)
def _compiled(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template does not parse: {exc.message} (line {exc.lineno})") from exc


@lru_cache(maxsize=64)
def template_fields(template: str) -> tuple[str, ...]:
    """The row fields a template reads, in sorted order; raises on a syntax error. Cached:
    ``render`` asks for every row, and parsing the template again was most of validation."""
    if not template:
        return ()
    _compiled(template)
    try:
        parsed = _environment().parse(template)
    except jinja2.TemplateSyntaxError as exc:  # pragma: no cover - _compiled raised already
        raise TemplateError(str(exc)) from exc
    return tuple(sorted(meta.find_undeclared_variables(parsed)))


#: A template of plain text and bare fields (``photo of a {{ color }} {{ title }}``).
_PLAIN = re.compile(r"(?:[^{}]|\{\{ *[A-Za-z_][A-Za-z0-9_]* *\}\})*")
_PLAIN_FIELD = re.compile(r"\{\{ *([A-Za-z_][A-Za-z0-9_]*) *\}\}")


@lru_cache(maxsize=64)
def _plain_parts(template: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """A plain template's text pieces and the fields between them (``pieces[0] field[0]
    pieces[1] ...``), or None: anything else (a filter, a tag, a brace in the text) renders
    through jinja2."""
    if not _PLAIN.fullmatch(template):
        return None
    pieces = _PLAIN_FIELD.split(template)
    if not set(pieces[1::2]) <= set(template_fields(template)):
        return None  # a name jinja2 reads as a constant (``none``, ``true``), not a field
    return tuple(pieces[0::2]), tuple(pieces[1::2])


def render(template: str, fields: Mapping[str, str | None], *, name: str = "prompt") -> str:
    """Render for one row; a missing or empty field the template uses, or anything rendering
    raises on the row's values, is a ``TemplateError`` (``name``: the template's output
    column, named by errors that are not one field's).

    A plain template (text and bare fields, ``_plain_parts``) of string values is joined
    directly, as jinja2 would render it: the same text, at a fraction of the cost per row."""
    if not template:
        return ""
    for field in template_fields(template):
        value = fields.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise TemplateError(f"missing value for prompt field '{field}'", field=field)
    plain = _plain_parts(template)
    if plain is not None and all(isinstance(fields[f], str) for f in plain[1]):
        pieces, names = plain
        text = pieces[0] + "".join(fields[f] + piece for f, piece in zip(names, pieces[1:]))
        if len(text) > MAX_TEXT:
            raise TemplateError(f"the rendered {name} is over {MAX_TEXT} characters",
                                field=name)
        return " ".join(text.split())
    try:
        parts, size = [], 0
        for chunk in _compiled(template).generate(**fields):
            size += len(chunk)
            if size > MAX_TEXT:
                raise TemplateError(f"the rendered {name} is over {MAX_TEXT} characters",
                                    field=name)
            parts.append(chunk)
        return " ".join("".join(parts).split())
    except TemplateError:
        raise
    except jinja2.UndefinedError as exc:
        raise TemplateError(bounded(exc)) from exc
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"{name} template blocked by the sandbox: {bounded(exc)}",
                            field=name) from exc
    except Exception as exc:  # noqa: BLE001 - any failure on a row's values is that row's
        # RecursionError, MemoryError, ZeroDivisionError, OverflowError, TypeError, ValueError…
        raise TemplateError(f"{name} template raised {type(exc).__name__} on this row: "
                            f"{shown(exc, limit=200)}", field=name) from None
