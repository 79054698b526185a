"""Plain `--help` with the options grouped in their declared panels and readable metavars.

Typer shows `rich_help_panel` groups only through Rich's renderer, which costs ~0.12 s per `--help`
(its Markdown stack); plain mode lists every option in one flat block with Click's type names
(`<str>`, `<int range>`). These classes keep the plain, fast renderer and add what it lacks:

- options under a heading per panel: the command's own first, then Output, Model, Server;
- a metavar for every option that takes a value (`N`, `NUM`, `PATH`, `TEXT` unless declared), the
  same in the man page (docgen asks the parameters for it);
- ranges said in words (`at least 1`, `70 to 1120`) instead of `x>=1`.
"""

import re
from typing import Any

from typer.core import TyperCommand, TyperGroup

OWN_PANEL = "Options"
PANEL_ORDER = ["Output", "Model", "Server"]

_RANGE = [
    (re.compile(r"(-?[\d.]+)<=x<=(-?[\d.]+)"), r"\1 to \2"),
    (re.compile(r"x>=(-?[\d.]+)"), r"at least \1"),
    (re.compile(r"x<=(-?[\d.]+)"), r"at most \1"),
    (re.compile(r"x>(-?[\d.]+)"), r"more than \1"),
    (re.compile(r"x<(-?[\d.]+)"), r"less than \1"),
]


def default_metavar(param: Any) -> str:
    """What an option without a declared metavar shows for its value."""
    kind = getattr(param.type, "name", "")
    if hasattr(param.type, "file_okay"):
        return "DIR" if not param.type.file_okay else "PATH"
    if kind.startswith("int"):
        return "N"
    if kind.startswith("float"):
        return "NUM"
    return "TEXT"


def set_metavars(params: list[Any]) -> None:
    for param in params:
        if param.param_type_name == "option" and param.metavar is None and not (param.is_flag or param.count):
            param.metavar = default_metavar(param)


def tidy(help_text: str) -> str:
    for pattern, words in _RANGE:
        help_text = pattern.sub(words, help_text)
    return help_text


def panel_of(param: Any) -> str:
    return getattr(param, "rich_help_panel", None) or OWN_PANEL


def panels(command: Any, ctx: Any) -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """(argument rows, {panel: option rows}) in display order."""
    args: list[tuple[str, str]] = []
    groups: dict[str, list[tuple[str, str]]] = {OWN_PANEL: []}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None:
            continue
        row = (record[0], tidy(record[1]))
        if param.param_type_name == "argument":
            args.append(row)
        else:
            groups.setdefault(panel_of(param), []).append(row)
    known = [p for p in PANEL_ORDER if p in groups]
    order = [OWN_PANEL, *known, *(p for p in groups if p not in (OWN_PANEL, *known))]
    return args, {p: groups[p] for p in order if groups[p]}


def _format(command: Any, ctx: Any, formatter: Any) -> None:
    args, groups = panels(command, ctx)
    if args:
        with formatter.section("Arguments"):
            formatter.write_dl(args)
    for name, rows in groups.items():
        with formatter.section(name if name == OWN_PANEL else f"{name} options"):
            formatter.write_dl(rows)


class PanelCommand(TyperCommand):
    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format(self, ctx, formatter)


class PanelGroup(TyperGroup):
    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format(self, ctx, formatter)
        self.format_commands(ctx, formatter)


def dress(command: Any) -> Any:
    """Give a built command tree (typer.main.get_command) these help pages, every subcommand included
    (also those added later, wherever they are declared). Returns `command`."""
    set_metavars(command.params)
    if type(command) is TyperCommand:
        command.__class__ = PanelCommand  # same layout; only the help rendering differs
    elif type(command) is TyperGroup:
        command.__class__ = PanelGroup
    for sub in getattr(command, "commands", {}).values():
        dress(sub)
    return command
