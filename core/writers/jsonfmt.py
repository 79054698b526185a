"""JSON formats for transcripts: json (one object per input) and jsonl (one object per segment)."""

from __future__ import annotations

from typing import Any, ClassVar, TextIO

from ..results import Segment
from .base import SegmentWriter, dumps, segment_record, write_error_record


class JsonWriter(SegmentWriter):
    """One JSON object per input, written (and flushed) when the input ends, on one line::

        {"file": ..., "segments": [{"start": 1.5, "end": 2.0, "start_ms": 1500, "end_ms": 2000,
          "text": ..., "speaker": null, "flags": []}, ...], "meta": {...}}

    One input gives one valid JSON document; several inputs give one object per line (JSON Lines),
    which `jq` reads as it comes (`jq -s` makes an array of them). A stream never holds a half-open
    array, so a batch that dies midway still leaves every finished input readable. The object always
    carries `file`, so `with_file` changes nothing here.
    """

    extension: ClassVar[str] = "json"

    def __init__(self, out: TextIO, *, with_file: bool = False) -> None:
        super().__init__(out, with_file=with_file)
        self.segments: list[dict[str, Any]] = []

    def begin(self, file: str, meta: dict[str, Any]) -> None:
        super().begin(file, meta)
        self.segments = []

    def segment(self, seg: Segment) -> None:
        self.segments.append(segment_record(seg))

    def end(self, file: str, meta: dict[str, Any]) -> None:
        self.out.write(dumps({"file": file, "segments": self.segments, "meta": meta}) + "\n")
        self.out.flush()
        self.segments = []


class JsonlWriter(SegmentWriter):
    """One object per segment and line, `file` first, flushed at once so `| jq` streams::

        {"file": ..., "start": 1.5, "end": 2.0, "start_ms": 1500, "end_ms": 2000, "text": ...,
         "speaker": null, "flags": []}

    A failed input is recorded as `{"file": ..., "error": "..."}` (see `error`). Meta is not written.
    """

    extension: ClassVar[str] = "jsonl"

    def __init__(self, out: TextIO, *, with_file: bool = False) -> None:
        super().__init__(out, with_file=with_file)
        self.file = ""

    def begin(self, file: str, meta: dict[str, Any]) -> None:
        super().begin(file, meta)
        self.file = file

    def segment(self, seg: Segment) -> None:
        self.out.write(dumps(segment_record(seg, self.file)) + "\n")
        self.out.flush()

    def error(self, file: str, error: str | BaseException) -> None:
        write_error_record(self.out, file, error)
