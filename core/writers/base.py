"""Writer bases and the small helpers every format shares.

Writers only format results; they never open, close or rename files. Each takes a text file object
(stdout, or a temporary file the CLI renames into place) and writes to it as results arrive.

A segment writer sees one stream, which may hold several inputs::

    w = get_writer("srt", sys.stdout)
    w.begin(file, meta)          # start of one input
    w.segment(seg)               # as each segment finishes
    w.end(file, meta)            # end of that input (meta may have grown meanwhile)
    ...                          # more inputs
    w.close()                    # end of the stream: flushes, never closes `out`

Times stay integer milliseconds until formatted here.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, TextIO

from ..results import Description, Segment, Transcript, display_texts


def format_timestamp(ms: int, decimal: str = ".", *, millis: bool = True) -> str:
    """`HH:MM:SS.mmm` (or `HH:MM:SS` when millis is False). Hours never wrap: 100 h reads `100:00:00.000`."""
    if ms < 0:
        raise ValueError(f"negative timestamp: {ms} ms")
    ms = int(ms)
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis_part = divmod(rest, 1_000)
    stamp = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{stamp}{decimal}{millis_part:03d}" if millis else stamp


def seconds(ms: int) -> float:
    """Milliseconds as seconds with (at most) 3 decimals; `1234567 -> 1234.567` exactly as printed."""
    return round(int(ms) / 1000, 3)


def one_line(text: str) -> str:
    """Text on one line: every line break and tab becomes a space, runs of blanks are kept as written."""
    parts = text.replace("\t", " ").splitlines()
    return " ".join(p.strip() for p in parts if p.strip())


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(obj: Any) -> str:
    """JSON on one line, UTF-8 text kept as is; anything unserializable in meta becomes a string.

    U+0085, U+2028 and U+2029 are legal raw in JSON strings but are line breaks to many line readers
    (Python's str.splitlines among them), so they are escaped: one record stays one line.
    """
    text = json.dumps(obj, ensure_ascii=False, default=str)
    for ch in "\x85\u2028\u2029":
        if ch in text:
            text = text.replace(ch, f"\\u{ord(ch):04x}")
    # A file name that is not UTF-8 (bytes kept by surrogateescape) would make the document invalid
    # UTF-8: write its lone surrogates as JSON escapes (\udcff), which json.loads reads back exactly.
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def segment_record(seg: Segment, file: str | None = None) -> dict[str, Any]:
    """The JSON shape of one segment: seconds (3 decimals) for people, integer ms for programs."""
    rec: dict[str, Any] = {} if file is None else {"file": file}
    rec.update(
        start=seconds(seg.start_ms),
        end=seconds(seg.end_ms),
        start_ms=int(seg.start_ms),
        end_ms=int(seg.end_ms),
        text=seg.text,
    )
    if seg.translation is not None:
        rec["translation"] = seg.translation
    rec.update(speaker=seg.speaker, flags=list(seg.flags))
    return rec


def error_record(file: str, error: str | BaseException) -> str:
    """One JSON line telling that an input failed: `{"file": ..., "error": "..."}` (no trailing newline)."""
    return dumps({"file": file, "error": str(error)})


def write_error_record(out: TextIO, file: str, error: str | BaseException) -> None:
    """Write an error record line to a JSON Lines stream and flush it, so `| jq` sees it at once."""
    out.write(error_record(file, error) + "\n")
    out.flush()


class SegmentWriter:
    """Base of the transcript writers. Subclasses override the hooks they need."""

    extension: ClassVar[str] = ""
    bilingual: bool = False  # a translated segment shows its text and its translation (see display_texts)

    def __init__(self, out: TextIO, *, with_file: bool = False) -> None:
        self.out = out
        self.with_file = with_file  # several inputs share this stream: say which input each line is from
        self.inputs = 0  # inputs begun so far
        self.closed = False

    def texts(self, seg: Segment) -> list[str]:
        """The lines this stream shows for `seg` (core.results.display_texts)."""
        return display_texts(seg, bilingual=self.bilingual)

    def begin(self, file: str, meta: dict[str, Any]) -> None:
        """Start of one input."""
        self.inputs += 1

    def segment(self, seg: Segment) -> None:
        """One finished segment of the current input."""

    def end(self, file: str, meta: dict[str, Any]) -> None:
        """End of the current input."""

    def error(self, file: str, error: str | BaseException) -> None:
        """An input failed. Only the JSON Lines writer records it in the stream; the others ignore it."""

    def close(self) -> None:
        """End of the stream: write any trailer and flush. The file object itself stays open."""
        if not self.closed:
            self.closed = True
            self.out.flush()

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FanoutWriter:
    """Several writers fed from one stream of segments (`-f srt,vtt,json`: one model pass, every
    format written from the same segments): begin, segment, end, error and close go to each, in order."""

    def __init__(self, writers: list[SegmentWriter]) -> None:
        self.writers = list(writers)

    def begin(self, file: str, meta: dict[str, Any]) -> None:
        for w in self.writers:
            w.begin(file, meta)

    def segment(self, seg: Segment) -> None:
        for w in self.writers:
            w.segment(seg)

    def end(self, file: str, meta: dict[str, Any]) -> None:
        for w in self.writers:
            w.end(file, meta)

    def error(self, file: str, error: str | BaseException) -> None:
        for w in self.writers:
            w.error(file, error)

    def close(self) -> None:
        for w in self.writers:
            w.close()

    def __enter__(self) -> FanoutWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_transcript(writer: SegmentWriter, transcript: Transcript) -> None:
    """Feed one whole transcript through a streaming writer (begin, every segment, end); does not close."""
    writer.begin(transcript.file, transcript.meta)
    for seg in transcript.segments:
        writer.segment(seg)
    writer.end(transcript.file, transcript.meta)


class DescriptionWriter:
    """Base of the writers for describe, video and chat results: one `write` per input."""

    extension: ClassVar[str] = ""

    def __init__(self, out: TextIO, *, with_file: bool = False) -> None:
        self.out = out
        self.with_file = with_file
        self.count = 0  # results written so far
        self.closed = False

    def write(self, desc: Description) -> None:
        raise NotImplementedError

    def error(self, file: str, error: str | BaseException) -> None:
        """An input failed. Only the JSON Lines writer records it in the stream; the others ignore it."""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.out.flush()

    def __enter__(self) -> DescriptionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
