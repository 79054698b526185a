"""The config file as Click's default map: read lazily, checked with each option's own type, and its
problem raised by the command that would use it (a leaf module: options and app both use it)."""

from typing import Any

from gemmapipe.core.errors import GemmapipeError

COMMANDS = ["transcribe", "diarize", "describe", "video", "chat"]
SEVERAL_FORMATS = {"transcribe", "diarize"}  # their -f takes a comma-separated list, or all


class _ConfigDefaults(dict[str, Any]):
    """Click's default_map, read from the config file only when a subcommand that takes it is about
    to run: `--version`, `--help` and `models` never read the file. A broken file is kept as
    `error` and raised by the command itself (see options.with_common), so `transcribe --help`
    still works with a bad config while `transcribe a.wav` is exit 2 naming the file and the key."""

    def __init__(self, command: Any, formats: dict[str, list[str]]) -> None:
        super().__init__()
        self._command = command
        self._formats = formats
        self._loaded: dict[str, dict[str, Any]] | None = None
        self.error: GemmapipeError | None = None

    def get(self, name: Any, default: Any = None) -> Any:
        if name not in COMMANDS:
            return default
        if self._loaded is None:
            from gemmapipe.core.config import config_path, default_map, load_config

            try:
                path = config_path()
                self._loaded = default_map(load_config(), config_keys(self._command, self._formats), path)
            except GemmapipeError as exc:
                self.error, self._loaded = exc, {}
        return self._loaded.get(name, default)


_current: _ConfigDefaults | None = None


def raise_config_error() -> None:
    """Called as a command starts: the config file's problem, if it has one, is this command's."""
    if _current is not None and _current.error is not None:
        raise _current.error


def config_keys(command: Any, formats: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Per subcommand: config key (long option name with underscores; also the parameter name) ->
    what it takes, checked with the option's own Click type (ranges, choices, finite floats)."""
    from typer._click import types as ct
    from typer._click.exceptions import BadParameter
    from typer.models import TyperPath

    from gemmapipe.core.config import Key

    def checker(param: Any, choices: list[str] | None, several: bool = False) -> Any:
        def check(value: Any) -> Any:
            if choices is not None and isinstance(value, str):
                # transcribe and diarize take several formats at once: "srt,vtt,json" or "all"
                parts = [p.strip() for p in value.split(",")] if several else [value]
                for part in parts:
                    if part not in choices and not (several and part == "all"):
                        raise ValueError(f"unknown format {part!r} (choose one of {', '.join(choices)})")
            try:
                if param.multiple:
                    return [param.type.convert(v, param, None) for v in value]
                return param.type.convert(value, param, None)
            except BadParameter as exc:
                raise ValueError(exc.message.rstrip(".")) from None
        return check

    # formats: per command, what -f/--format takes (a plain string the command checks itself)
    out: dict[str, dict[str, Any]] = {}
    for name in COMMANDS:
        table: dict[str, Any] = {}
        for param in command.commands[name].params:
            if param.param_type_name != "option" or param.name is None:
                continue
            ptype = param.type
            if param.multiple:
                kind = "list"
            elif getattr(param, "is_bool_flag", False) or isinstance(ptype, ct.BoolParamType):
                kind = "bool"
            elif isinstance(ptype, ct.IntParamType):
                kind = "int"
            elif isinstance(ptype, ct.FloatParamType):
                kind = "float"
            elif isinstance(ptype, TyperPath):
                kind = "path"
            else:
                kind = "str"
            choices = formats.get(name) if param.name == "fmt" else None
            several = name in SEVERAL_FORMATS and choices is not None
            key = Key(param.name, kind, None if kind == "bool" else checker(param, choices, several))
            names = [o.lstrip("-") for o in param.opts if o.startswith("--")] + [param.name]
            for n in names:
                table[n.replace("-", "_")] = key
        out[name] = table
    return out


def start(command: Any, formats: dict[str, list[str]]) -> _ConfigDefaults:
    """The default map for this run of `command` (the Click group); `formats`: what -f takes, per command."""
    global _current
    _current = _ConfigDefaults(command, formats)
    return _current
