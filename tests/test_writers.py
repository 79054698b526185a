"""Writers (core/writers): golden files byte for byte, plus the format rules checked directly.

Regenerate the golden files after a deliberate format change with
`GEMMAPIPE_REGEN_GOLDEN=1 python -m pytest tests/test_writers.py`, then read the diff.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gemmapipe.core.errors import UsageError
from gemmapipe.core.results import Description, Segment, Transcript
from gemmapipe.core.writers import (
    DESCRIPTION_FORMATS,
    FORMATS,
    SegmentWriter,
    error_record,
    format_timestamp,
    get_description_writer,
    get_writer,
    write_error_record,
    write_transcript,
)
from gemmapipe.core.writers.text import rttm_file_id

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("GEMMAPIPE_REGEN_GOLDEN") == "1"

TALK = Transcript(
    "talks/My Talk.wav",
    [
        Segment(0, 1500, "Hello, world."),
        Segment(61_250, 64_000, "Line one\n\nline two"),  # an empty line inside text
        Segment(3_723_004, 3_725_500, "Grüße — 日本語 🎤 <b>&amp;", speaker="S1"),  # past an hour
        Segment(3_725_500, 3_730_000, "tab\there --> arrow\r\n", speaker="Speaker 2", flags=["repetition"]),
        Segment(360_000_000, 360_001_234, "Hundred hours in.", speaker="S1"),
    ],
    {"language": "en", "clips": 3},
)
SECOND = Transcript("clips/b.mp3", [Segment(500, 900, "Second file.", speaker="S2")], {})
DIARIZED = Transcript(
    "meeting.wav",
    [
        Segment(0, 2_040, "Good morning.", speaker="S1"),
        Segment(2_040, 5_000, "Morning!\nShall we start?", speaker="S2"),
        Segment(3_600_000, 3_601_000, "Une heure plus tard…", speaker="S1"),
    ],
    {},
)
PHOTO = Description("photos/cat 1.jpg", "A grey cat asleep on a windowsill.\n\nSunlight from the left.")
FORM = Description(
    "scan.png",
    '{"name": "Zoë", "total": 12.5}',
    data={"name": "Zoë", "total": 12.5},
    meta={"schema": "invoice"},
)
CHART = Description("chart.png", "", data={"bars": [1, 2, 3]})


def render(fmt: str, *transcripts: Transcript, error: str | None = None, **kw: object) -> str:
    out = io.StringIO()
    w = get_writer(fmt, out, **kw)
    for t in transcripts:
        write_transcript(w, t)
        if error:
            w.error(error, "cannot decode: invalid data found")
    w.close()
    return out.getvalue()


def render_desc(fmt: str, *descs: Description, error: str | None = None, **kw: object) -> str:
    out = io.StringIO()
    w = get_description_writer(fmt, out, **kw)
    for d in descs:
        w.write(d)
    if error:
        w.error(error, "not an image")
    w.close()
    return out.getvalue()


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    data = text.encode("utf-8")
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"missing golden file {path}; run with GEMMAPIPE_REGEN_GOLDEN=1"
    assert data == path.read_bytes(), f"{name} differs from the golden file"


# -- golden files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_golden_single(fmt: str) -> None:
    golden(f"talk.{fmt}", render(fmt, TALK))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_golden_several_inputs_with_file(fmt: str) -> None:
    golden(f"multi.{fmt}", render(fmt, TALK, SECOND, with_file=True))


@pytest.mark.parametrize("fmt", ["tsv", "txt", "srt", "rttm"])
def test_golden_diarized(fmt: str) -> None:
    golden(f"diarized.{fmt}", render(fmt, DIARIZED))


def test_golden_jsonl_with_error_records() -> None:
    golden("errors.jsonl", render("jsonl", SECOND, error="broken.wav"))


@pytest.mark.parametrize("fmt", sorted(DESCRIPTION_FORMATS))
def test_golden_descriptions(fmt: str) -> None:
    golden(f"describe.{fmt}", render_desc(fmt, PHOTO))
    golden(f"describe_multi.{fmt}", render_desc(fmt, PHOTO, FORM, CHART, with_file=True))


def test_golden_description_error_record() -> None:
    golden("describe_errors.jsonl", render_desc("jsonl", PHOTO, error="broken.heic"))


# -- the rules behind the golden files -------------------------------------------------------------


def test_format_timestamp() -> None:
    assert format_timestamp(0) == "00:00:00.000"
    assert format_timestamp(3_723_004, ",") == "01:02:03,004"
    assert format_timestamp(3_723_999, millis=False) == "01:02:03"  # floor, never rounds up
    assert format_timestamp(360_000_000) == "100:00:00.000"
    with pytest.raises(ValueError):
        format_timestamp(-1)


def test_txt_lines() -> None:
    lines = render("txt", TALK).splitlines()
    assert len(lines) == len(TALK.segments)
    assert lines[1] == "Line one line two"
    assert lines[2] == "[01:02:03] S1: Grüße — 日本語 🎤 <b>&amp;"
    assert lines[3] == "[01:02:05] Speaker 2: tab here --> arrow"


def test_srt_blocks() -> None:
    text = render("srt", TALK)
    blocks = text.split("\n\n")
    assert blocks[-1] == "" and text.endswith("\n\n")
    blocks = blocks[:-1]
    assert len(blocks) == len(TALK.segments)  # no empty line inside a cue
    for i, block in enumerate(blocks, 1):
        lines = block.split("\n")
        assert lines[0] == str(i)
        assert re.fullmatch(r"\d{2,}:\d{2}:\d{2},\d{3} --> \d{2,}:\d{2}:\d{2},\d{3}", lines[1])
        assert "-->" not in "\n".join(lines[2:])
    assert blocks[1].split("\n")[2:] == ["Line one", "line two"]
    assert blocks[2].split("\n")[1:] == ["01:02:03,004 --> 01:02:05,500", "[S1] Grüße — 日本語 🎤 <b>&amp;"]


def test_vtt_header_and_escaping() -> None:
    text = render("vtt", TALK)
    assert text.startswith("WEBVTT\n\n")
    assert "01:02:03.004 --> 01:02:05.500\n<v S1>Grüße — 日本語 🎤 &lt;b&gt;&amp;amp;\n" in text  # a voice span
    assert "00:00:00.000 --> 00:00:01.500\nHello, world.\n" in text
    assert len(text.split("\n\n")) == 1 + len(TALK.segments) + 1


def test_tsv_milliseconds_and_columns() -> None:
    rows = [r.split("\t") for r in render("tsv", TALK).splitlines()]
    assert rows[0] == ["start", "end", "text"]  # whisper's header: first segment has no speaker
    assert rows[1] == ["0", "1500", "Hello, world."]
    assert rows[3] == ["3723004", "3725500", "[S1] Grüße — 日本語 🎤 <b>&amp;"]  # speaker not lost
    assert all(len(r) == 3 for r in rows)
    rows = [r.split("\t") for r in render("tsv", DIARIZED).splitlines()]
    assert rows[0] == ["start", "end", "text", "speaker"]
    assert rows[2] == ["2040", "5000", "Morning! Shall we start?", "S2"]
    rows = [r.split("\t") for r in render("tsv", TALK, SECOND, with_file=True, speakers=True).splitlines()]
    assert rows[0] == ["file", "start", "end", "text", "speaker"]
    assert rows[1] == ["talks/My Talk.wav", "0", "1500", "Hello, world.", ""]
    assert rows[-1] == ["clips/b.mp3", "500", "900", "Second file.", "S2"]
    assert render("tsv") == "start\tend\ttext\n"  # no input at all: still a header


def test_rttm_columns() -> None:
    lines = render("rttm", TALK).splitlines()
    assert lines[2] == "SPEAKER My_Talk 1 3723.004 2.496 <NA> <NA> S1 <NA> <NA>"
    assert lines[0] == "SPEAKER My_Talk 1 0.000 1.500 <NA> <NA> SPEECH <NA> <NA>"
    assert lines[3].split()[7] == "Speaker_2"
    for line in lines:
        assert len(line.split(" ")) == 10
    assert rttm_file_id("-") == "stdin"
    assert rttm_file_id("/a/b/rec 01 final.flac") == "rec_01_final"
    assert rttm_file_id("x.tar.gz") == "x.tar"


def test_json_object_per_input() -> None:
    lines = render("json", TALK, SECOND).splitlines()
    assert len(lines) == 2
    obj = json.loads(lines[0])
    assert list(obj) == ["file", "segments", "meta"]
    assert obj["file"] == TALK.file and obj["meta"] == TALK.meta
    seg = obj["segments"][2]
    assert seg == {
        "start": 3723.004,
        "end": 3725.5,
        "start_ms": 3723004,
        "end_ms": 3725500,
        "text": "Grüße — 日本語 🎤 <b>&amp;",
        "speaker": "S1",
        "flags": [],
    }
    assert obj["segments"][3]["flags"] == ["repetition"]
    assert '"start": 3723.004' in lines[0]  # 3 decimals as written, not 3723.0040000000001
    assert "日本語" in lines[0]  # UTF-8 kept, not \\u escapes
    one = render("json", TALK)
    assert json.loads(one) == obj  # one input: one valid JSON document


def test_jsonl_record_shape_and_errors() -> None:
    lines = render("jsonl", TALK, SECOND, error="bad.wav").splitlines()
    recs = [json.loads(line) for line in lines]
    assert recs[0] == {
        "file": TALK.file,
        "start": 0.0,
        "end": 1.5,
        "start_ms": 0,
        "end_ms": 1500,
        "text": "Hello, world.",
        "speaker": None,
        "flags": [],
    }
    assert recs[len(TALK.segments)] == {"file": "bad.wav", "error": "cannot decode: invalid data found"}
    assert json.loads(error_record("x", ValueError("boom"))) == {"file": "x", "error": "boom"}


def test_unicode_line_separators_never_split_a_record() -> None:
    t = Transcript("u.wav", [Segment(0, 10, "a\u2028b\u2029c\x85d\x1ce\vf")], {})
    for fmt in FORMATS:
        text = render(fmt, t)
        lines = text.splitlines()  # splits on all of them
        assert lines == text.split("\n")[:-1]  # no line break but \n is left in any format
        if fmt in ("json", "jsonl"):
            assert len(lines) == 1 and json.loads(lines[0])["text" if fmt == "jsonl" else "file"]
        elif fmt == "srt":
            assert lines[2:] == ["a b c d e f", ""]  # six lines are more than a cue holds: one line
        elif fmt in ("txt", "tsv", "rttm"):
            assert len(lines) == (2 if fmt == "tsv" else 1)
    assert render("txt", t) == "a b c d e f\n"


class FlushRecorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed_at: list[int] = []  # length of the text at each flush

    def flush(self) -> None:
        self.flushed_at.append(len(self.getvalue()))
        super().flush()


def test_jsonl_flushes_after_each_segment() -> None:
    out = FlushRecorder()
    w = get_writer("jsonl", out)
    w.begin(TALK.file, TALK.meta)
    for i, seg in enumerate(TALK.segments, 1):
        w.segment(seg)
        assert out.flushed_at and out.flushed_at[-1] == len(out.getvalue())  # all of it is out
        assert out.getvalue().count("\n") == i
    w.end(TALK.file, TALK.meta)
    n = len(out.flushed_at)
    write_error_record(out, "x.wav", "boom")
    assert len(out.flushed_at) == n + 1


def test_json_flushes_each_input_and_close_flushes_everything() -> None:
    out = FlushRecorder()
    w = get_writer("json", out)
    write_transcript(w, TALK)
    assert out.flushed_at == [len(out.getvalue())]
    for fmt in FORMATS:
        out = FlushRecorder()
        w = get_writer(fmt, out)
        write_transcript(w, TALK)
        w.close()
        assert out.flushed_at[-1] == len(out.getvalue())
        assert not out.closed  # close() ends the stream, not the file object


def test_jsonl_streams_through_a_pipe() -> None:
    """A reader sees each segment while the writer is still going (what `| jq` needs)."""
    code = (
        "import sys\n"
        "from gemmapipe.core.results import Segment\n"
        "from gemmapipe.core.writers import get_writer\n"
        "w = get_writer('jsonl', sys.stdout)\n"
        "w.begin('a.wav', {})\n"
        "w.segment(Segment(0, 1000, 'one'))\n"
        "sys.stdin.readline()\n"  # wait until the reader has seen the first line
        "w.segment(Segment(1000, 2000, 'two'))\n"
        "w.end('a.wav', {}); w.close()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()  # would block forever if the line sat in a buffer
        assert json.loads(first)["text"] == "one"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["text"] == "two"
    assert proc.returncode == 0


def test_several_inputs_with_file() -> None:
    txt = render("txt", TALK, SECOND, with_file=True)
    assert txt.startswith("==> talks/My Talk.wav <==\nHello, world.\n")
    assert "\n\n==> clips/b.mp3 <==\n[00:00:00] S2: Second file.\n" in txt
    vtt = render("vtt", TALK, SECOND, with_file=True)
    assert vtt.count("WEBVTT\n\n") == 2 and "NOTE file: clips/b.mp3\n\n" in vtt
    srt = render("srt", TALK, SECOND, with_file=True)
    assert "\n\n1\n00:00:00,500 --> 00:00:01,500\n[S2] Second file.\n\n" in srt  # numbering restarts
    rttm = render("rttm", TALK, SECOND, with_file=True).splitlines()
    assert rttm[-1].split()[1] == "b"
    jsonl = [json.loads(line) for line in render("jsonl", TALK, SECOND, with_file=True).splitlines()]
    assert {r["file"] for r in jsonl} == {TALK.file, SECOND.file}


def test_streaming_calls_match_write_transcript() -> None:
    for fmt in FORMATS:
        out = io.StringIO()
        with get_writer(fmt, out) as w:
            w.begin(TALK.file, {})
            for seg in TALK.segments:
                w.segment(seg)
            w.end(TALK.file, TALK.meta)  # meta known only at the end is what json writes
        assert out.getvalue() == render(fmt, TALK)


def test_empty_text_and_empty_transcript() -> None:
    t = Transcript("quiet.wav", [Segment(0, 500, "  \n "), Segment(500, 900, "ok")], {})
    assert render("srt", t) == "1\n00:00:00,500 --> 00:00:01,500\nok\n\n"  # lengthened to the minimum 1 s
    assert render("vtt", t) == "WEBVTT\n\n00:00:00.500 --> 00:00:01.500\nok\n\n"
    empty = Transcript("silence.wav", [], {"clips": 0})
    assert render("srt", empty) == ""
    assert render("vtt", empty) == "WEBVTT\n\n"
    assert json.loads(render("json", empty)) == {"file": "silence.wav", "segments": [], "meta": {"clips": 0}}
    assert render("jsonl", empty) == ""


def test_registry() -> None:
    assert set(FORMATS) == {"txt", "srt", "vtt", "json", "jsonl", "tsv", "rttm"}
    assert set(DESCRIPTION_FORMATS) == {"txt", "json", "jsonl", "md"}
    for fmt, cls in FORMATS.items():
        assert cls.extension == fmt and issubclass(cls, SegmentWriter)
    for fmt, dcls in DESCRIPTION_FORMATS.items():
        assert dcls.extension == fmt
    assert type(get_writer("SRT", io.StringIO())) is FORMATS["srt"]
    with pytest.raises(UsageError, match="unknown transcript format 'docx'"):
        get_writer("docx", io.StringIO())
    with pytest.raises(UsageError):
        get_description_writer("srt", io.StringIO())


def test_description_formats() -> None:
    assert render_desc("txt", PHOTO) == PHOTO.text + "\n"
    md = render_desc("md", PHOTO, FORM, CHART)
    assert md.startswith("## photos/cat 1.jpg\n\nA grey cat")
    assert "\n\n## scan.png\n\n" in md
    assert '```json\n{\n  "bars": [' in md  # no text, parsed data: shown as JSON
    objs = [json.loads(line) for line in render_desc("json", PHOTO, FORM).splitlines()]
    assert objs[1] == {
        "file": "scan.png",
        "text": FORM.text,
        "data": FORM.data,
        "meta": {"schema": "invoice"},
    }
    lines = render_desc("jsonl", PHOTO, error="x.heic").splitlines()
    assert json.loads(lines[-1]) == {"file": "x.heic", "error": "not an image"}
    assert render_desc("json", PHOTO, error="x.heic").count("\n") == 1  # only jsonl records errors


def test_description_jsonl_flushes_each_result() -> None:
    out = FlushRecorder()
    w = get_description_writer("jsonl", out)
    w.write(PHOTO)
    assert out.flushed_at == [len(out.getvalue())]


def test_importing_writers_does_not_import_numpy() -> None:
    code = "import sys, gemmapipe.core.writers; print('numpy' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"
