"""Defaults from `$XDG_CONFIG_HOME/gemmapipe/config.toml`.

Precedence is flag > environment > config file > built-in. The CLI hands the result to Click as
its `default_map`, which is exactly that order. Top-level keys apply to every subcommand; a table
named after a subcommand (`[transcribe]`) overrides them for that one.
"""

from __future__ import annotations

import os
import tomllib
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
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"config {path}", f"cannot read: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config {path}", f"invalid TOML: {exc}") from None


def default_map(config: dict[str, Any], commands: list[str]) -> dict[str, dict[str, Any]]:
    """Click default_map: {command: {param_name: value}} with dashes turned into underscores."""
    common = {k.replace("-", "_"): v for k, v in config.items() if not isinstance(v, dict)}
    out: dict[str, dict[str, Any]] = {}
    for name in commands:
        merged = dict(common)
        section = config.get(name)
        if isinstance(section, dict):
            merged.update({k.replace("-", "_"): v for k, v in section.items()})
        out[name] = merged
    return out
