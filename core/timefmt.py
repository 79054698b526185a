"""Parse user time arguments (`90`, `1:30`, `01:02:03.5`, `2.5s`, `1500ms`) into integer milliseconds."""

from __future__ import annotations

import math

from .errors import BadInput, UsageError

MAX_MS = 1000 * 3600 * 1000
"""The latest time accepted (1000 hours): far past any recording, and small enough for every
decoder's 64-bit timestamps however fine its time base."""

_HINT = "use seconds (90), mm:ss (1:30) or hh:mm:ss.s"


def parse_time_ms(text: str | None, *, what: str = "time") -> int | None:
    if text is None or text == "":
        return None
    s = text.strip().lower()

    def bad(reason: str) -> UsageError:
        return UsageError(what, reason, _HINT)

    def number(part: str) -> float:
        try:
            value = float(part)
        except ValueError:
            raise bad(f"cannot read {text!r} as a time") from None
        if not math.isfinite(value):
            raise bad(f"{text!r} is not a finite time")
        if value < 0 or part.lstrip().startswith("-"):
            raise UsageError(what, f"{text!r} is negative")
        return value

    if s.endswith("ms"):
        seconds = number(s[:-2]) / 1000
    elif s.endswith("s") and ":" not in s:
        seconds = number(s[:-1])
    elif ":" in s:
        parts = s.split(":")
        if len(parts) > 3:
            raise bad(f"cannot read {text!r} as a time")
        values = [number(p) for p in parts]
        if any(v != int(v) for v in values[:-1]):
            raise bad(f"{text!r}: only the seconds may have a fraction")
        if any(v >= 60 for v in values[1:]):
            raise bad(f"{text!r}: minutes and seconds after a ':' must be under 60")
        seconds = 0.0
        for v in values:
            seconds = seconds * 60 + v
    else:
        seconds = number(s)
    if seconds * 1000 > MAX_MS:
        raise bad(f"{text!r} is too large (at most {MAX_MS // 3_600_000} hours)")
    return round(seconds * 1000)


def require_start_before_end(name: str, stream: str, start_ms: int | None, duration_ms: int | None) -> None:
    """BadInput (exit 3) when a start time is at or past the end of a stream of known length: the one
    rule for every command (transcribe, diarize, video, their dry runs)."""
    if start_ms and duration_ms is not None and start_ms >= duration_ms:
        raise BadInput(name, f"has no {stream} after {start_ms} ms (it lasts {duration_ms} ms)")


def clock(ms: int) -> str:
    """`mm:ss` under an hour, `h:mm:ss` beyond: the label the model sees before each second of video."""
    s = ms // 1000
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"
