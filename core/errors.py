"""Typed errors and the exit status each one maps to (the only place that mapping lives)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # runtime failure
    USAGE = 2  # bad flags or arguments
    BAD_INPUT = 3  # unreadable or undecodable media
    MODEL = 4  # model or projector missing, not GGUF, corrupt, mismatched, modality missing
    PARTIAL = 5  # some inputs of a batch failed
    INTERRUPTED = 130  # Ctrl-C / SIGTERM


EXIT_STATUS_HELP: dict[ExitStatus, str] = {
    ExitStatus.OK: "success",
    ExitStatus.ERROR: "runtime failure",
    ExitStatus.USAGE: "usage error (bad option or argument)",
    ExitStatus.BAD_INPUT: "bad input (unreadable or undecodable media)",
    ExitStatus.MODEL: "model problem (missing, not GGUF, corrupt, projector mismatch, modality missing)",
    ExitStatus.PARTIAL: "some inputs of a batch failed",
    ExitStatus.INTERRUPTED: "interrupted (SIGINT/SIGTERM)",
}


_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")


def render(text: str, names: Mapping[str, str] | None = None) -> str:
    """Fill the `{parameter}` placeholders of a message: with `names[parameter]` (the command line
    passes its flag names), else with the parameter name itself. Unknown names stay as written."""
    def fill(m: re.Match[str]) -> str:
        key = m.group(1)
        if names is None:
            return key
        return names.get(key, m.group(0))

    return _PLACEHOLDER.sub(fill, text)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` safe for one line on a terminal: control characters (C0, DEL, C1) written as `\\n`, `\\r`,
    `\\t` or `\\xNN`, line separators as `\\u2028`, and bytes that were not UTF-8 (surrogate escapes
    in file names) as `\\xNN`.  Used by every line gemmapipe writes to stderr about an input."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        o = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif o < 0x20 or 0x7F <= o <= 0x9F:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's escape for an undecodable byte
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o in (0x2028, 0x2029):  # line and paragraph separators
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    return "".join(out)


class GemmapipeError(Exception):
    """An error meant for people: `subject` is what failed, `reason` why, `hint` what to do.

    Core never names a command-line flag. When a parameter is at fault, `parameter` holds its name
    (as `SessionConfig` and the task options spell it: "ctx_size", "output_dir") and the subject
    defaults to it; reasons and hints refer to parameters as `{ctx_size}`. The command line renders
    both with its flag names (one table, gemmapipe.cli.errors); `str(exc)` uses the parameter names.
    """

    exit_status: ExitStatus = ExitStatus.ERROR

    def __init__(self, subject: str | None, reason: str, hint: str | None = None, *,
                 parameter: str | None = None) -> None:
        subject = subject if subject is not None else (parameter or "")
        self.subject = subject
        self.reason = reason
        self.hint = hint
        self.parameter = parameter
        super().__init__(f"{render(subject)}: {render(reason)}")


class UsageError(GemmapipeError):
    exit_status = ExitStatus.USAGE


class BadInput(GemmapipeError):
    exit_status = ExitStatus.BAD_INPUT


class ModelError(GemmapipeError):
    exit_status = ExitStatus.MODEL


class ContextOverflow(GemmapipeError):
    """The request needs more tokens than the context holds; raised before anything is evaluated."""

    exit_status = ExitStatus.ERROR

    def __init__(self, subject: str, needed: int, n_ctx: int, hint: str | None = None) -> None:
        super().__init__(
            subject,
            f"needs {needed} tokens but the context holds {n_ctx}",
            hint or f"raise {{ctx_size}} to at least {needed}, or shorten the input",
        )
        self.needed = needed
        self.n_ctx = n_ctx


class BatchFailed(GemmapipeError):
    exit_status = ExitStatus.PARTIAL
