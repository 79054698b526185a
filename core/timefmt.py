"""Parse user time arguments (`90`, `1:30`, `01:02:03.5`, `2.5s`, `1500ms`) into integer milliseconds."""

from __future__ import annotations

from .errors import UsageError


def parse_time_ms(text: str | None, *, what: str = "time") -> int | None:
    if text is None or text == "":
        return None
    s = text.strip().lower()
    try:
        if s.endswith("ms"):
            value = float(s[:-2])
            ms = round(value)
        elif s.endswith("s") and ":" not in s:
            ms = round(float(s[:-1]) * 1000)
        elif ":" in s:
            parts = s.split(":")
            if len(parts) > 3:
                raise ValueError
            total = 0.0
            for p in parts:
                total = total * 60 + float(p)
            ms = round(total * 1000)
        else:
            ms = round(float(s) * 1000)
    except ValueError:
        raise UsageError(what, f"cannot read {text!r} as a time",
                         "use seconds (90), mm:ss (1:30) or hh:mm:ss.s") from None
    if ms < 0:
        raise UsageError(what, f"{text!r} is negative")
    return ms


def clock(ms: int) -> str:
    """`mm:ss` under an hour, `h:mm:ss` beyond: the label the model sees before each second of video."""
    s = ms // 1000
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"
