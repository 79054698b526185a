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
