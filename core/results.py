"""Results are plain dataclasses; writers format them, tasks never print.

Times are integer milliseconds from the start of the input (derived from sample counts at 16 kHz,
so they never drift), until a writer formats them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Segment:
    start_ms: int
    end_ms: int
    text: str
    speaker: str | None = None
    flags: list[str] = field(default_factory=list)  # e.g. "repetition" when a loop was cut
    # The speech translated (transcribe with a target language); None when nothing was translated.
    translation: str | None = None


def display_texts(seg: Segment, *, bilingual: bool = False) -> list[str]:
    """What a text format shows for a segment, one entry per line: its text; when it was translated,
    the translation instead (the text where the translation came out empty), or with `bilingual` the
    text then the translation. Every writer picks a segment's text here."""
    if not seg.translation:  # not translated, or the model gave no translation
        return [seg.text]
    if bilingual and seg.text:
        return [seg.text, seg.translation]
    return [seg.translation]


@dataclass
class Transcript:
    """The result of transcribe or diarize for one input."""

    file: str
    segments: list[Segment] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Description:
    """The result of describe (one image), video or chat: text, and parsed JSON when a schema was given."""

    file: str
    text: str
    data: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
