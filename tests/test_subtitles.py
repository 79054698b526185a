"""Subtitles a person can watch, and several formats from one pass, through the CLI with the fake
engine on recorded speech and files on disk: cue line widths and counts, durations, no overlap and
no zero length, cue times from the audio's pauses, WebVTT voice tags, --max-line-width and
--max-line-count, `-f srt,vtt,json` and `-f all` from one model pass, and the refusals."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemmapipe.cli.app import run
from gemmapipe.core.engine.base import GenerateOptions
from gemmapipe.core.engine.parts import Audio, Message
from gemmapipe.core.errors import ExitStatus
from gemmapipe.core.results import Segment, Transcript
from gemmapipe.core.writers import CueRules, get_writer, write_transcript
from gemmapipe.core.writers.cues import width

from fake_engine import FakeEngine, fake_engine  # noqa: F401  (fixture)
from media_factory import speech_file  # recorded speech: its only pauses are the silences asked for

pytestmark = pytest.mark.usefixtures("fake_model")  # see conftest.py

SR = 16000
TEXT = ("the printing press changed how ideas travelled across Europe in the fifteenth century and "
        "within fifty years there were presses in more than two hundred cities")
WORDS = TEXT.split(" ")




@dataclass
class SpeakingEngine(FakeEngine):
    """Answers each clip with as much text as a person says in it: 15 characters a second, a
    sentence end every 14 words and a comma every 5 (diarize: as its JSON)."""

    def generate(self, messages: list[Message], options: GenerateOptions) -> Iterator[str]:
        from gemmapipe.core.tasks.transcribe import LANGUAGE_QUESTION

        if LANGUAGE_QUESTION in messages[0].text:  # the spoken-language question: a one-word answer
            self.stats.stop_reason = "eog"
            return iter(["English"])
        self.requests.append((messages, options))
        audio = [p for p in messages[0].parts if isinstance(p, Audio)][-1]  # diarize: the clip is last
        want = 15 * audio.samples.size / SR
        words: list[str] = []
        i = len(self.requests) * 7
        while sum(len(w) + 1 for w in words) < want:
            w = WORDS[i % len(WORDS)]
            n = len(words) + 1
            words.append(w + ("." if n % 14 == 0 else "," if n % 5 == 0 else ""))
            i += 1
        text = " ".join(words) or "Yes."
        self.stats.stop_reason = "eog"
        reply = json.dumps({"speaker": "new" if len(self.requests) % 2 else "S1", "text": text}) \
            if options.json_schema else text
        return iter([reply])


@pytest.fixture
def speaking(fake_engine: list) -> Iterator[list[SpeakingEngine]]:  # noqa: F811
    """Engines built as the fake_engine fixture builds them, but SpeakingEngines."""
    from gemmapipe.core.session import register_engine_factory

    created: list[SpeakingEngine] = []

    def factory(config: Any, pair: Any, *, n_ctx: int, max_image_tokens: int = 0) -> SpeakingEngine:
        eng = SpeakingEngine(n_ctx=n_ctx, config=config)
        created.append(eng)
        return eng

    previous = register_engine_factory(factory)
    try:
        yield created
    finally:
        register_engine_factory(previous)


@dataclass
class ParsedCue:
    start: int
    end: int
    lines: list[str]


def _ms(stamp: str) -> int:
    h, m, s = re.split("[:]", stamp.replace(",", "."))
    return round((int(h) * 3600 + int(m) * 60 + float(s)) * 1000)


def parse_cues(text: str, fmt: str) -> list[ParsedCue]:
    blocks = [b for b in text.split("\n\n") if b.strip()]
    if fmt == "vtt":
        assert blocks[0] == "WEBVTT"
        blocks = blocks[1:]
    cues = []
    for n, block in enumerate(blocks, 1):
        lines = block.split("\n")
        if fmt == "srt":
            assert lines[0] == str(n)  # numbered from 1, in order
            lines = lines[1:]
        a, arrow, b = lines[0].partition(" --> ")
        assert arrow, block
        cues.append(ParsedCue(_ms(a), _ms(b), lines[1:]))
    return cues


def check_shape(cues: list[ParsedCue], *, max_width: int = 42, max_lines: int = 2, label: str = "") -> None:
    """The rules every cue keeps: lines, duration, order; no zero length, no overlap."""
    assert cues
    prev_end = 0
    for c in cues:
        assert 1 <= len(c.lines) <= max_lines, c
        for line in c.lines:
            shown = re.sub(r"^<v [^>]*>", "", line)
            assert width(shown) <= max_width, (line, c)
        assert c.end > c.start, c  # never zero length
        assert c.start >= prev_end, c  # never overlapping the cue before
        assert c.end - c.start <= 7000 + 1, c
        prev_end = c.end


def clip_lengths(engines: list[Any]) -> list[float]:
    """Seconds of audio in each transcription request (the spoken-language question is not one)."""
    from gemmapipe.core.tasks.transcribe import LANGUAGE_QUESTION

    return [[p for p in m[0].parts if isinstance(p, Audio)][-1].samples.size / SR
            for e in engines for m, _ in e.requests if LANGUAGE_QUESTION not in m[0].text]


# --- cue shape on a long recording ---------------------------------------------------------------


def test_long_speech_gives_readable_srt_cues(tmp_path: Path, speaking: list[SpeakingEngine]) -> None:
    wav = speech_file(tmp_path / "lecture.wav", [(0.0, 66.0)], 66.0)  # a minute of speech, no pause
    assert run(["transcribe", "-o", str(tmp_path / "lecture.txt"), str(wav)]) == 0
    txt_clips = clip_lengths(speaking)
    longest = max(len(line) for line in (tmp_path / "lecture.txt").read_text().splitlines())
    assert longest > 300 and max(txt_clips) > 25  # what a 30 s clip gives: one long line
    speaking.clear()
    assert run(["transcribe", "-o", str(tmp_path / "lecture.srt"), str(wav)]) == 0  # srt from the extension
    cues = parse_cues((tmp_path / "lecture.srt").read_text(), "srt")
    check_shape(cues)
    srt_clips = clip_lengths(speaking)
    assert max(srt_clips) <= 8.0 and len(srt_clips) >= 8  # clips of at most 8 s for cues
    assert sum(srt_clips) == pytest.approx(sum(txt_clips), rel=0.03)  # the same speech, cut finer
    assert len(cues) >= 2 * len(srt_clips) - 2  # 120 characters a clip: two cues of two lines each
    durations = [c.end - c.start for c in cues]
    assert min(durations) >= 1000 and max(durations) <= 5000
    at_punctuation = sum(c.lines[-1][-1] in ".," for c in cues) / len(cues)
    assert at_punctuation >= 0.6  # cues end with a sentence or a clause where they can


def test_cues_start_where_the_speaker_paused(tmp_path: Path, speaking: list[SpeakingEngine],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bursts = [(0.5, 3.0), (3.4, 6.5), (6.9, 9.5)]  # 0.4 s pauses: too short to end a clip for txt
    wav = speech_file(tmp_path / "talk.wav", bursts, 10.5)
    assert run(["transcribe", "-f", "jsonl", str(wav)]) == 0
    assert len(clip_lengths(speaking)) == 1
    capsys.readouterr()
    speaking.clear()
    assert run(["transcribe", "-f", "vtt", str(wav)]) == 0
    cues = parse_cues(capsys.readouterr().out, "vtt")
    check_shape(cues)
    assert len(clip_lengths(speaking)) == 3  # one clip per phrase
    for a, _ in bursts:  # each phrase's first cue starts with its sound (within the pad, 120 ms)
        assert min(abs(c.start - a * 1000) for c in cues) <= 160


def test_short_cue_lengthened_into_the_pause_up_to_the_next(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "yes.wav", [(0.5, 0.9), (1.4, 3.0), (6.0, 6.4)], 7.0)
    fake_engine.replies = ["Yes.", "Then we begin.", "Go."]
    assert run(["transcribe", "-f", "srt", str(wav)]) == 0
    cues = parse_cues(capsys.readouterr().out, "srt")
    assert [c.lines for c in cues] == [["Yes."], ["Then we begin."], ["Go."]]
    check_shape(cues)
    assert cues[0].end == cues[1].start  # lengthened past its 0.4 s of sound, up to the next cue
    assert cues[1].end - cues[1].start >= 1000
    assert cues[2].end - cues[2].start == 1000  # the minimum, into the silence after it


def test_line_options(tmp_path: Path, speaking: list[SpeakingEngine]) -> None:
    wav = speech_file(tmp_path / "talk.wav", [(0.0, 20.0)], 20.0)
    out = tmp_path / "talk.vtt"
    assert run(["transcribe", "--max-line-width", "24", "--max-line-count", "1", "-o", str(out), str(wav)]) == 0
    cues = parse_cues(out.read_text(), "vtt")
    check_shape(cues, max_width=24, max_lines=1)
    assert max(len(c.lines[0]) for c in cues) > 18  # lines are filled, not cut short
    assert run(["transcribe", "--max-line-width", "60", "--max-line-count", "3", "-o", str(out), str(wav)]) == 0
    wide = parse_cues(out.read_text(), "vtt")
    check_shape(wide, max_width=60, max_lines=3)
    assert max(len(line) for c in wide for line in c.lines) > 42 and len(wide) < len(cues)


def test_line_options_are_checked_and_ignored_without_cues(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "a.wav", [(0.5, 2.0)], 3.0)
    assert run(["transcribe", "--max-line-width", "0", str(wav)]) == ExitStatus.USAGE
    assert "--max-line-width" in capsys.readouterr().err and not fake_engine
    assert run(["transcribe", "--max-line-count", "nan", str(wav)]) == ExitStatus.USAGE
    capsys.readouterr()
    assert run(["transcribe", "--max-line-width", "30", "-f", "txt", str(wav)]) == 0
    out = capsys.readouterr()
    assert out.out == "canned reply\n"
    assert "gemmapipe: warning: --max-line-width shapes srt and vtt cues; ignored for txt" in out.err
    assert run(["transcribe", "--max-line-width", "30", "--max-line-count", "1", "-f", "json", str(wav)]) == 0
    warning = "--max-line-width and --max-line-count shape srt and vtt cues; ignored for json"
    assert warning in capsys.readouterr().err


def test_line_options_from_the_config_file(tmp_path: Path, cli_env: Path, speaking: list[SpeakingEngine]) -> None:
    config = cli_env / "config" / "gemmapipe" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[transcribe]\nmax-line-width = 30\nformat = "srt"\n')
    wav = speech_file(tmp_path / "talk.wav", [(0.0, 12.0)], 12.0)
    out = tmp_path / "talk.out"
    assert run(["transcribe", "-o", str(out), str(wav)]) == 0
    check_shape(parse_cues(out.read_text(), "srt"), max_width=30)


# --- diarized cues -------------------------------------------------------------------------------


def test_diarized_vtt_uses_voice_tags_and_srt_labels(tmp_path: Path, speaking: list[SpeakingEngine]) -> None:
    wav = speech_file(tmp_path / "meeting.wav", [(0.3, 5.0), (5.5, 11.0), (11.5, 14.0)], 15.0)
    out = tmp_path / "out"
    assert run(["diarize", "-f", "vtt,srt,rttm", "--output-dir", str(out), str(wav)]) == 0
    vtt = parse_cues((out / "meeting.vtt").read_text(), "vtt")
    check_shape(vtt)
    assert all(re.match(r"<v S[12]>\S", c.lines[0]) for c in vtt)  # every cue is a voice span
    assert not any("<v" in line for c in vtt for line in c.lines[1:])
    assert {c.lines[0][:6] for c in vtt} == {"<v S1>", "<v S2>"}
    srt = parse_cues((out / "meeting.srt").read_text(), "srt")
    check_shape(srt)  # the label counts in the line's width
    assert all(re.match(r"\[S[12]\] \S", c.lines[0]) for c in srt)
    rttm = (out / "meeting.rttm").read_text().splitlines()
    assert len(rttm) == len(clip_lengths(speaking)) == 3  # one clip per turn, one pass for the three
    assert max(clip_lengths(speaking)) <= 8.0


# --- several formats from one pass ---------------------------------------------------------------


def test_several_formats_from_one_pass(tmp_path: Path, speaking: list[SpeakingEngine]) -> None:
    wav = speech_file(tmp_path / "talk.wav", [(0.5, 9.0), (9.5, 14.0)], 15.0)
    assert run(["transcribe", "-f", "srt", "-o", str(tmp_path / "alone.srt"), str(wav)]) == 0
    alone = len(clip_lengths(speaking))
    speaking.clear()
    out = tmp_path / "out"
    assert run(["transcribe", "-f", "srt,vtt,json", "--output-dir", str(out), str(wav)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["talk.json", "talk.srt", "talk.vtt"]  # no temp files
    assert len(speaking) == 1 and len(clip_lengths(speaking)) == alone  # one load, one request per clip
    assert (out / "talk.srt").read_text() == (tmp_path / "alone.srt").read_text()
    srt, vtt = parse_cues((out / "talk.srt").read_text(), "srt"), parse_cues((out / "talk.vtt").read_text(), "vtt")
    assert [(c.start, c.end, c.lines) for c in srt] == [(c.start, c.end, c.lines) for c in vtt]
    doc = json.loads((out / "talk.json").read_text())
    assert len(doc["segments"]) == alone  # json keeps the segments whole
    assert " ".join(s["text"] for s in doc["segments"]).split() == " ".join(
        line for c in srt for line in c.lines).split()  # the same words, from the same pass


@pytest.mark.parametrize(("command", "exts"), [
    ("transcribe", ["json", "jsonl", "srt", "tsv", "txt", "vtt"]),
    ("diarize", ["json", "jsonl", "rttm", "srt", "txt", "vtt"]),
])
def test_format_all(tmp_path: Path, speaking: list[SpeakingEngine], command: str, exts: list[str]) -> None:
    a = speech_file(tmp_path / "a.wav", [(0.5, 3.0)], 4.0)
    b = speech_file(tmp_path / "b.wav", [(0.5, 2.0)], 3.0)
    out = tmp_path / "out"
    assert run([command, "-f", "all", "--output-dir", str(out), str(a), str(b)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.{e}" for s in "ab" for e in exts)
    assert len(speaking) == 1 and len(clip_lengths(speaking)) == 2
    assert all((out / f"a.{e}").stat().st_size for e in exts)


def test_several_formats_keep_failures_apart_and_skip_existing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               speaking: list[SpeakingEngine]) -> None:
    a = speech_file(tmp_path / "a.wav", [(0.5, 3.0)], 4.0)
    bad = tmp_path / "b.wav"
    bad.write_bytes(b"RIFF garbage")
    out = tmp_path / "out"
    assert run(["transcribe", "-f", "srt,json", "--output-dir", str(out), str(a), str(bad)]) == ExitStatus.PARTIAL
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.srt"]  # nothing of b, no temp files
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert run(["transcribe", "-f", "srt,json", "--output-dir", str(out), "--skip-existing", str(a)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # both there: skipped
    (out / "a.json").unlink()
    assert run(["transcribe", "-f", "srt,json", "--output-dir", str(out), "--skip-existing", str(a)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.srt"]  # one missing: both written again


@pytest.mark.parametrize(("argv", "what", "hint"), [
    (["-f", "srt,vtt"], "--format: 2 formats (srt, vtt) cannot share one stream", "--output-dir DIR"),
    (["-f", "all"], "--format: 6 formats (txt, srt, vtt, json, jsonl, tsv) cannot share one stream",
     "--output-dir DIR"),
    (["-f", "srt,json", "-o", "base"], "--output: writes one file, and 2 formats were asked for (srt, json)",
     "--output-dir DIR"),
    (["-f", "srt,docx"], "--format: unknown format 'docx'", "several separated by commas, or all"),
    (["-f", "srt,vtt", "-o", "x.srt", "--output-dir", "out"], "--output: cannot be used with --output-dir", None),
])
def test_several_formats_refused_where_one_stream_would_hold_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        fake_engine: list, argv: list[str], what: str, hint: str | None) -> None:  # noqa: F811
    monkeypatch.chdir(tmp_path)
    wav = speech_file(tmp_path / "a.wav", [(0.5, 2.0)], 3.0)
    before = sorted(tmp_path.rglob("*"))
    assert run(["transcribe", *argv, str(wav)]) == ExitStatus.USAGE
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"gemmapipe: error: {what}"
    if hint:
        assert err[1].startswith("gemmapipe: hint: ") and hint in err[1]
    assert not fake_engine  # refused before the model
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_dry_run_plans_the_clips_of_a_subtitle_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   speaking: list[SpeakingEngine]) -> None:
    wav = speech_file(tmp_path / "talk.wav", [(0.0, 20.0), (20.4, 30.0)], 30.0)
    assert run(["transcribe", "--dry-run", str(wav)]) == 0
    plain = json.loads(capsys.readouterr().out)["clips"]
    assert run(["transcribe", "--dry-run", "-f", "srt,json", str(wav)]) == 0  # no --output-dir needed to plan
    planned = json.loads(capsys.readouterr().out)["clips"]
    assert len(planned) > len(plain) and all(b - a <= 8000 for a, b in planned)
    assert run(["transcribe", "-f", "srt", str(wav)]) == 0
    capsys.readouterr()
    assert len(clip_lengths(speaking)) == len(planned)


# --- the shaping rules on any input (writer level) -----------------------------------------------

_WORD = st.one_of(
    st.text("abcdefghijklmnopqrstuvwxyzé", min_size=1, max_size=12),
    st.sampled_from(["Hello,", "world.", "Why?", "—", "x" * 60, "日本語の文です。", "🎤", "e\u0301"]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40_000), st.integers(-2_000, 20_000), st.lists(_WORD, max_size=60),
                          st.sampled_from([None, "S1", "Speaker 2"])), max_size=8),
       st.integers(8, 60), st.integers(1, 3), st.sampled_from(["srt", "vtt"]))
def test_cue_rules_hold_for_any_segments(segs: list[tuple[int, int, list[str], str | None]], max_width: int,
                                         max_lines: int, fmt: str) -> None:
    """Whatever the segments (unsorted, overlapping, zero-length, long words, wide characters):
    lines fit, cues never overlap or last zero, and every word is shown once, in order."""
    import io

    segments = [Segment(a, max(a, a + d), " ".join(words), speaker=who) for a, d, words, who in segs]
    out = io.StringIO()
    writer = get_writer(fmt, out, rules=CueRules(max_line_width=max_width, max_line_count=max_lines))
    write_transcript(writer, Transcript("x.wav", segments))
    writer.close()
    cues = parse_cues(out.getvalue(), fmt) if out.getvalue().strip() not in ("", "WEBVTT") else []
    prev_end = 0
    shown = []
    for c in cues:
        assert 1 <= len(c.lines) <= max_lines
        assert c.end > c.start >= prev_end
        prev_end = c.end
        first = c.lines[0]
        label = re.match(r"^(<v [^>]*>|\[[^\]]*\] )", first) if any(s.speaker for s in segments) else None
        body = [first[label.end():] if label else first, *c.lines[1:]]
        limit = [max_width - (len(label.group()) if label and fmt == "srt" else 0), *[max_width] * 3]
        for line, lim in zip(body, limit, strict=False):
            plain = line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
            assert width(plain) <= max(lim, min(max_width, 10)), (line, c)
        shown.append("".join(body))
    expected = "".join("".join(s.text.split()) for s in segments)
    got = "".join("".join(s.split()) for s in shown)
    if fmt == "vtt":
        got = got.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    assert got == expected
