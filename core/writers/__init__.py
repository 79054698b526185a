"""Writers: one small class per output format, a text file object in (in the spirit of whisper's utils).

Transcripts (transcribe, diarize) stream through a `SegmentWriter`::

    with get_writer("srt", sys.stdout) as w:
        write_transcript(w, transcript)        # or w.begin / w.segment ... / w.end as segments finish

Descriptions (describe, video, chat) go through a `DescriptionWriter`: `write(desc)` then `close()`.
Importing this package is cheap (no numpy).
"""

from __future__ import annotations

from typing import Any, TextIO

from ..errors import UsageError
from .base import (
    DescriptionWriter,
    SegmentWriter,
    error_record,
    format_timestamp,
    write_error_record,
    write_transcript,
)
from .describe import DescriptionJsonlWriter, DescriptionJsonWriter, DescriptionTxtWriter, MarkdownWriter
from .jsonfmt import JsonlWriter, JsonWriter
from .text import RttmWriter, SrtWriter, TsvWriter, TxtWriter, VttWriter

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


def get_writer(fmt: str, out: TextIO, *, bilingual: bool = False, **kw: Any) -> SegmentWriter:
    """A transcript writer for `fmt` (a key of FORMATS) over `out`; kw: with_file, and speakers for tsv.
    `bilingual`: translated segments show their text and their translation (txt, srt, vtt)."""
    cls: type[SegmentWriter] = _lookup(FORMATS, fmt, "transcript")
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
    "DescriptionJsonWriter",
    "DescriptionJsonlWriter",
    "DescriptionTxtWriter",
    "DescriptionWriter",
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
