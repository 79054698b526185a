"""End to end through real llama.cpp + libmtmd: the engine and every subcommand on the tiny random
Gemma 4 pair (right plumbing, meaningless text), and the probe projectors on the real Gemma 3 270M
(the media really carry the words)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.base import EngineConfig, GenerateOptions
from gemmapipe.core.engine.local import LocalEngine
from gemmapipe.core.engine.parts import Audio, Image, Message, Text
from gemmapipe.core.errors import ContextOverflow
from gemmapipe.core.model import resolve

from media_factory import recorded_speech, write_image, write_video
from models.probe import read_probe_codebook, tokenize, tokens_to_waveform

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("cli_env")]
THREADS = 2




@pytest.fixture(scope="module")
def tiny_engine(tiny_gemma4: tuple[Path, Path]):  # type: ignore[no-untyped-def]
    model, mmproj = tiny_gemma4
    pair = resolve(model, mmproj, needs={"vision", "audio"})
    with LocalEngine(EngineConfig(model=model, mmproj=mmproj, threads=THREADS), pair, n_ctx=2048,
                     max_image_tokens=280) as eng:
        yield eng


def speech_wav(path: Path, clips: list[tuple[float, np.ndarray]], total_s: float) -> Path:
    import soundfile as sf

    x = np.zeros(int(total_s * 16000), dtype=np.float32)
    for start, wave in clips:
        i = round(start * 16000)
        x[i:i + wave.size] = wave
    sf.write(path, x, 16000, subtype="FLOAT")
    return path


# --- the engine on the tiny Gemma 4 pair -----------------------------------------------------------

def test_tiny_engine_text_image_audio(tiny_engine: LocalEngine) -> None:
    assert tiny_engine.template  # read from the GGUF, not hard-coded
    img = np.full((96, 96, 3), 128, dtype=np.uint8)
    wave = np.sin(np.linspace(0, 440 * 2 * np.pi, 16000)).astype(np.float32) * 0.3
    msgs = [Message("user", [Image(img), Audio(wave), Text("what is this?")])]
    count = tiny_engine.count_tokens(msgs, GenerateOptions())
    kinds = [k for k, _ in count.per_chunk]
    assert "image" in kinds and "audio" in kinds
    assert dict((k, n) for k, n in count.per_chunk if k != "text") == {"image": 81, "audio": 25}  # 96x96 is raised to the 70-token minimum
    out = "".join(tiny_engine.generate(msgs, GenerateOptions(max_tokens=8)))
    assert isinstance(out, str)
    assert tiny_engine.stats.prompt_evaluated == count.total
    assert tiny_engine.stats.generated <= 8


def test_tiny_engine_reuses_kv_for_follow_up(tiny_engine: LocalEngine) -> None:
    tiny_engine.reset()
    img = np.full((96, 96, 3), 60, dtype=np.uint8)
    first = [Message("user", [Image(img), Text("describe")])]
    answer = "".join(tiny_engine.generate(first, GenerateOptions(max_tokens=6)))
    total_first = tiny_engine.stats.prompt_tokens
    follow = [*first, Message("assistant", [Text(answer)]), Message("user", [Text("and then?")])]
    "".join(tiny_engine.generate(follow, GenerateOptions(max_tokens=4)))
    stats = tiny_engine.stats
    assert stats.prompt_tokens > total_first
    # the image and the first turn are not evaluated again: only the new tail is
    assert stats.prompt_evaluated < stats.prompt_tokens - 4
    # Gemma 4's template renders a past answer without the empty thought the generation prompt
    # had, so a few tokens around the old answer are evaluated again; never the image.
    assert stats.prompt_evaluated <= stats.prompt_tokens - total_first + 16


def test_tiny_engine_grammar_gives_valid_json(tiny_engine: LocalEngine) -> None:
    from gemmapipe.core.engine.grammar import schema_to_grammar

    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "tag": {"enum": ["a", "b"]}},
              "required": ["n", "tag"]}
    out = "".join(tiny_engine.generate([Message.user("json please")],
                                       GenerateOptions(max_tokens=64, grammar=schema_to_grammar(schema))))
    data = json.loads(out)
    assert isinstance(data["n"], int) and data["tag"] in ("a", "b")


def test_engine_refuses_plan_larger_than_context(tiny_gemma4: tuple[Path, Path]) -> None:
    model, mmproj = tiny_gemma4
    pair = resolve(model, mmproj)
    with LocalEngine(EngineConfig(model=model, mmproj=mmproj, threads=THREADS), pair, n_ctx=256) as eng:
        wave = np.zeros(16000 * 12, dtype=np.float32)  # 300 audio tokens > 256
        with pytest.raises(ContextOverflow) as exc:
            eng.generate([Message("user", [Audio(wave), Text("hi")])], GenerateOptions(max_tokens=8))
        assert exc.value.needed > 256
        assert eng.stats.total_prompt_evaluated == 0  # refused before evaluating anything


def test_suppress_tokens_are_never_sampled(tiny_engine: LocalEngine) -> None:
    assert tiny_engine._suppress  # read from tokenizer.ggml.suppress_tokens
    banned = {tiny_engine._token_text(t) for t in tiny_engine._suppress}
    out = "".join(tiny_engine.generate([Message.user("x")], GenerateOptions(max_tokens=40, temperature=1.5, seed=3)))
    assert not any(b and b in out for b in banned)


# --- every subcommand through the CLI on the tiny pair ----------------------------------------------

@pytest.mark.parametrize("fmt", ["txt", "srt", "vtt", "json", "jsonl", "tsv"])
def test_cli_transcribe_tiny(fmt: str, tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = tiny_gemma4
    wav = speech_wav(tmp_path / "s.wav", [(0.5, recorded_speech(16000))], 2.0)
    assert run(["transcribe", "-m", str(model), "-t", str(THREADS), "--max-tokens", "6", "-f", fmt, str(wav)]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        assert json.loads(out)["segments"]
    elif fmt == "jsonl":
        assert all(json.loads(line)["start_ms"] >= 0 for line in out.splitlines())
    elif fmt == "vtt":
        assert out.startswith("WEBVTT")
    elif fmt == "srt":
        assert out.startswith("1\n00:00:0")
    elif fmt == "tsv":
        assert out.splitlines()[0] == "start\tend\ttext"


@pytest.mark.parametrize("fmt", ["rttm", "json"])
def test_cli_diarize_tiny_is_valid(fmt: str, tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = tiny_gemma4
    wav = speech_wav(tmp_path / "d.wav", [(0.2, recorded_speech(12000)), (2.0, recorded_speech(12000, 40000))], 3.0)
    assert run(["diarize", "-m", str(model), "-t", str(THREADS), "--max-tokens", "40", "-f", fmt, str(wav)]) == 0
    out = capsys.readouterr().out
    if fmt == "rttm":
        rows = [r.split() for r in out.splitlines()]
        assert rows and all(len(r) == 10 and r[0] == "SPEAKER" for r in rows)
    else:
        # a speaker for every segment, except one whose answer the token limit cut off (flagged, no
        # speaker made up for it: the random tiny model rarely closes its JSON within 40 tokens)
        segs = json.loads(out)["segments"]
        assert segs and all(s["speaker"] or s["flags"] == ["truncated"] for s in segs)


@pytest.mark.parametrize("fmt", ["txt", "json", "jsonl"])
def test_cli_describe_tiny(fmt: str, tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = tiny_gemma4
    img = write_image(tmp_path / "i.png", size=(200, 150))
    assert run(["describe", "-m", str(model), "-t", str(THREADS), "--max-tokens", "6", "-f", fmt, str(img)]) == 0
    out = capsys.readouterr().out
    if fmt != "txt":
        assert json.loads(out.splitlines()[0])["file"].endswith("i.png")


def test_cli_describe_schema_tiny(tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = tiny_gemma4
    imgs = [write_image(tmp_path / f"i{i}.png", size=(96, 96)) for i in range(2)]
    schema = '{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}'
    assert run(["describe", "-m", str(model), "-t", str(THREADS), "--schema", schema, "--max-tokens", "32",
                *map(str, imgs)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [isinstance(r["data"]["ok"], bool) for r in rows] == [True, True]


@pytest.mark.parametrize("fmt", ["txt", "md", "json"])
def test_cli_video_tiny(fmt: str, tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = tiny_gemma4
    mp4 = write_video(tmp_path / "v.mp4", seconds=3.0, fps=5, with_audio=True)
    assert run(["video", "-m", str(model), "-t", str(THREADS), "--max-tokens", "6", "-f", fmt, "-c", "4096",
                str(mp4)]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        assert json.loads(out)["meta"]["frames"] == 3
    elif fmt == "md":
        assert out.startswith("## ")


def test_cli_video_follow_up_reuses_saved_state(tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = tiny_gemma4
    mp4 = write_video(tmp_path / "v.mp4", seconds=4.0, fps=5, with_audio=True)
    base = ["video", "-m", str(model), "-t", str(THREADS), "--max-tokens", "4", "-f", "json", "-c", "4096"]
    assert run([*base, "-p", "first question", str(mp4)]) == 0
    first = json.loads(capsys.readouterr().out)["meta"]
    assert run([*base, "-p", "another question", str(mp4)]) == 0
    second = json.loads(capsys.readouterr().out)["meta"]
    assert first["cache"] == "miss" and second["cache"] == "hit"
    assert second["prompt_evaluated"] < first["prompt_evaluated"] / 4


def test_cli_video_follow_up_does_not_decode_the_video_again(tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from gemmapipe.core.tasks import video as video_task

    model, _ = tiny_gemma4
    mp4 = write_video(tmp_path / "v.mp4", seconds=4.0, fps=5, with_audio=True)
    base = ["video", "-m", str(model), "-t", str(THREADS), "--max-tokens", "6", "-f", "json", "-c", "4096"]
    assert run([*base, "-p", "first question", str(mp4)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["meta"]["cache"] == "miss"
    assert run([*base, "--no-cache", "-p", "another question", str(mp4)]) == 0
    fresh = json.loads(capsys.readouterr().out)  # the whole prompt evaluated from scratch

    def no_decoding(*_: object, **__: object) -> None:
        raise AssertionError("the video was decoded again")

    monkeypatch.setattr(video_task, "build_timeline", no_decoding)
    assert run([*base, "-p", "another question", str(mp4)]) == 0
    hit = json.loads(capsys.readouterr().out)
    assert hit["meta"]["cache"] == "hit" and hit["meta"]["timeline"] == "saved"
    assert hit["text"] == fresh["text"]  # the same greedy answer as evaluating everything again
    assert hit["meta"]["frames"] == first["meta"]["frames"] == fresh["meta"]["frames"]
    assert hit["meta"]["prompt_evaluated"] < fresh["meta"]["prompt_evaluated"] / 4


def test_cli_chat_tiny_with_attachments(tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = tiny_gemma4
    img = write_image(tmp_path / "i.png", size=(96, 96))
    wav = speech_wav(tmp_path / "a.wav", [(0.0, np.full(8000, 0.1, dtype=np.float32))], 0.5)
    assert run(["chat", "-m", str(model), "-t", str(THREADS), "--max-tokens", "5", "-a", str(img), "-a", str(wav),
                "hello"]) == 0
    assert capsys.readouterr().out.endswith("\n")


# --- probe projectors on the real Gemma 3 270M -------------------------------------------------------

def test_probe_transcribe_words_and_timestamps(gemma3_270m: Path, audio_probe: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    codebook = read_probe_codebook(audio_probe)
    sentences = ["The capital of France is", "Hello, world! How are you today?"]
    placed = [(1.0, sentences[0]), (4.0, sentences[1])]
    clips = [(t, tokens_to_waveform(tokenize(gemma3_270m, s), codebook)) for t, s in placed]
    wav = speech_wav(tmp_path / "probe.wav", clips, 7.0)
    # the probe's codes are synthetic sounds, not speech to the trained default detector
    assert run(["transcribe", "-m", str(gemma3_270m), "--mmproj", str(audio_probe), "-t", str(THREADS),
                "--vad", "energy", "--max-tokens", "8", "-f", "json", str(wav)]) == 0
    segs = json.loads(capsys.readouterr().out)["segments"]
    assert len(segs) == 2
    for seg, (t, _), (_, wave) in zip(segs, placed, clips, strict=True):
        end = t + wave.size / 16000
        assert abs(seg["start_ms"] - t * 1000) <= 40
        assert abs(seg["end_ms"] - end * 1000) <= 40
    # each clip makes the model say exactly what it says to the same words given as text
    pair = resolve(gemma3_270m, None, load_projector=False)
    with LocalEngine(EngineConfig(model=gemma3_270m, threads=THREADS), pair, n_ctx=512) as eng:
        for seg, sentence in zip(segs, sentences, strict=True):
            expected = "".join(eng.generate([Message.user(sentence)], GenerateOptions(max_tokens=8)))
            assert seg["text"] == " ".join(expected.split())
    assert "capital of the country of France" in segs[0]["text"]


@pytest.fixture
def record_media(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Wrap LocalEngine.generate: decode every media part it is fed (mtmd's own embeddings) and
    keep the prompt's parts and the answer."""
    seen: dict[str, list] = {"parts": [], "embeddings": [], "answers": []}
    original = LocalEngine.generate

    def generate(self: LocalEngine, messages: list[Message], options: GenerateOptions):  # type: ignore[no-untyped-def]
        parts = [p for m in messages for p in m.parts]
        seen["parts"].append(parts)
        seen["embeddings"].append([self.encode_media(p) if isinstance(p, Image | Audio) else None for p in parts])
        stream = original(self, messages, options)

        def keep():  # type: ignore[no-untyped-def]
            out = []
            for piece in stream:
                out.append(piece)
                yield piece
            seen["answers"].append("".join(out))

        return keep()

    monkeypatch.setattr(LocalEngine, "generate", generate)
    return seen


def _decode(embd: np.ndarray, model: Path, codebook: list[int]) -> list[int]:
    from models.probe import load_token_embeddings, nearest_tokens

    return nearest_tokens(embd, load_token_embeddings(model, codebook), codebook)


def test_probe_describe_recovers_the_sentence(gemma3_270m: Path, vision_probe: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str], record_media: dict) -> None:
    from PIL import Image as PILImage

    from models.probe import PAD_TOKEN, tokens_to_image

    codebook = read_probe_codebook(vision_probe)
    words = tokenize(gemma3_270m, "The quick brown fox jumps over the lazy dog.")
    png = tmp_path / "fox.png"
    PILImage.fromarray(tokens_to_image(words, codebook)).save(png)
    assert run(["describe", "-m", str(gemma3_270m), "--mmproj", str(vision_probe), "-t", str(THREADS),
                "-p", "Caption:", "--max-tokens", "8", str(png)]) == 0
    answer = capsys.readouterr().out
    parts, embds = record_media["parts"][0], record_media["embeddings"][0]
    image = next(e for p, e in zip(parts, embds, strict=True) if isinstance(p, Image))
    decoded = _decode(image, gemma3_270m, codebook)
    assert decoded[: len(words)] == words  # word for word
    assert set(decoded[len(words):]) <= {PAD_TOKEN}
    # Image tokens attend both ways, so the continuation need not equal the text path's; it is
    # recorded here for the issue note.
    print(f"describe probe continuation: {answer!r}", file=sys.stderr)


def test_probe_video_frames_and_audio_carry_words_at_their_times(
        gemma3_270m: Path, av_probe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        record_media: dict) -> None:
    import av

    from models.probe import tokens_to_image

    codebook = read_probe_codebook(av_probe)
    seconds = [("Hello, world!", "0 1 2 3"), ("The quick brown fox jumps", "0 4 5 6"),
               ("The capital of France is", "0 7 8 9 10")]
    mp4 = tmp_path / "probe.mp4"
    with av.open(str(mp4), "w") as out:
        vs = out.add_stream("libx264", rate=1, options={"crf": "18"})
        vs.width, vs.height, vs.pix_fmt = 480, 336, "yuv420p"
        aus = out.add_stream("aac", rate=16000, layout="mono")
        audio = np.zeros(16000 * len(seconds), dtype=np.float32)
        for k, (shown, spoken) in enumerate(seconds):
            img = tokens_to_image(tokenize(gemma3_270m, shown), codebook)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = k
            for packet in vs.encode(frame):
                out.mux(packet)
            wave = tokens_to_waveform(tokenize(gemma3_270m, spoken), codebook)
            audio[k * 16000:k * 16000 + wave.size] = wave
        for packet in vs.encode():
            out.mux(packet)
        for i in range(0, audio.size, 1024):
            af = av.AudioFrame.from_ndarray(audio[None, i:i + 1024], format="flt", layout="mono")
            af.sample_rate, af.pts = 16000, i
            for packet in aus.encode(af):
                out.mux(packet)
        for packet in aus.encode():
            out.mux(packet)
    assert run(["video", "-m", str(gemma3_270m), "--mmproj", str(av_probe), "-t", str(THREADS), "--no-cache",
                "--max-tokens", "4", "-c", "2048", str(mp4)]) == 0
    parts, embds = record_media["parts"][0], record_media["embeddings"][0]
    # the processor's layout: `MM:SS <image>` per frame, joined by single spaces, the sound segment
    # (one here: the pauses are under a second) after the frames of its span, under its start time
    layout = [p.text if isinstance(p, Text) else type(p).__name__ for p in parts]
    assert layout[:8] == ["00:00 ", "Image", " 00:01 ", "Image", " 00:02 ", "Image", " 00:00 ", "Audio"]
    assert len(layout) == 9 and layout[8].startswith("\n")  # then the question
    label = None
    frames: dict[str, list[int]] = {}
    sounds: list[tuple[int, list[int]]] = []  # (label in seconds, decoded tokens)
    for part, embd in zip(parts, embds, strict=True):
        if isinstance(part, Text):
            label = part.text.strip()
        elif embd is not None:
            assert label is not None
            decoded = _decode(embd, gemma3_270m, codebook)
            if isinstance(part, Image):
                frames[label] = decoded
            else:
                minutes, secs = label.split(":")
                sounds.append((int(minutes) * 60 + int(secs), decoded))
    for k, (shown, spoken) in enumerate(seconds):
        shown_ids, spoken_ids = tokenize(gemma3_270m, shown), tokenize(gemma3_270m, spoken)
        assert frames[f"00:0{k}"][: len(shown_ids)] == shown_ids
        # a segment starts on the second its label names: second k is 25 tokens a second further in
        start, heard = max((s for s in sounds if s[0] <= k), key=lambda s: s[0])
        at = (k - start) * 25
        assert heard[at:at + len(spoken_ids)] == spoken_ids


def test_thinking_is_stripped_and_routed(tiny_engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Script the sampling to emit a thought channel then an answer: the answer stream never sees
    the thought, which goes to on_thought (the CLI prints it dimmed on stderr)."""
    eng = tiny_engine
    assert eng._thought_open is not None and eng._thought_close is not None  # from the GGUF's vocabulary
    think = eng.tokenize("hmm let me see", add_special=False, parse_special=False)
    answer = eng.tokenize("final answer", add_special=False, parse_special=False)
    eos = eng.tokenize("<turn|>", add_special=False, parse_special=True)
    script = iter([eng._thought_open, *think, eng._thought_close, *answer, *eos])
    monkeypatch.setattr(eng, "_sample", lambda req, row: next(script))  # where every token is picked
    thoughts: list[str] = []
    out = "".join(eng.generate([Message.user("q")], GenerateOptions(max_tokens=50, think=True,
                                                                     on_thought=thoughts.append)))
    assert out == "final answer"
    assert "".join(thoughts) == "hmm let me see"
    assert eng.stats.stop_reason == "eog"


def test_cli_video_saved_timeline_is_not_used_for_another_model_setup(tiny_gemma4: tuple[Path, Path],
                                                                       tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = tiny_gemma4
    mp4 = write_video(tmp_path / "v.mp4", seconds=3.0, fps=5, with_audio=True)
    base = ["video", "-m", str(model), "-t", str(THREADS), "--max-tokens", "4", "-f", "json"]
    assert run([*base, "-c", "4096", "-p", "first question", str(mp4)]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["cache"] == "miss"
    assert run([*base, "-c", "3072", "-p", "first question", str(mp4)]) == 0  # another context: another state
    other = json.loads(capsys.readouterr().out)["meta"]
    assert other["cache"] == "miss" and "timeline" not in other
    assert run([*base, "-c", "3072", "-p", "second question", str(mp4)]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["timeline"] == "saved"
