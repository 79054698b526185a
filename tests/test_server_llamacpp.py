"""`gemmapipe --server` against llama.cpp's own C++ llama-server, compared with the local engine.

The server is built by `.ci/llama-server.sh` from the llama.cpp that the pinned llama-cpp-python
sdist vendors (the same code as the local engine), and named by GEMMAPIPE_LLAMA_SERVER (CI sets it;
without it these tests are skipped, saying why). Each server listens on 127.0.0.1 on a free port
and runs the test models:

- the tiny random Gemma 4 pair (a real Gemma 4 vocabulary and chat template): every command, its
  output compared character for character with the local engine's. That needs the same numerics on
  both sides: `-fa off` on the server, one sequence at a time, the same context size (`-c 2048`);
- the probe projectors on Gemma 3 270M, which has no chat template (llama-server would use ChatML:
  they get a plain template file): a server without a modality refuses it, and the words an audio
  clip spells reach the model through `input_audio`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.cli.app import run

from media_factory import speech_file as speech_wav
from media_factory import write_image, write_video

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("cli_env")]
SERVER_ENV = "GEMMAPIPE_LLAMA_SERVER"
THREADS = 2
CTX = 2048
# Renders the messages' text as it is, media markers included: what gemmapipe's local engine does
# for a GGUF without a chat template.
PLAIN_TEMPLATE = ("{%- for message in messages -%}{%- if message.content is string -%}{{ message.content }}"
                  "{%- else -%}{%- for part in message.content -%}{{ part.text }}{%- endfor -%}{%- endif -%}"
                  "{%- endfor -%}")


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    path = os.environ.get(SERVER_ENV)
    if not path:
        pytest.skip(f"{SERVER_ENV} is not set (bash .ci/llama-server.sh builds llama-server and prints its path)")
    binary = Path(path)
    if not (binary.is_file() and os.access(binary, os.X_OK)):  # asked for, and missing: that is a failure
        pytest.fail(f"{SERVER_ENV}={path} is not an executable file (bash .ci/llama-server.sh builds it)")
    return binary


@dataclass
class LlamaServer:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def llama_server(binary: Path, folder: Path, model: Path, mmproj: Path | None = None, *, ctx: int = CTX,
                 parallel: int = 1, plain_template: bool = False) -> Iterator[LlamaServer]:
    """llama-server on 127.0.0.1 (a free port), once /health answers; stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "-c", str(ctx), "-np", str(parallel),
            "-fa", "off", "-t", str(THREADS), "--no-webui"]
    if mmproj is not None:
        args += ["--mmproj", str(mmproj)]
    if plain_template:
        template = folder / "plain.jinja"
        template.write_text(PLAIN_TEMPLATE)
        args += ["--chat-template-file", str(template)]
    for _attempt in range(3):  # the free port may be taken between asking and binding
        port = _free_port()
        log = folder / f"llama-server-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([*args, "--port", str(port)], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        server = LlamaServer(f"http://127.0.0.1:{port}", proc, log)
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline and not _healthy(server.url):
            time.sleep(0.2)
        if proc.poll() is None and _healthy(server.url):
            break
        proc.kill()
        proc.wait(10)
    else:
        pytest.fail(f"llama-server did not start: {' '.join(args)}\n{server.log_tail()}")
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def tiny_server(llama_server_bin: Path, tiny_gemma4: tuple[Path, Path],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    model, mmproj = tiny_gemma4
    with llama_server(llama_server_bin, tmp_path_factory.mktemp("tiny-server"), model, mmproj) as server:
        yield server


@pytest.fixture(scope="module")
def tiny_server_np2(llama_server_bin: Path, tiny_gemma4: tuple[Path, Path],
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    model, mmproj = tiny_gemma4
    with llama_server(llama_server_bin, tmp_path_factory.mktemp("tiny-server-np2"), model, mmproj,
                      ctx=2 * CTX, parallel=2) as server:
        yield server


@dataclass
class Both:
    """One command run on the local engine and on the server; (status, stdout, stderr) each."""

    local: tuple[int, str, str]
    server: tuple[int, str, str]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = run(args)
    out, err = capsys.readouterr()
    return status, out, err


def both(cmd: str, args: list[str], model: Path, server: LlamaServer, capsys: pytest.CaptureFixture[str],
         stdin: str | bytes | None = None) -> Both:
    """`stdin`: what each of the two runs reads from standard input."""
    def run_with_stdin(argv: list[str]) -> tuple[int, str, str]:
        if stdin is not None:
            sys.stdin = io.StringIO(stdin) if isinstance(stdin, str) else io.TextIOWrapper(io.BytesIO(stdin))
        return _run(argv, capsys)

    local = [cmd, "-m", str(model), "-t", str(THREADS), "-c", str(CTX)]
    return Both(run_with_stdin([*local, *args]), run_with_stdin([cmd, "--server", server.url, *args]))


def agree(local: str, server: str) -> bool:
    """The same text, but for where the token limit cut a character in two: the random model emits
    byte tokens, the local engine writes the incomplete bytes as U+FFFD and llama-server holds them
    (and what follows them in the same invalid run) back."""
    return local == server or (local.startswith(server) and "\ufffd" in local[len(server):])


def _same(result: Both) -> str:
    """Both succeeded with the same output, line by line (see agree)."""
    assert result.local[0] == 0, result.local[2]
    assert result.server[0] == 0, result.server[2]
    local, server = result.local[1].split("\n"), result.server[1].split("\n")
    assert len(local) == len(server) and all(map(agree, local, server)), (result.local[1], result.server[1])
    return result.server[1]




def _describe_meta_free(out: str) -> list[tuple[str, object]]:
    """describe's json/jsonl without the meta (timings and the model differ between the two)."""
    return [(d["text"], d.get("data")) for d in map(json.loads, out.splitlines())]


def _agree_rows(local: str, server: str) -> bool:
    a, b = _describe_meta_free(local), _describe_meta_free(server)
    return len(a) == len(b) and all(x[1] == y[1] and agree(x[0], y[0]) for x, y in zip(a, b, strict=True))


# --- the server's facts -------------------------------------------------------------------------------
def test_server_context_owner_and_an_unlisted_model(tiny_server: LlamaServer, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gemmapipe.core.engine.remote import RemoteConfig, RemoteEngine

    engine = RemoteEngine(RemoteConfig(url=tiny_server.url), n_ctx=16384)
    assert engine.n_ctx == CTX  # meta.n_ctx of /v1/models, not what the task asked for
    assert engine._schema_style == "grammar"  # owned_by "llamacpp": JSON answers use our own grammar
    img = write_image(tmp_path / "i.png", (96, 96))
    status, _, err = _run(["describe", "--server", tiny_server.url, "--server-model", "no-such-model",
                             "--max-tokens", "2", str(img)], capsys)
    assert status == 0 and "does not list model 'no-such-model'" in err and "tiny-gemma4" in err


# --- every command, compared with the local engine ------------------------------------------------------
def test_describe_formats_and_stdin_match_local(tiny_server: LlamaServer, tiny_gemma4: tuple[Path, Path],
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny_gemma4
    imgs = [str(write_image(tmp_path / f"i{i}.png", (200 + 40 * i, 150), color=(40 * i, 90, 200))) for i in range(2)]
    _same(both("describe", ["--max-tokens", "8", imgs[0]], model, tiny_server, capsys))  # txt
    res = both("describe", ["--max-tokens", "8", "-f", "jsonl", *imgs], model, tiny_server, capsys)
    assert _agree_rows(res.local[1], res.server[1])
    png = Path(imgs[1]).read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(png)))
    status, piped, err = _run(["describe", "--server", tiny_server.url, "--max-tokens", "8", "-f", "jsonl", "-"],
                              capsys)
    assert status == 0, err
    assert _agree_rows(res.local[1].splitlines()[1], piped)


def test_schema_and_diarize_answers_match_local(tiny_server: LlamaServer, tiny_gemma4: tuple[Path, Path],
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """llama-server's own schema grammar let the model open a ```json fence and pad gaps with
    blanks (`{` and `{ "speaker"` came back); with gemmapipe's grammar the answers are the local ones."""
    model, _ = tiny_gemma4
    img = str(write_image(tmp_path / "i.png", (96, 96)))
    schema = '{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}'
    out = _same(both("describe", ["--schema", schema, "--max-tokens", "32", img], model, tiny_server, capsys))
    assert isinstance(json.loads(out)["ok"], bool)
    wav = str(speech_wav(tmp_path / "talk.wav", [(0.5, 2.5), (4.0, 6.5)], 8.0))
    res = both("diarize", ["--max-tokens", "48", "-f", "jsonl", wav], model, tiny_server, capsys)
    assert res.local[0] == res.server[0] == 0, res.server[2]
    # (the random model's text runs to the token limit: where that cuts a character in two, the local
    # engine writes U+FFFD and llama-server holds the incomplete bytes back)
    turns = [[(r["speaker"], r["text"]) for r in map(json.loads, out.splitlines())]
             for out in (res.local[1], res.server[1])]
    assert len(turns[1]) == len(turns[0]) == 2
    assert all(a[0] == b[0] and agree(a[1], b[1]) for a, b in zip(*turns, strict=True)), turns


@pytest.mark.parametrize("fmt", ["srt", "json"])
def test_transcribe_matches_local(fmt: str, tiny_server: LlamaServer, tiny_gemma4: tuple[Path, Path],
                                  tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny_gemma4
    wav = speech_wav(tmp_path / "talk.wav", [(0.5, 2.5), (4.0, 6.5)], 8.0)
    res = both("transcribe", ["--max-tokens", "10", "-f", fmt, str(wav)], model, tiny_server, capsys)
    if fmt == "json":
        seg = [[(s["start_ms"], s["end_ms"], s["text"]) for s in json.loads(r[1])["segments"]]
               for r in (res.local, res.server)]
        assert res.local[0] == res.server[0] == 0 and len(seg[0]) == len(seg[1]) == 2
        assert all(a[:2] == b[:2] and agree(a[2], b[2]) for a, b in zip(*seg, strict=True)), seg
        return
    expected = _same(res)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(wav.read_bytes())))  # the same from a pipe
    status, piped, err = _run(["transcribe", "--server", tiny_server.url, "--max-tokens", "10", "-f", fmt, "-"],
                              capsys)
    assert status == 0 and piped == expected, err


def test_chat_with_attachments_and_piped_text_matches_local(tiny_server: LlamaServer,
                                                            tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny_gemma4
    img = str(write_image(tmp_path / "i.png", (200, 150)))
    wav = str(speech_wav(tmp_path / "a.wav", [(0.2, 1.5)], 2.0))
    _same(both("chat", ["--max-tokens", "10", "-a", img, "-a", wav, "what is this?"], model, tiny_server, capsys))
    monkeypatch.setattr(sys, "stdin", sys.stdin)  # both() replaces it; restored after the test
    _same(both("chat", ["--max-tokens", "10", "-s", "be brief", "summarize"], model, tiny_server, capsys,
               stdin="some piped context"))


def test_video_matches_local(tiny_server: LlamaServer, tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """480x336 frames are 70 tokens, a size both keep as it is: the same prompt on both sides."""
    model, _ = tiny_gemma4
    mp4 = str(write_video(tmp_path / "v.mp4", seconds=4.0, fps=5, size=(480, 336), with_audio=True))
    res = both("video", ["--no-cache", "--max-tokens", "10", "-f", "json", mp4], model, tiny_server, capsys)
    local, remote = json.loads(res.local[1]), json.loads(res.server[1])
    assert res.local[0] == res.server[0] == 0
    assert agree(local["text"], remote["text"])
    assert remote["meta"]["tokens_media"] == local["meta"]["tokens_media"]


# --- what the server feeds: frames at its minimum, windows within its context ---------------------------
def test_frames_are_sized_and_counted_as_the_server_feeds_them(tiny_server: LlamaServer) -> None:
    """llama-server raises a picture under gemma4uv's 70 tokens (a 720x358 frame at the 70-token
    budget is 11x5 = 55): gemmapipe sends frames at the size it raises them to and counts them so."""
    from gemmapipe.core.engine.base import GenerateOptions
    from gemmapipe.core.engine.parts import Image, Message, Text
    from gemmapipe.core.engine.remote import RemoteConfig, RemoteEngine
    from gemmapipe.core.media.frames import frame_size

    engine = RemoteEngine(RemoteConfig(url=tiny_server.url))
    opts = GenerateOptions(max_tokens=1)

    def prompt_tokens(parts: list) -> int:  # type: ignore[type-arg]
        "".join(engine.generate([Message("user", parts)], opts))
        return engine.stats.prompt_tokens

    base = prompt_tokens([Text("x")])
    small, sent = frame_size(720, 358), frame_size(720, 358, floor_tokens=70)
    assert (small, sent) == ((528, 240), (624, 288))
    for w, h in (small, sent):
        image = Image(np.full((h, w, 3), 120, np.uint8))
        counted = engine.count_tokens([Message("user", [image])], opts).per_chunk[0][1]
        fed = prompt_tokens([image, Text("x")]) - base - 2  # less <|image> and <image|>
        assert fed == counted == 78, (w, h)


def test_video_windows_fit_the_servers_context(tiny_server: LlamaServer, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A video longer than the server's 2048 tokens is answered per window, each one fitting."""
    mp4 = str(write_video(tmp_path / "v.mp4", seconds=24.0, fps=1, size=(720, 358), with_audio=True))
    status, out, err = _run(["video", "--server", tiny_server.url, "--no-cache", "--no-dedupe", "--max-tokens",
                             "4", "-f", "json", mp4], capsys)
    assert status == 0, err
    meta = json.loads(out)["meta"]
    assert meta["windows"] >= 2 and meta["tokens_per_frame"] == 78 and meta["tokens_media"] > CTX


def test_context_overflow_is_one_line_on_both(tiny_server: LlamaServer, tiny_gemma4: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = tiny_gemma4
    words = " ".join(f"word{i}" for i in range(3000))
    monkeypatch.setattr(sys, "stdin", io.StringIO(words))
    status, _, err = _run(["chat", "--server", tiny_server.url, "--max-tokens", "4", "go on"], capsys)
    assert status == 1 and "does not fit the server's context" in err and len(err.strip().splitlines()) <= 2
    monkeypatch.setattr(sys, "stdin", io.StringIO(words))
    status, _, err = _run(["chat", "-m", str(model), "-t", str(THREADS), "-c", str(CTX), "--max-tokens", "4",
                           "go on"], capsys)
    assert status != 0 and "context" in err


def test_jobs_against_parallel_slots_keep_order_and_answers(tiny_server_np2: LlamaServer,
                                                            tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    model, _ = tiny_gemma4
    imgs = [str(write_image(tmp_path / f"i{i}.png", (96 + 48 * i, 96), color=(60 * i, 20, 200))) for i in range(3)]
    two = _run(["describe", "--server", tiny_server_np2.url, "--max-tokens", "8", "-f", "jsonl", "-j", "2", *imgs],
               capsys)
    local = _run(["describe", "-m", str(model), "-t", str(THREADS), "-c", str(CTX), "--max-tokens", "8", "-f",
                  "jsonl", *imgs], capsys)
    assert two[0] == local[0] == 0, two[2]
    files = [json.loads(x)["file"] for x in two[1].splitlines()]
    assert files == imgs  # input order, whatever finished first
    assert _agree_rows(local[1], two[1])  # two sequences decoded together: the same numerics as one


# --- probe projectors: refused modalities, and the words a clip spells reach the model ---------------------
@pytest.fixture(scope="module")
def audio_probe_server(llama_server_bin: Path, gemma3_270m: Path, audio_probe: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with llama_server(llama_server_bin, tmp_path_factory.mktemp("audio-probe"), gemma3_270m, audio_probe,
                      ctx=1024, plain_template=True) as server:
        yield server


@pytest.fixture(scope="module")
def vision_probe_server(llama_server_bin: Path, gemma3_270m: Path, vision_probe: Path,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with llama_server(llama_server_bin, tmp_path_factory.mktemp("vision-probe"), gemma3_270m, vision_probe,
                      ctx=1024, plain_template=True) as server:
        yield server


def test_refused_modalities(audio_probe_server: LlamaServer, vision_probe_server: LlamaServer, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    img = str(write_image(tmp_path / "i.png", (96, 96)))
    wav = str(speech_wav(tmp_path / "a.wav", [(0.2, 1.5)], 2.0))
    status, _, err = _run(["describe", "--server", audio_probe_server.url, "--max-tokens", "2", img], capsys)
    assert status == 1 and "refused image input" in err and "--mmproj" in err
    status, _, err = _run(["transcribe", "--server", vision_probe_server.url, "--max-tokens", "2", "--vad",
                           "energy", wav], capsys)
    assert status == 1 and "refused audio input" in err


def test_probe_words_reach_the_server_model_as_input_audio(audio_probe_server: LlamaServer, gemma3_270m: Path,
                                                           audio_probe: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The clip spells "The capital of France is"; the model continues what it hears. (The server
    keeps the <audio> wrapper text that the local engine strips for a vocabulary without it, so the
    two continuations are not compared word for word.)"""
    import soundfile as sf

    from models.probe import read_probe_codebook, tokenize, tokens_to_waveform

    wave = tokens_to_waveform(tokenize(gemma3_270m, "The capital of France is"), read_probe_codebook(audio_probe))
    sf.write(tmp_path / "clip.wav", wave, 16000, subtype="FLOAT")
    status, out, err = _run(["chat", "--server", audio_probe_server.url, "--max-tokens", "8", "-a",
                             str(tmp_path / "clip.wav"), " the"], capsys)
    assert status == 0, err
    assert "capital" in out and "France" in out
