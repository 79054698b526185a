"""Every subcommand through the CLI with the fake engine: what the model is fed, what comes out,
and the batch/exit-status behaviour. Real llama.cpp runs are in test_e2e.py."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.parts import Audio, Image, Text
from gemmapipe.core.errors import ExitStatus

from fake_engine import fake_engine  # noqa: F401  (fixture)
from media_factory import speech_file, write_image, write_tone, write_video

pytestmark = pytest.mark.usefixtures("fake_model")  # see conftest.py






def test_transcribe_segments_and_prompt(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "talk.wav", [(1.0, 3.0), (5.0, 6.5)], 8.0)
    fake_engine.replies = ["hello there", "general kenobi"]
    assert run(["transcribe", "-f", "jsonl", "-l", "English", str(wav)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["text"] for x in lines] == ["hello there", "general kenobi"]
    assert abs(lines[0]["start_ms"] - 1000) <= 240 and abs(lines[1]["end_ms"] - 6500) <= 240
    msgs, opts = fake_engine[0].requests[0]
    parts = msgs[0].parts
    assert isinstance(parts[0], Audio) and isinstance(parts[1], Text)  # audio early in the turn
    assert "in English into English text" in parts[1].text
    assert opts.temperature == 0.0
    assert parts[0].samples.size <= 30 * 16000


def test_transcribe_silence_no_model_call(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "quiet.wav", [], 5.0)
    assert run(["transcribe", str(wav)]) == 0
    assert capsys.readouterr().out == ""
    assert not fake_engine  # no model was even loaded


def test_transcribe_cuts_repetition_loops(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "a.wav", [(0.5, 2.0)], 3.0)
    fake_engine.replies = ["so I said " + "no way " * 20]
    assert run(["transcribe", "-f", "json", str(wav)]) == 0
    doc = json.loads(capsys.readouterr().out)
    seg = doc["segments"][0]
    assert seg["text"] == "so I said no way" and "repetition" in seg["flags"]
    assert doc["meta"]["model"]["model_sha256"]


def test_transcribe_batch_output_dir_and_partial_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         fake_engine: list) -> None:  # noqa: F811
    a = speech_file(tmp_path / "a.wav", [(0.5, 1.5)], 2.0)
    b = tmp_path / "b.wav"
    b.write_bytes(b"RIFF garbage")
    out = tmp_path / "out"
    code = run(["transcribe", "-f", "srt", "--output-dir", str(out), str(a), str(b)])
    assert code == ExitStatus.PARTIAL
    assert (out / "a.srt").read_text().startswith("1\n00:00:00,")
    assert not (out / "b.srt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.srt"]  # no temp files left
    err = capsys.readouterr().err
    assert "b.wav" in err and "1 of 2 inputs failed" in err
    assert len(fake_engine) == 1  # one model load for the batch


def test_diarize_exemplars_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "m.wav", [(0.5, 2.0), (3.0, 4.5), (6.0, 7.0)], 8.0)
    fake_engine.replies = ['{"speaker": "new", "text": "hi"}', '{"speaker": "new", "text": "hello"}',
                           '{"speaker": "S1", "text": "bye"}']
    assert run(["diarize", "-f", "rttm", "--names", "Ana,Ben", str(wav)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [r[7] for r in rows] == ["Ana", "Ben", "Ana"]
    assert all(r[0] == "SPEAKER" and r[1] == "m" for r in rows)
    third, opts = fake_engine[0].requests[2]
    audios = [p for p in third[0].parts if isinstance(p, Audio)]
    assert len(audios) == 3  # two exemplars + the clip
    assert all(label in opts.grammar for label in ('S1', 'S2', 'new'))


def test_diarize_cut_off_answer_is_flagged_not_a_new_speaker(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           fake_engine: list) -> None:  # noqa: F811
    """An answer cut by the token limit: the segment is flagged "truncated", keeps the text that was
    written, and invents no speaker (no exemplar is added for it, and no S2 appears later)."""
    wav = speech_file(tmp_path / "m.wav", [(0.5, 2.0), (3.0, 4.5), (6.0, 7.0)], 8.0)
    fake_engine.replies = ['{"speaker": "new", "text": "hi"}', '{ "speaker" : "new", "text" : "hello wor',
                           '{"speaker": "new", "text": "bye"}']
    assert run(["diarize", "-f", "json", str(wav)]) == 0
    doc = json.loads(capsys.readouterr().out)
    segs = doc["segments"]
    assert [(s["speaker"], s["text"], s["flags"]) for s in segs] == [
        ("S1", "hi", []), (None, "hello wor", ["truncated"]), ("S2", "bye", [])]
    third = fake_engine[0].requests[2][0]
    assert len([p for p in third[0].parts if isinstance(p, Audio)]) == 2  # one exemplar (S1) + the clip
    assert doc["meta"]["speakers"] == ["S1", "S2"]


def test_diarize_score_without_extra_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    fake_engine: list, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setitem(sys.modules, "pyannote.metrics", None)
    wav = speech_file(tmp_path / "m.wav", [(0.5, 2.0)], 3.0)
    ref = tmp_path / "ref.rttm"
    ref.write_text("SPEAKER m 1 0.5 1.5 <NA> <NA> A <NA> <NA>\n")
    assert run(["diarize", "--score", str(ref), str(wav)]) == ExitStatus.USAGE
    assert "gemmapipe[score]" in capsys.readouterr().err


def test_diarize_score_prints_der(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  fake_engine: list) -> None:  # noqa: F811
    pytest.importorskip("pyannote.metrics")
    wav = speech_file(tmp_path / "m.wav", [(0.5, 2.0), (3.0, 4.5)], 5.0)
    fake_engine.replies = ['{"speaker": "new", "text": "a"}', '{"speaker": "S1", "text": "b"}']
    ref = tmp_path / "ref.rttm"
    ref.write_text("SPEAKER m 1 0.500 1.500 <NA> <NA> A <NA> <NA>\nSPEAKER m 1 3.000 1.500 <NA> <NA> B <NA> <NA>\n")
    assert run(["diarize", "-f", "json", "--score", str(ref), str(wav)]) == 0
    out = capsys.readouterr()
    der = json.loads(out.out)["meta"]["der"]
    # both clips got S1, so B's 1.5 s is confusion (plus the VAD's padding as false alarm)
    assert der["confusion"] == pytest.approx(1.5, abs=0.25)
    assert "gemmapipe: DER" in out.err


def test_describe_batch_prompt_first_then_image(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                fake_engine: list) -> None:  # noqa: F811
    imgs = [write_image(tmp_path / f"i{i}.png", size=(320, 240)) for i in range(3)]
    fake_engine.replies = ["a red square"]
    assert run(["describe", "-p", "What colour?", *map(str, imgs)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [Path(x["file"]).name for x in lines] == ["i0.png", "i1.png", "i2.png"]
    assert len(fake_engine) == 1 and len(fake_engine[0].requests) == 3
    parts = fake_engine[0].requests[0][0][0].parts
    assert isinstance(parts[0], Text) and parts[0].text.startswith("What colour?")
    assert isinstance(parts[1], Image)
    h, w = parts[1].pixels.shape[:2]
    assert h % 48 == 0 and w % 48 == 0 and (h // 48) * (w // 48) <= 280


def test_describe_schema_gives_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    fake_engine: list) -> None:  # noqa: F811
    img = write_image(tmp_path / "i.png", size=(100, 100))
    fake_engine.replies = ['{"colour": "red"}']
    schema = '{"type":"object","properties":{"colour":{"type":"string"}},"required":["colour"]}'
    assert run(["describe", "--schema", schema, "-f", "json", str(img)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["data"] == {"colour": "red"}
    assert "colour" in fake_engine[0].requests[0][1].grammar


def test_describe_refuses_audio_with_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          fake_engine: list) -> None:  # noqa: F811
    wav = write_tone(tmp_path / "a.wav", "wav", seconds=1.0)
    assert run(["describe", str(wav)]) == ExitStatus.BAD_INPUT
    assert "gemmapipe transcribe" in capsys.readouterr().err


def test_video_interleaves_timestamps_frames_audio(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   fake_engine: list) -> None:  # noqa: F811
    mp4 = write_video(tmp_path / "v.mp4", seconds=3.0, fps=10, with_audio=True)
    fake_engine.replies = ["a video"]
    assert run(["video", "--no-cache", "--no-dedupe", "-f", "json", str(mp4)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["text"] == "a video" and doc["meta"]["frames"] == 3
    parts = fake_engine[0].requests[0][0][0].parts
    # as the Gemma 4 processor lays a video out: `MM:SS <image>` per frame, joined by single spaces,
    # then the sound track (one segment of the whole 3 s here) under its start time, then the question
    layout = [p.text if isinstance(p, Text) else type(p).__name__ for p in parts]
    assert layout[:-1] == ["00:00 ", "Image", " 00:01 ", "Image", " 00:02 ", "Image", " 00:00 ", "Audio"]
    assert layout[-1].startswith("\n")
    assert doc["meta"]["audio_segments"] == 1


def test_chat_attachment_and_stdin_text(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        fake_engine: list, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    img = write_image(tmp_path / "i.png", size=(96, 96))
    monkeypatch.setattr(sys, "stdin", io.StringIO("some piped context"))
    fake_engine.replies = ["ok"]
    assert run(["chat", "-a", str(img), "-s", "be brief", "what is this?"]) == 0
    assert capsys.readouterr().out == "ok\n"
    msgs = fake_engine[0].requests[0][0]
    assert msgs[0].role == "system"
    user = msgs[1].parts
    assert isinstance(user[0], Image) and "some piped context" in user[-1].text and "what is this?" in user[-1].text


def test_chat_continue_keeps_history(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     fake_engine: list) -> None:  # noqa: F811
    fake_engine.replies = ["first answer"]
    assert run(["chat", "one"]) == 0
    assert run(["chat", "--continue", "two"]) == 0
    msgs = fake_engine[-1].requests[-1][0]
    assert [m.role for m in msgs] == ["user", "assistant", "user"]
    assert msgs[1].parts[0].text == "first answer"


def test_dry_run_prints_plan_and_loads_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               fake_engine: list) -> None:  # noqa: F811
    mp4 = write_video(tmp_path / "v.mp4", seconds=2.0, fps=10, with_audio=True)
    assert run(["video", "--dry-run", str(mp4)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["kind"] == "video" and plan["tokens"]["total"] > 0
    assert not fake_engine


def test_chat_attachment_from_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    fake_engine: list, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    png = write_image(tmp_path / "i.png", size=(96, 96)).read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(png)))
    fake_engine.replies = ["a picture"]
    assert run(["chat", "-a", "-", "describe it"]) == 0
    assert capsys.readouterr().out == "a picture\n"
    parts = fake_engine[0].requests[0][0][0].parts
    assert isinstance(parts[0], Image) and parts[-1].text == "describe it"


def test_chat_think_flag_enables_thinking(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          fake_engine: list) -> None:  # noqa: F811
    assert run(["chat", "--think", "why?"]) == 0
    opts = fake_engine[0].requests[0][1]
    assert opts.think is True and opts.on_thought is not None


def test_video_too_long_for_context_is_map_reduced(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   fake_engine: list) -> None:  # noqa: F811
    mp4 = write_video(tmp_path / "long.mp4", seconds=25.0, fps=2, with_audio=False)
    fake_engine.replies = ["part answer"]
    assert run(["video", "--no-cache", "--no-audio", "-c", "1400", "--max-tokens", "100", "-f", "json",
                "-p", "What happens?", str(mp4)]) == 0
    doc = json.loads(capsys.readouterr().out)
    windows = doc["meta"]["windows"]
    assert windows >= 2
    requests = fake_engine[0].requests
    assert len(requests) == windows + 1  # one answer per window, then the combining pass
    spans = [a.split("]")[0] + "]" for a in doc["meta"]["window_answers"]]
    assert spans[0].startswith("[00:00-") and spans[-1].endswith("00:25]")  # absolute times
    final = "".join(p.text for p in requests[-1][0][0].parts if isinstance(p, Text))
    assert all(s in final for s in spans) and "What happens?" in final
    # each window's prompt fits the context it was given
    assert all(fake_engine[0].count_tokens(m, o).total <= 1400 for m, o in requests)


def test_video_refuses_audio_and_images_naming_the_right_command(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    wav = write_tone(tmp_path / "a.wav", "wav", seconds=1.0)
    png = write_image(tmp_path / "i.png", size=(96, 96))
    assert run(["video", str(wav)]) == ExitStatus.BAD_INPUT
    assert "use `gemmapipe transcribe`" in capsys.readouterr().err
    assert run(["video", str(png)]) == ExitStatus.BAD_INPUT
    assert "use `gemmapipe describe`" in capsys.readouterr().err
