"""The multimodal and schema paths against vLLM, SGLang and llama-server as their APIs are documented,
replayed on loopback: what gemmapipe sends is checked against what each server takes, and each
answers with a stream in its own shape.

No vLLM or SGLang can run on these machines (they need a GPU and a real Gemma 4 checkpoint), so the
fixtures below are written from their documentation and protocol source, not captured from a
running server:
- vLLM: `GET /v1/models` cards with `owned_by: "vllm"` and `max_model_len`
  (vllm/entrypoints/openai/protocol.py `ModelCard`); multimodal parts `image_url` (data URL) and
  `input_audio` (`data`, `format: "wav"`) (docs "Multimodal Inputs"); structured outputs through
  `response_format: {"type": "json_schema", "json_schema": {"name", "schema"}}`; streamed chunks
  `chat.completion.chunk` with a first role-only delta and, with `stream_options.include_usage`,
  a last chunk of `choices: []` and `usage`.
- SGLang: the same card with `owned_by: "sglang"` and `max_model_len`
  (sglang/srt/entrypoints/openai/protocol.py `ModelCard`), the same parts and response_format.
- llama-server: `owned_by: "llamacpp"` and `meta.n_ctx` (tools/server/server-context.cpp
  `get_res_model_info`), a `grammar` field, `timings` in the last chunk. The real llama-server is
  run in tests/test_server_llamacpp.py; this one pins the request shape without a build.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gemmapipe.cli.app import run

from media_factory import recorded_speech, write_image

pytestmark = pytest.mark.usefixtures("cli_env")

MODEL = "google/gemma-4-12b-it"
MODELS = {
    "vllm": {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1767225600, "owned_by": "vllm",
                                         "root": MODEL, "parent": None, "max_model_len": 32768,
                                         "permission": [{"id": "modelperm-0", "object": "model_permission",
                                                         "allow_sampling": True}]}]},
    "sglang": {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1767225600,
                                           "owned_by": "sglang", "root": MODEL, "max_model_len": 131072}]},
    "llamacpp": {"object": "list", "data": [{"id": "gemma-4-12B-it-Q4_K_M.gguf", "object": "model",
                                             "created": 1767225600, "owned_by": "llamacpp",
                                             "meta": {"vocab_type": 1, "n_vocab": 262144, "n_ctx": 8192,
                                                      "n_ctx_train": 262144, "n_embd": 3840}}]},
}


def stream(kind: str, text: list[str]) -> list[dict[str, Any]]:
    """The events of one streamed answer, in the shape `kind` sends them."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1767225600,
            "model": MODELS[kind]["data"][0]["id"]}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}]}]
    events += [{**head, "choices": [{"index": 0, "delta": {"content": t}, "logprobs": None, "finish_reason": None}]}
               for t in text]
    last: dict[str, Any] = {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}
    if kind == "llamacpp":
        last["timings"] = {"prompt_n": 120, "prompt_ms": 80.5, "predicted_n": len(text), "predicted_ms": 30.2}
    events.append(last)
    usage = {"prompt_tokens": 120, "completion_tokens": len(text), "total_tokens": 120 + len(text)}
    events.append({**head, "choices": [], "usage": usage})
    return events


def problems(kind: str, body: dict[str, Any]) -> list[str]:
    """What `kind` would refuse, or silently do otherwise than asked, in a chat completion body."""
    bad = []
    if body.get("stream") is not True or body.get("stream_options") != {"include_usage": True}:
        bad.append("not a streamed request with usage")
    for m in body.get("messages", []):
        for p in m["content"] if isinstance(m["content"], list) else []:
            if p["type"] == "image_url":
                url = p["image_url"]["url"]
                if not url.startswith("data:image/png;base64,"):
                    bad.append("image_url is not a PNG data URL")
            elif p["type"] == "input_audio":
                raw = base64.b64decode(p["input_audio"]["data"])
                if p["input_audio"].get("format") != "wav" or raw[:4] != b"RIFF":
                    bad.append("input_audio is not WAV")
            elif p["type"] != "text":
                bad.append(f"content type {p['type']!r}")
    rf = body.get("response_format")
    if kind == "llamacpp":
        if rf is not None and body.get("grammar"):
            bad.append("both a grammar and a response_format")
    else:
        if "grammar" in body:
            bad.append("'grammar' is llama.cpp's field: ignored here, the answer would be unconstrained")
        if rf is not None and (rf.get("type") != "json_schema" or "schema" not in rf.get("json_schema", {})):
            bad.append("response_format must be json_schema with json_schema.schema")
    return bad


class Replay:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.bodies: list[dict[str, Any]] = []
        self.answers: list[list[str]] = [["ok"]]


@pytest.fixture(params=["vllm", "sglang", "llamacpp"])
def replay(request: pytest.FixtureRequest) -> Iterator[tuple[str, Replay]]:
    rep = Replay(request.param)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                self._json(200, MODELS[rep.kind])
            else:
                self._json(404, {"object": "error", "message": "Not Found", "type": "NotFoundError", "code": 404})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            rep.bodies.append(body)
            bad = problems(rep.kind, body)
            if bad:
                self._json(400, {"object": "error", "message": "; ".join(bad), "type": "BadRequestError",
                                 "code": 400})
                return
            answer = rep.answers[min(len(rep.bodies), len(rep.answers)) - 1]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for event in stream(rep.kind, answer):
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", rep
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


SCHEMA = '{"type":"object","properties":{"objects":{"type":"array","items":{"type":"string"}}},"required":["objects"]}'


def test_schema_answers_are_constrained_the_way_each_server_takes(replay: tuple[str, Replay], tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url, rep = replay
    rep.answers = [['{"objects": ', '["cat"]}']]
    img = write_image(tmp_path / "cat.png", (200, 150))
    assert run(["describe", "--server", url, "-f", "json", "--schema", SCHEMA, str(img)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data"] == {"objects": ["cat"]}
    (body,) = rep.bodies
    if rep.kind == "llamacpp":  # gemmapipe's own GBNF, not llama-server's schema grammar
        assert "response_format" not in body and "root ::=" in body["grammar"]
        assert "objects" in body["grammar"]
    else:
        assert body["response_format"]["json_schema"]["schema"] == json.loads(SCHEMA) and "grammar" not in body
    assert [p["type"] for p in body["messages"][0]["content"]] == ["text", "image_url"]


def test_an_answer_that_is_not_the_schemas_json_fails_on_every_server(replay: tuple[str, Replay], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    url, rep = replay
    rep.answers = [["```json\n", '{"objects": ["c']]  # a fence, then cut off: what llama-server's own grammar let by
    img = write_image(tmp_path / "cat.png", (200, 150))
    assert run(["describe", "--server", url, "-f", "json", "--schema", SCHEMA, str(img)]) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_audio_and_the_servers_context(replay: tuple[str, Replay], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import soundfile as sf

    url, rep = replay
    rep.answers = [["hello ", "there"]]
    x = np.zeros(4 * 16000, np.float32)
    x[16000:48000] = recorded_speech(32000, offset=16000)
    sf.write(tmp_path / "talk.wav", x, 16000)
    assert run(["transcribe", "--server", url, "-f", "json", "-l", "en", str(tmp_path / "talk.wav")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["text"] for s in out["segments"]] == ["hello there"]
    assert out["meta"]["model"]["n_ctx"] == {"vllm": 32768, "sglang": 131072, "llamacpp": 8192}[rep.kind]
    (body,) = rep.bodies
    (audio,) = [p for p in body["messages"][0]["content"] if p["type"] == "input_audio"]
    with wave.open(io.BytesIO(base64.b64decode(audio["input_audio"]["data"]))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
