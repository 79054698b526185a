"""Writers: one small class per output format, a text file object in (in the spirit of whisper's utils).

Transcripts (transcribe, diarize) stream through a `SegmentWriter`::

    with get_writer("srt", sys.stdout) as w:
        write_transcript(w, transcript)        # or w.begin / w.segment ... / w.end as segments finish

Several formats from one pass: `FanoutWriter([get_writer("srt", a), get_writer("json", b)])`.
SRT and WebVTT cues are shaped by `CueRules` (core/writers/cues.py: line width and count, duration).

Descriptions (describe, video, chat) go through a `DescriptionWriter`: `write(desc)` then `close()`.
Importing this package is cheap (no numpy).
"""

from __future__ import annotations

from typing import Any, TextIO

from ..errors import UsageError
from .base import (
    DescriptionWriter,
    FanoutWriter,
    SegmentWriter,
    error_record,
    format_timestamp,
    write_error_record,
    write_transcript,
)
from .cues import CueRules
from .describe import DescriptionJsonlWriter, DescriptionJsonWriter, DescriptionTxtWriter, MarkdownWriter
from .jsonfmt import JsonlWriter, JsonWriter
from .text import RttmWriter, SrtWriter, TsvWriter, TxtWriter, VttWriter

SUBTITLE_FORMATS = frozenset({"srt", "vtt"})  # cues shaped by CueRules

FORMATS: dict[str, type[SegmentWriter]] = {
    "txt": TxtWriter,
    "srt": SrtWriter,
    "vtt": VttWriter,
    "json": JsonWriter,
    "jsonl": JsonlWriter,
    "tsv": TsvWriter,
    "rttm": RttmWriter,
}

DESCRIPTION_FORMATS: dict[str, type[DescriptionWriter]] = {
    "txt": DescriptionTxtWriter,
    "json": DescriptionJsonWriter,
    "jsonl": DescriptionJsonlWriter,
    "md": MarkdownWriter,
}


def _lookup(table: dict[str, Any], fmt: str, what: str) -> Any:
    try:
        return table[fmt.lower()]
    except KeyError:
        raise UsageError(
            None, f"unknown {what} format {fmt!r}", f"choose one of: {', '.join(table)}", parameter="format"
        ) from None


def get_writer(fmt: str, out: TextIO, *, rules: CueRules | None = None, bilingual: bool = False,
               **kw: Any) -> SegmentWriter:
    """A transcript writer for `fmt` (a key of FORMATS) over `out`; kw: with_file, and speakers for tsv.
    `rules`: the shape of srt and vtt cues (CueRules' defaults when None; other formats ignore it).
    `bilingual`: translated segments show their text and their translation (txt, srt, vtt)."""
    cls: type[SegmentWriter] = _lookup(FORMATS, fmt, "transcript")
    if rules is not None and fmt.lower() in SUBTITLE_FORMATS:
        kw["rules"] = rules
    writer = cls(out, **kw)
    writer.bilingual = bilingual
    return writer


def get_description_writer(fmt: str, out: TextIO, **kw: Any) -> DescriptionWriter:
    """A description writer for `fmt` (a key of DESCRIPTION_FORMATS) over `out`; kw: with_file."""
    cls: type[DescriptionWriter] = _lookup(DESCRIPTION_FORMATS, fmt, "description")
    return cls(out, **kw)


__all__ = [
    "DESCRIPTION_FORMATS",
    "FORMATS",
    "SUBTITLE_FORMATS",
    "CueRules",
    "DescriptionJsonWriter",
    "DescriptionJsonlWriter",
    "DescriptionTxtWriter",
    "DescriptionWriter",
    "FanoutWriter",
    "JsonWriter",
    "JsonlWriter",
    "MarkdownWriter",
    "RttmWriter",
    "SegmentWriter",
    "SrtWriter",
    "TsvWriter",
    "TxtWriter",
    "VttWriter",
    "error_record",
    "format_timestamp",
    "get_description_writer",
    "get_writer",
    "write_error_record",
    "write_transcript",
]
