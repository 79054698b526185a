"""Generate man/gemmapipe.1 (one page, a section per subcommand) and the bash/zsh/fish completion
scripts from the Typer app itself, so they cannot drift from the options.

    python -m gemmapipe.cli.docgen [REPO_ROOT]     # rewrite man/ and completions/
    python -m gemmapipe.cli.docgen --check ROOT    # exit 1 if any is stale (tests run this)
"""

import sys
from pathlib import Path
from typing import Any

from gemmapipe.core.errors import EXIT_STATUS_HELP

SHELLS = {"bash": "gemmapipe.bash", "zsh": "_gemmapipe", "fish": "gemmapipe.fish"}


def _esc(text: str) -> str:
    text = " ".join(str(text).split())
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _arg_name(p: Any) -> str:
    return str(p.metavar or p.name).upper()


def _metavar(p: Any) -> str:
    # Typer 0.29 keeps the annotation on the parameter; earlier versions give Click a typed ParamType
    ann = str(getattr(getattr(p, "type_descriptor", None), "annotation", ""))
    ann += " " + str(getattr(getattr(p, "type", None), "name", ""))
    for key, name in (("int", "N"), ("float", "X"), ("path", "PATH")):
        if key in ann.lower():
            return name
    return "TEXT"


def _params(cmd: Any) -> list[tuple[str, str]]:
    rows = []
    for p in cmd.params:
        if getattr(p, "hidden", False):
            continue
        if p.param_type_name == "argument":
            rows.append((_arg_name(p), getattr(p, "help", "") or ""))
            continue
        names = ", ".join([*p.opts, *p.secondary_opts])
        metavar = "" if getattr(p, "is_flag", False) else f" {_metavar(p)}"
        extra = []
        if p.envvar:
            extra.append(f"[env: {p.envvar}]")
        if p.default not in (None, False, "", ()) and not getattr(p, "is_flag", False):
            extra.append(f"[default: {p.default}]")
        rows.append((names + metavar, " ".join([p.help or "", *extra]).strip()))
    return rows


def man_page() -> str:
    import typer

    from gemmapipe import __version__

    from .app import COMMANDS, app

    group = typer.main.get_command(app)
    lines = [
        f'.TH GEMMAPIPE 1 "" "gemmapipe {__version__}" "User Commands"',
        ".SH NAME",
        "gemmapipe \\- Gemma 4 unified multimodal model from the shell",
        ".SH SYNOPSIS",
    ]
    for name in COMMANDS:
        cmd = group.commands[name]  # type: ignore[attr-defined]
        args = " ".join(_arg_name(p) for p in cmd.params if p.param_type_name == "argument")
        lines += [f".B gemmapipe {name}", f"[\\fIOPTIONS\\fR] {_esc(args)}", ".br"]
    lines += [".SH DESCRIPTION", _esc(group.help or "")]
    for name in COMMANDS:
        cmd = group.commands[name]  # type: ignore[attr-defined]
        lines += [f'.SH "gemmapipe {name}"', _esc(cmd.help or "")]
        for flag, help_text in _params(cmd):
            lines += [".TP", f"\\fB{_esc(flag)}\\fR", _esc(help_text)]
    lines += [".SH ENVIRONMENT",
              ".TP", "\\fBGEMMAPIPE_MODEL\\fR, \\fBGEMMAPIPE_MMPROJ\\fR", "Default model and projector.",
              ".TP", "\\fBGEMMAPIPE_TRACEBACK\\fR", "Set to 1 to show tracebacks on errors.",
              ".TP", "\\fBGEMMAPIPE_VIDEO_THREADS\\fR",
              "Video decoders working at once, each from its own keyframe (default: the usable cores, at most 8).",
              ".TP", "\\fBGEMMAPIPE_AUDIO_PROCS\\fR",
              "Helper processes decoding long audio files (0: none, all in the calling process).",
              ".TP", "\\fBGEMMAPIPE_AUDIO_SNDFILE\\fR",
              "Set to 0 to decode long MP3 files with FFmpeg (PyAV) instead of libsndfile in parallel pieces.",
              ".TP", "\\fBXDG_CONFIG_HOME\\fR",
              _esc("Defaults are read from $XDG_CONFIG_HOME/gemmapipe/config.toml; precedence: "
                   "flag > environment > config file > built-in."),
              ".SH EXIT STATUS"]
    for code, text in EXIT_STATUS_HELP.items():
        lines += [".TP", f"\\fB{int(code)}\\fR", _esc(text)]
    return "\n".join(lines) + "\n"


def completion(shell: str) -> str:
    from .completion import SCRIPTS

    return SCRIPTS[shell]


def outputs(root: Path) -> dict[Path, str]:
    files = {root / "man" / "gemmapipe.1": man_page()}
    for shell, name in SHELLS.items():
        files[root / "completions" / name] = completion(shell)
    return files


def main(argv: list[str]) -> int:
    check = "--check" in argv
    rest = [a for a in argv if a != "--check"]
    root = Path(rest[0]) if rest else Path.cwd()
    stale = []
    for path, text in outputs(root).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}", file=sys.stderr)
    if stale:
        print("stale: " + ", ".join(stale) + " (run: python -m gemmapipe.cli.docgen)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
