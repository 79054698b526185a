"""Defaults from `$XDG_CONFIG_HOME/gemmapipe/config.toml` (or the file `GEMMAPIPE_CONFIG` names).

Precedence is flag > environment > config file > built-in. The CLI hands the result to Click as
its `default_map`, which is exactly that order. Top-level keys apply to every subcommand that has
the option; a table named after a subcommand (`[transcribe]`) overrides them for that one. Keys are
the long option names, with dashes or underscores (`max-tokens`, `max_tokens`, `format`).

Every key and value is checked here, where the file is read: an unknown key, a table that is not a
subcommand, or a value of the wrong type is a UsageError naming the file and the key.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError


def xdg_dir(kind: str) -> Path:
    defaults = {"config": "~/.config", "cache": "~/.cache", "data": "~/.local/share"}
    env = os.environ.get(f"XDG_{kind.upper()}_HOME")
    return Path(env or defaults[kind]).expanduser() / "gemmapipe"


def config_path() -> Path:
    override = os.environ.get("GEMMAPIPE_CONFIG")
    return Path(override).expanduser() if override else xdg_dir("config") / "config.toml"


def load_config(path: Path | None = None) -> dict[str, Any]:
    """The parsed file ({} when there is none); UsageError when it cannot be read or is not TOML."""
    named = path is None and bool(os.environ.get("GEMMAPIPE_CONFIG"))
    path = path or config_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if named:  # a file asked for by name (GEMMAPIPE_CONFIG) must be there
            raise UsageError(f"config {path}", "no such file", "unset {config_env}, or point it at a file "
                                                               "(/dev/null for none)") from None
        return {}
    except OSError as exc:
        raise UsageError(f"config {path}", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UsageError(f"config {path}", f"not UTF-8 text (line {line}): TOML files must be UTF-8",
                         "convert it, e.g. iconv -f latin1 -t utf-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config {path}", f"invalid TOML: {exc}") from None


KINDS = ("bool", "int", "float", "str", "path", "list")


@dataclass(frozen=True)
class Key:
    """What a config key may hold: `param` is the name the CLI's default_map is keyed by, `kind`
    the TOML type it takes (one of KINDS), `check` the option's own validation (range, choices),
    which returns the value to use or raises ValueError with the reason."""

    param: str
    kind: str
    check: Callable[[Any], Any] | None = None


_TYPE_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string",
               "path": "a path (a string)", "list": "a list of strings"}


def _toml_type(value: Any) -> str:
    for t, word in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                    (list, "a list"), (dict, "a table")):
        if isinstance(value, t):
            return word
    return type(value).__name__  # dates and times


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, str)


def _norm(key: str) -> str:
    return key.replace("-", "_")


def default_map(config: Mapping[str, Any], keys: Mapping[str, Mapping[str, Key]],
                path: Path | str = "config") -> dict[str, dict[str, Any]]:
    """Click default_map {command: {param: value}} from a parsed config, every key checked.

    `keys`: per command, the accepted key (dashes turned into underscores) -> Key. A top-level key
    must be known to some command and applies to those that know it.
    """
    where = f"config {path}"
    known_anywhere = {k for table in keys.values() for k in table}
    all_keys = sorted({k.replace("_", "-") for k in known_anywhere})

    def unknown(key: str, table: str | None, choices: list[str]) -> UsageError:
        close = difflib.get_close_matches(key.replace("_", "-"), choices, n=1)
        in_table = f" in [{table}]" if table else ""
        return UsageError(where, f"unknown key {key!r}{in_table}",
                          f"did you mean {close[0]!r}?" if close else "keys are the long option names, e.g. "
                                                                      "threads or max-tokens")

    def value_for(key: str, spec: Key, value: Any, table: str | None, hint: str | None = None) -> Any:
        name = f"[{table}] {key}" if table else key
        if not _kind_ok(spec.kind, value):
            raise UsageError(where, f"{name} must be {_TYPE_WORDS[spec.kind]}, not {_toml_type(value)}")
        if spec.check is None:
            return value
        try:
            return spec.check(value)
        except ValueError as exc:
            raise UsageError(where, f"{name}: {exc}", hint) from None

    def takes(spec: Key | None, value: Any) -> bool:
        try:
            return spec is not None and value_for("", spec, value, None) is not None
        except UsageError:
            return False

    out: dict[str, dict[str, Any]] = {name: {} for name in keys}
    # top level first, then the tables, so a table's value wins for its command
    for key, value in config.items():
        if isinstance(value, dict):
            if key not in keys:
                close = difflib.get_close_matches(key, list(keys), n=1)
                raise UsageError(where, f"unknown table [{key}]",
                                 f"did you mean [{close[0]}]?" if close else
                                 f"tables are subcommands: {', '.join(f'[{k}]' for k in keys)}")
            continue
        if _norm(key) not in known_anywhere:
            raise unknown(key, None, all_keys)
        for command, table in keys.items():
            spec = table.get(_norm(key))
            if spec is None:
                continue
            others = [c for c, t in keys.items() if c != command and takes(t.get(_norm(key)), value)]
            hint = (f"a top-level key is for every command with that option, {command} too; put it in a "
                    f"[{others[0]}] table instead") if others else None
            out[command][spec.param] = value_for(key, spec, value, None, hint)
    for command, table in keys.items():
        section = config.get(command)
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            spec = table.get(_norm(key))
            if spec is None:
                raise unknown(key, command, sorted({k.replace("_", "-") for k in table}))
            out[command][spec.param] = value_for(key, spec, value, command)
    return out
