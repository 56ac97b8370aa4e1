"""MkDocs hook: the CLI reference is generated from the click group, so it cannot drift.

``mkdocs.yml`` names this file under ``hooks:``. On every build, the page that holds the
marker ``<!-- cli-reference -->`` gets the marker replaced by one section per command of the
``factory`` group: its usage line, its help text, its arguments and its options (flags,
type, default, environment variable, help), walked recursively through sub-groups.

Run it as a script to print the generated Markdown: ``python docs/hooks.py``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- cli-reference -->"
PROG = "factory"
#: Where the click group lives: tried in order (the package split may move it).
GROUP_LOCATIONS = ("factory.cli.main:main", "factory.cli:main")

_ROOT = Path(__file__).resolve().parent.parent


def load_group() -> Any:
    """The ``factory`` click group, imported from the first location that has it."""
    if str(_ROOT) not in sys.path:
        sys.path.insert(0, str(_ROOT))
    import click

    errors = []
    for location in GROUP_LOCATIONS:
        module_name, _, attr = location.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            errors.append(f"{location}: {exc}")
            continue
        group = getattr(module, attr, None)
        if isinstance(group, click.Group):
            return group
        errors.append(f"{location}: no click group named '{attr}'")
    raise RuntimeError("cannot import the factory CLI group:\n  " + "\n  ".join(errors))


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _paragraphs(text: str) -> str:
    """Click help text as Markdown: ``\\b`` (no-rewrap) markers dropped, blank lines kept."""
    import inspect

    lines = [line for line in inspect.cleandoc(text).splitlines() if line.strip() != "\b"]
    return _literals("\n".join(lines).strip())


def _literals(text: str) -> str:
    """reStructuredText literals (````x````) as Markdown code (```x```)."""
    return text.replace("``", "`")


def _type_name(param: Any) -> str:
    import click

    kind = param.type
    if isinstance(param, click.Option) and param.is_flag and not param.count:
        return "flag"
    if isinstance(kind, click.Choice):
        return " \\| ".join(f"`{c}`" for c in kind.choices)
    if isinstance(kind, click.IntRange):
        if kind.max is None:
            return f"integer ≥ {kind.min}" if kind.min is not None else "integer"
        return f"integer {kind.min if kind.min is not None else ''}..{kind.max}"
    if isinstance(kind, click.Path):
        return "directory" if not kind.file_okay else "file" if not kind.dir_okay else "path"
    name = getattr(kind, "name", "text").lower()
    return {"integer": "integer", "float": "number", "boolean": "boolean"}.get(name, "text")


def _default(param: Any) -> str:
    import click

    default = param.default
    if (callable(default) or default is None or default == ()
            or type(default).__name__ == "Sentinel"):  # click 8.3's UNSET
        return ""
    if isinstance(param, click.Option) and param.is_flag:
        return ""
    return f"`{default}`"


def _option_row(param: Any) -> str:
    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    metavar = ""
    if not getattr(param, "is_flag", False):
        metavar = f" `{param.metavar}`" if param.metavar else ""
    env = param.envvar if isinstance(param.envvar, str) else ", ".join(param.envvar or ())
    env = f"`{env}`" if env else ""
    help_text = _literals(_cell(param.help or ""))
    if param.required:
        help_text = f"**Required.** {help_text}".strip()
    return (f"| {names}{metavar} | {_type_name(param)} | {_default(param)} | {env} "
            f"| {help_text} |")


def _command_markdown(command: Any, path: list[str], parent: Any, level: int) -> list[str]:
    import click

    ctx = click.Context(command, info_name=path[-1], parent=parent)
    title = " ".join(path)
    out = [f"{'#' * level} {title}", ""]
    usage = " ".join([title, *command.collect_usage_pieces(ctx)])
    out += ["```text", f"Usage: {usage}", "```", ""]
    if command.help:
        out += [_paragraphs(command.help), ""]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    options = [p for p in command.params
               if isinstance(p, click.Option) and not getattr(p, "hidden", False)]
    if arguments:
        out += ["| argument | type | required | default |", "|---|---|---|---|"]
        for arg in arguments:
            out.append(f"| `{arg.human_readable_name}` | {_type_name(arg)} | "
                       f"{'yes' if arg.required else 'no'} | {_default(arg)} |")
        out.append("")
    if options:
        out += ["| option | type | default | environment | meaning |", "|---|---|---|---|---|"]
        out += [_option_row(opt) for opt in options]
        out += ["| `--help` | flag | | | Show the command's help and exit. |", ""]
    if isinstance(command, click.Group):
        for name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, name)
            if sub is not None and not getattr(sub, "hidden", False):
                out += _command_markdown(sub, [*path, name], ctx, min(level + 1, 4))
    return out


def _summary_table(group: Any) -> list[str]:
    """One line per leaf command: its full name and the first line of its help."""
    import click

    rows: list[str] = []

    def walk(command: Any, path: list[str], parent: Any) -> None:
        ctx = click.Context(command, info_name=path[-1], parent=parent)
        if isinstance(command, click.Group):
            for name in sorted(command.list_commands(ctx)):
                sub = command.get_command(ctx, name)
                if sub is not None and not getattr(sub, "hidden", False):
                    walk(sub, [*path, name], ctx)
            return
        title = " ".join(path)
        anchor = "-".join(path).lower()
        short = _literals(_cell(command.get_short_help_str(limit=120)))
        rows.append(f"| [`{title}`](#{anchor}) | {short} |")

    walk(group, [PROG], None)
    return ["| command | what it does |", "|---|---|", *rows, ""]


def cli_markdown() -> str:
    """The whole generated CLI reference (without a page title)."""
    group = load_group()
    lines = ["## Commands", "", *_summary_table(group)]
    root = click_context(group)
    for name in sorted(group.list_commands(root)):
        command = group.get_command(root, name)
        if command is not None and not getattr(command, "hidden", False):
            lines += _command_markdown(command, [PROG, name], root, 3)
    return "\n".join(lines).rstrip() + "\n"


def click_context(group: Any) -> Any:
    import click

    return click.Context(group, info_name=PROG)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: fill the CLI reference page."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_markdown())


if __name__ == "__main__":
    sys.stdout.write(cli_markdown())
