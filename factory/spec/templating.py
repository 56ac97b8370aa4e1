"""Prompt templates: jinja2 in a sandbox, every field the template uses must be present.

Templates see the manifest row's fields as plain variables (``{{ title }}``), always strings.
The sandbox blocks attribute tricks that reach Python internals; ``StrictUndefined`` turns a
missing field into an error the row validator reports with the field's name.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment


class TemplateError(ValueError):
    """A template that does not parse, or a row that lacks a field the template needs."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@lru_cache(maxsize=1)
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                keep_trailing_newline=False)


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


def render(template: str, fields: Mapping[str, str | None]) -> str:
    """Render for one row; a missing or empty field the template uses is a ``TemplateError``."""
    if not template:
        return ""
    for name in template_fields(template):
        value = fields.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise TemplateError(f"missing value for prompt field '{name}'", field=name)
    try:
        return " ".join(_compiled(template).render(**fields).split())
    except jinja2.UndefinedError as exc:
        raise TemplateError(str(exc)) from exc
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"template blocked by the sandbox: {exc}") from exc
