"""Line formats for transcripts: txt, srt, vtt, tsv, rttm."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any, ClassVar, TextIO

from ..results import Segment
from .base import SegmentWriter, format_timestamp, one_line
from .cues import Cue, CueRules, CueTimer, shape_cues, width


def _seconds_text(ms: int) -> str:
    """Seconds with exactly 3 decimals from integer ms, without going through a float."""
    ms = max(0, int(ms))
    return f"{ms // 1000}.{ms % 1000:03d}"


class TxtWriter(SegmentWriter):
    """One line per segment; `[HH:MM:SS] S1: text` for a segment with a speaker.

    With `with_file`, each input opens with a `==> file <==` line (as `head` and `tail` do), inputs
    separated by an empty line.
    """

    extension: ClassVar[str] = "txt"

    def begin(self, file: str, meta: dict[str, Any]) -> None:
        if self.with_file:
            sep = "\n" if self.inputs else ""
            self.out.write(f"{sep}==> {one_line(file)} <==\n")
        super().begin(file, meta)

    def segment(self, seg: Segment) -> None:
        text = "\n".join(one_line(t) for t in self.texts(seg))
        if seg.speaker is not None:
            stamp = format_timestamp(seg.start_ms, millis=False)
            text = f"[{stamp}] {one_line(seg.speaker)}: {text}"
        self.out.write(text + "\n")


class _SubtitleWriter(SegmentWriter):
    """SRT and WebVTT: each segment as one or more cues of a readable shape (core/writers/cues.py:
    line width, line count, duration, reading time; never overlapping, never of zero length).

    Each input gives exactly the document it would give alone (numbering restarts, VTT repeats its
    header): these formats cannot hold several files, so several inputs are concatenated documents.
    Cues whose text is empty are skipped; empty lines inside text are dropped (they would end the cue).
    The last cue of a segment is written when the next segment (or the end of the input) says how
    long it may stay on screen.
    """

    decimal: ClassVar[str] = "."

    def __init__(self, out: TextIO, *, with_file: bool = False, rules: CueRules | None = None) -> None:
        super().__init__(out, with_file=with_file)
        self.rules = rules or CueRules()
        self.timer = CueTimer(self.rules)
        self.index = 0  # cues written for the current input

    def begin(self, file: str, meta: dict[str, Any]) -> None:
        self._flush()
        super().begin(file, meta)
        self.index = 0
        self.timer.reset()

    def label(self, speaker: str) -> str:
        """What marks the speaker at the start of a cue."""
        return f"[{speaker}] "

    def segment(self, seg: Segment) -> None:
        speaker = None if seg.speaker is None else one_line(seg.speaker)
        label = "" if speaker is None else self.label(speaker)
        text = "\n".join(self.texts(seg))  # with --bilingual: the text, then its translation
        for cue in shape_cues(text, seg.start_ms, seg.end_ms, self.rules, label_width=width(label)):
            cue.speaker = speaker
            done = self.timer.push(cue)
            if done is not None:
                self._write(done)

    def end(self, file: str, meta: dict[str, Any]) -> None:
        self._flush()

    def close(self) -> None:
        if not self.closed:
            self._flush()
        super().close()

    def _flush(self) -> None:
        done = self.timer.flush()
        if done is not None:
            self._write(done)

    def _write(self, cue: Cue) -> None:
        self.index += 1
        self.write_cue(cue, cue.speaker)

    def write_cue(self, cue: Cue, speaker: str | None) -> None:
        raise NotImplementedError

    def timing(self, cue: Cue) -> str:
        start = format_timestamp(cue.start_ms, self.decimal)
        end = format_timestamp(cue.end_ms, self.decimal)
        return f"{start} --> {end}"


class SrtWriter(_SubtitleWriter):
    """SubRip: numbered cues; a diarized cue starts with `[S1] `."""

    extension: ClassVar[str] = "srt"
    decimal: ClassVar[str] = ","

    def write_cue(self, cue: Cue, speaker: str | None) -> None:
        text = "\n".join(cue.lines)
        if speaker is not None:
            text = self.label(speaker) + text
        self.out.write(f"{self.index}\n{self.timing(cue)}\n{text}\n\n")


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class VttWriter(_SubtitleWriter):
    """WebVTT; hours always shown; `&`, `<`, `>` escaped as the cue-text syntax requires; a diarized
    cue is a voice span, `<v S1>text` (the standard speaker tag; players may style or list voices).

    With `with_file`, a `NOTE file: name` block follows each header.
    """

    extension: ClassVar[str] = "vtt"
    decimal: ClassVar[str] = "."

    def begin(self, file: str, meta: dict[str, Any]) -> None:
        super().begin(file, meta)
        self.out.write("WEBVTT\n\n")
        if self.with_file:
            self.out.write(f"NOTE file: {one_line(file).replace('-->', '->')}\n\n")

    def label(self, speaker: str) -> str:
        return ""  # the voice tag is not shown as text: it takes no room on the line

    def write_cue(self, cue: Cue, speaker: str | None) -> None:
        text = "\n".join(_vtt_escape(line) for line in cue.lines)
        if speaker is not None:
            text = f"<v {_vtt_escape(speaker)}>{text}"
        self.out.write(f"{self.timing(cue)}\n{text}\n\n")


class TsvWriter(SegmentWriter):
    """Whisper's TSV: header `start<TAB>end<TAB>text`, times in integer milliseconds.

    A `speaker` column is appended (so the first three columns stay whisper's) when `speakers` is
    True, or, when it is None (the default), when the first segment of the stream has a speaker.
    Without that column a segment's speaker is not lost: its text reads `[S1] text`.
    With `with_file`, a `file` column comes first. One header per stream, written with the first row
    (or at close when there was none). Tabs and line breaks in text become spaces.
    """

    extension: ClassVar[str] = "tsv"

    def __init__(self, out: TextIO, *, with_file: bool = False, speakers: bool | None = None) -> None:
        super().__init__(out, with_file=with_file)
        self.speakers = speakers
        self.header_written = False
        self.file = ""

    def _header(self, first: Segment | None) -> None:
        if self.speakers is None:
            self.speakers = first is not None and first.speaker is not None
        cols = ["start", "end", "text"]
        if self.speakers:
            cols.append("speaker")
        if self.with_file:
            cols.insert(0, "file")
        self.out.write("\t".join(cols) + "\n")
        self.header_written = True

    def begin(self, file: str, meta: dict[str, Any]) -> None:
        super().begin(file, meta)
        self.file = file

    def segment(self, seg: Segment) -> None:
        if not self.header_written:
            self._header(seg)
        text = one_line(self.texts(seg)[-1])  # one text column: the translation, when there is one
        speaker = None if seg.speaker is None else one_line(seg.speaker)
        if speaker is not None and not self.speakers:
            text = f"[{speaker}] {text}"
        row = [str(int(seg.start_ms)), str(int(seg.end_ms)), text]
        if self.speakers:
            row.append(speaker or "")
        if self.with_file:
            row.insert(0, one_line(self.file))
        self.out.write("\t".join(row) + "\n")

    def close(self) -> None:
        if not self.closed and not self.header_written:
            self._header(None)
        super().close()


def rttm_file_id(file: str) -> str:
    """The RTTM file-id of an input: its stem, whitespace replaced by `_` (`-` reads `stdin`)."""
    if file in ("", "-"):
        return "stdin"
    stem = PurePath(file).stem or PurePath(file).name or "stdin"
    return re.sub(r"\s+", "_", stem)


class RttmWriter(SegmentWriter):
    """NIST RTTM: `SPEAKER <file-id> 1 <onset> <duration> <NA> <NA> <speaker> <NA> <NA>`.

    Onset and duration in seconds with 3 decimals. A segment with no speaker is labelled `SPEECH`
    (speech activity, as pyannote labels VAD output); whitespace in names becomes `_`.
    """

    extension: ClassVar[str] = "rttm"
    unknown_speaker: ClassVar[str] = "SPEECH"

    def __init__(self, out: TextIO, *, with_file: bool = False) -> None:
        super().__init__(out, with_file=with_file)
        self.file_id = "stdin"

    def begin(self, file: str, meta: dict[str, Any]) -> None:
        super().begin(file, meta)
        self.file_id = rttm_file_id(file)

    def segment(self, seg: Segment) -> None:
        speaker = self.unknown_speaker if seg.speaker is None else seg.speaker
        speaker = re.sub(r"\s+", "_", speaker.strip()) or self.unknown_speaker
        onset = _seconds_text(seg.start_ms)
        duration = _seconds_text(seg.end_ms - seg.start_ms)
        self.out.write(f"SPEAKER {self.file_id} 1 {onset} {duration} <NA> <NA> {speaker} <NA> <NA>\n")
