"""Faulty servers (issue 13, issue 19), through the CLI, against a loopback server each test scripts
byte by byte: answers of the wrong shape, streams cut off before their end, keep-alive comments that
carry no answer, Retry-After asking for an hour, a --server-model the server does not list, and the
context size each kind of server reports. Each test checks the exit status, every stderr line and
what reached stdout. Nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.base import GenerateOptions
from gemmapipe.core.engine.parts import Message
from gemmapipe.core.engine.remote import RemoteConfig, RemoteEngine
from gemmapipe.core.errors import ExitStatus, GemmapipeError

pytestmark = pytest.mark.usefixtures("cli_env")  # see conftest.py

MODELS = {"object": "list", "data": [{"id": "gemma-4-12b-it", "object": "model"}]}


class Handler(BaseHTTPRequestHandler):
    """Serves what the test's Script says; HTTP/1.0, so a streamed answer ends when the handler returns."""

    script: Script

    def log_message(self, *args: Any) -> None:
        pass

    def send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def sse_head(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

    def raw(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def event(self, obj: Any) -> None:
        self.raw(f"data: {json.dumps(obj)}\n\n".encode())

    def content(self, text: str) -> None:
        self.event({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})

    def done(self, reason: str = "stop") -> None:
        self.event({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})

    def do_GET(self) -> None:
        answer = self.script.gets.get(self.path)
        with self.script.lock:
            self.script.requests.append(("GET", self.path, None))
        if answer is None:
            self.send_json(404, {"error": {"code": 404, "message": "File Not Found"}})
        else:
            self.send_json(200, answer)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        with self.script.lock:
            n = sum(1 for r in self.script.requests if r[0] == "POST")
            self.script.requests.append(("POST", self.path, body))
        with contextlib.suppress(OSError):  # the client hung up: what a client does on a timeout
            self.script.post(self, n)


def ok(h: Handler, n: int) -> None:
    h.sse_head()
    h.content("fine")
    h.done()
    h.raw(b"data: [DONE]\n\n")


class Script:
    def __init__(self) -> None:
        self.gets: dict[str, Any] = {"/v1/models": MODELS}  # path -> JSON (or raw bytes) answered with 200
        self.post: Callable[[Handler, int], None] = ok
        self.requests: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()  # set at teardown: handlers that stall give up

    def bodies(self) -> list[Any]:
        return [b for m, _, b in self.requests if m == "POST"]


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a traceback here would land in the test's captured stderr


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("ScriptedHandler", (Handler,), {"script": script})
    httpd = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        script.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def chat(url: str, *args: str) -> tuple[int, float]:
    t0 = time.monotonic()
    rc = run(["chat", "--server", url, "--retries", "0", *args, "hi"])
    return rc, time.monotonic() - t0


# --- answers of the wrong shape: exit 1, one line naming the server --------------------------------------------
def _sse(*events: Any) -> Callable[[Handler, int], None]:
    def answer(h: Handler, n: int) -> None:
        h.sse_head()
        for e in events:
            h.raw(e if isinstance(e, bytes) else f"data: {json.dumps(e)}\n\n".encode())
        h.raw(b"data: [DONE]\n\n")
    return answer


def _whole(obj: Any) -> Callable[[Handler, int], None]:
    return lambda h, n: h.send_json(200, obj)


@pytest.mark.parametrize(("answer", "reason"), [
    (_sse({"choices": [{"delta": "str"}]}), "malformed answer: choices[0].delta is a string, not an object"),
    (_sse({"choices": 5}), "malformed answer: choices is a number, not a list"),
    (_sse({"choices": ["x"]}), "malformed answer: choices[0] is a string, not an object"),
    (_sse({"choices": [{"delta": {"content": 5}}]}),
     "malformed answer: choices[0].delta.content is a number, not a string"),
    (_sse({"choices": [{"delta": {"reasoning_content": ["a"]}}]}),
     "malformed answer: choices[0].delta.reasoning_content is a list, not a string"),
    (_sse({"choices": [{"delta": {}, "finish_reason": 1}]}),
     "malformed answer: choices[0].finish_reason is a number, not a string"),
    (_sse([1, 2]), "malformed answer: the answer is a list, not a JSON object"),
    (_sse({"choices": [], "usage": "lots"}), "malformed answer: usage is a string, not an object"),
    (_sse({"choices": [], "usage": {"prompt_tokens": "many"}}),
     "malformed answer: usage.prompt_tokens is a string, not a token count"),
    (_sse({"choices": [], "usage": {"prompt_tokens_details": {"cached_tokens": -1}}}),
     "malformed answer: usage.prompt_tokens_details.cached_tokens is a number, not a token count"),
    (_sse(b"data: {not json\n\n"), "malformed answer: bad event in the stream: {not json"),
    (_whole({"choices": [{"message": "whole"}]}), "malformed answer: choices[0].message is a string, not an object"),
    (_whole([]), "malformed answer: the answer is a list, not a JSON object"),
    (_whole(b"<html>hello</html>"), "malformed answer: not a chat completion: <html>hello</html>"),
])
def test_malformed_answer_is_exit_1_one_line(server: tuple[str, Script], capsys: pytest.CaptureFixture[str],
                                             answer: Callable[[Handler, int], None], reason: str) -> None:
    url, script = server
    script.post = answer
    rc, _ = chat(url)
    captured = capsys.readouterr()
    assert rc == ExitStatus.ERROR
    assert captured.err.splitlines() == [f"gemmapipe: error: server {url}: {reason}"]
    assert captured.out == ""


@pytest.mark.parametrize(("listing", "reason"), [
    ({"data": 5}, "the model list's data is a number, not a list"),
    ({"data": [{"id": 3}]}, "data[0].id is a number, not a string"),
    ({"data": ["gemma"]}, "data[0] is a string, not an object"),
    ([], "the model list is a list, not a JSON object"),
    (b"<html>a web page</html>", "not JSON: <html>a web page</html>"),
])
def test_malformed_model_list_is_exit_1_before_any_request(
        server: tuple[str, Script], capsys: pytest.CaptureFixture[str], listing: Any, reason: str) -> None:
    url, script = server
    script.gets["/v1/models"] = listing
    rc, _ = chat(url)
    captured = capsys.readouterr()
    assert rc == ExitStatus.ERROR
    assert captured.err.splitlines() == [f"gemmapipe: error: server {url}: malformed model list: {reason}"]
    assert captured.out == "" and script.bodies() == []


def test_well_formed_variants_still_pass(server: tuple[str, Script], capsys: pytest.CaptureFixture[str]) -> None:
    """What real servers send beside the plain shape: a role-only first delta, null fields, an
    "error": null, a usage-only last chunk with null choices, no listing data at all."""
    url, script = server
    script.gets["/v1/models"] = {"object": "list"}
    script.post = _sse({"choices": [{"delta": {"role": "assistant", "content": None}, "finish_reason": None}]},
                       {"choices": [{"delta": {"content": "yes"}, "logprobs": None}], "error": None},
                       {"choices": [{"delta": {}, "finish_reason": "stop"}]},
                       {"choices": None, "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4,
                                                   "prompt_tokens_details": None}})
    rc, _ = chat(url)
    captured = capsys.readouterr()
    assert (rc, captured.out, captured.err) == (0, "yes\n", "")


# --- a stream that closes before its end is a failed request ---------------------------------------------------
def test_cut_off_stream_after_some_text_is_exit_1_and_marked(server: tuple[str, Script],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server

    def cut(h: Handler, n: int) -> None:
        h.sse_head()
        h.content("The answer ")
        h.content("is")  # ... and the server dies: no finish_reason, no [DONE]

    script.post = cut
    rc, _ = chat(url)
    captured = capsys.readouterr()
    assert rc == ExitStatus.ERROR
    assert captured.out == "The answer is\n"  # the partial line is ended, and said to be partial
    assert captured.err.splitlines() == [
        "gemmapipe: warning: the answer on stdout is incomplete: it stopped after 13 characters",
        f"gemmapipe: error: server {url}: the answer was cut off: the stream closed before its end "
        "(no finish_reason, no [DONE])"]
    assert len(script.bodies()) == 1


def test_cut_off_stream_before_any_text_is_exit_1(server: tuple[str, Script],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server

    def no_text(h: Handler, n: int) -> None:
        h.sse_head()
        h.raw(b": ping\n\n")

    script.post = no_text
    rc, _ = chat(url)
    captured = capsys.readouterr()
    assert rc == ExitStatus.ERROR and captured.out == ""
    assert captured.err.splitlines() == [f"gemmapipe: error: server {url}: the answer was cut off: the stream "
                                         "closed before its end (no finish_reason, no [DONE])"]


def test_cut_off_stream_fails_a_describe_input(server: tuple[str, Script], tmp_path: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from media_factory import write_image

    url, script = server

    def answer(h: Handler, n: int) -> None:
        h.sse_head()
        h.content("a cat" if n == 0 else "a d")
        if n == 0:
            h.done()
            h.raw(b"data: [DONE]\n\n")

    script.post = answer
    imgs = [str(write_image(tmp_path / f"{i}.png", (96, 96))) for i in range(2)]
    rc = run(["describe", "--server", url, "--retries", "0", *imgs])
    captured = capsys.readouterr()
    assert rc == ExitStatus.PARTIAL
    assert [json.loads(x).get("text") for x in captured.out.splitlines()] == ["a cat"]
    assert "the answer was cut off" in captured.err


@pytest.mark.parametrize("ending", [b"", b"data: [DONE]\n\n"])
def test_a_stream_with_either_end_mark_is_complete(server: tuple[str, Script], capsys: pytest.CaptureFixture[str],
                                                   ending: bytes) -> None:
    url, script = server

    def answer(h: Handler, n: int) -> None:
        h.sse_head()
        h.content("done")
        if ending:
            h.raw(ending)  # [DONE] without a finish_reason
        else:
            h.done()  # a finish_reason without [DONE]

    script.post = answer
    rc, _ = chat(url)
    captured = capsys.readouterr()
    assert (rc, captured.out, captured.err) == (0, "done\n", "")


def _chunked_then_hang_up(*events: Any) -> Callable[[Handler, int], None]:
    """An HTTP/1.1 chunked stream (as llama-server sends) whose connection drops before the last chunk."""
    def answer(h: Handler, n: int) -> None:
        h.raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for e in events:
            data = f"data: {json.dumps(e)}\n\n".encode()
            h.raw(b"%x\r\n%s\r\n" % (len(data), data))
        h.raw(b"40\r\ndata: {\"choi")  # half a chunk, then the connection is gone
    return answer


def test_a_connection_lost_after_the_finish_keeps_the_answer(server: tuple[str, Script],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server
    script.post = _chunked_then_hang_up({"choices": [{"delta": {"content": "whole"}}]},
                                        {"choices": [{"delta": {}, "finish_reason": "stop"}]})
    rc, _ = chat(url)
    captured = capsys.readouterr()
    assert (rc, captured.out, captured.err) == (0, "whole\n", "")


def test_a_connection_lost_before_the_finish_is_exit_1(server: tuple[str, Script],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server
    script.post = _chunked_then_hang_up({"choices": [{"delta": {"content": "part"}}]})
    rc, _ = chat(url)
    captured = capsys.readouterr()
    assert rc == ExitStatus.ERROR and captured.out == "part\n"
    lines = captured.err.splitlines()
    assert lines[0] == "gemmapipe: warning: the answer on stdout is incomplete: it stopped after 4 characters"
    assert lines[1].startswith(f"gemmapipe: error: server {url}: connection lost in the middle of an answer: ")
    assert len(lines) == 2


# --- the timeout is on progress, not on bytes -------------------------------------------------------------------
def _pings_after(*texts: str) -> Callable[[Handler, int], None]:
    def answer(h: Handler, n: int) -> None:
        h.sse_head()
        for t in texts:
            h.content(t)
        while not h.script.stop.wait(0.25):  # keep-alive comments until the client leaves
            h.raw(b": ping\n\n")
    return answer


def test_keep_alive_pings_do_not_hold_the_client_past_the_timeout(
        server: tuple[str, Script], capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server
    script.post = _pings_after()
    rc, took = chat(url, "--timeout", "1")
    captured = capsys.readouterr()
    assert rc == ExitStatus.ERROR and captured.out == ""
    assert captured.err.splitlines() == [f"gemmapipe: error: server {url}: no answer within 1 s",
                                         "gemmapipe: hint: the server may be overloaded; raise --timeout"]
    assert 0.9 < took < 3.0


def test_pings_in_the_middle_of_an_answer_time_out_and_mark_the_partial_answer(
        server: tuple[str, Script], capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server
    script.post = _pings_after("half ", "an answer")
    rc, took = chat(url, "--timeout", "1")
    captured = capsys.readouterr()
    assert rc == ExitStatus.ERROR and captured.out == "half an answer\n"
    assert captured.err.splitlines() == [
        "gemmapipe: warning: the answer on stdout is incomplete: it stopped after 14 characters",
        f"gemmapipe: error: server {url}: no progress for 1 s in the middle of an answer",
        "gemmapipe: hint: raise --timeout"]
    assert 0.9 < took < 3.0


def test_a_slow_answer_that_keeps_moving_outlives_the_timeout(server: tuple[str, Script],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server

    def answer(h: Handler, n: int) -> None:
        h.sse_head()
        for i in range(6):  # a token every 0.4 s, with pings between: 2.4 s in all, --timeout 1
            h.raw(b": ping\n\n")
            time.sleep(0.4)
            h.content(str(i))
        h.done()
        h.raw(b"data: [DONE]\n\n")

    script.post = answer
    rc, took = chat(url, "--timeout", "1")
    captured = capsys.readouterr()
    assert (rc, captured.out, captured.err) == (0, "012345\n", "")
    assert took > 2.0


# --- Retry-After is capped by what the user allowed -------------------------------------------------------------
def _busy_then(ok_from: int) -> Callable[[Handler, int], None]:
    def answer(h: Handler, n: int) -> None:
        if n < ok_from:
            h.send_json(503, {"error": {"code": 503, "message": "Loading model"}}, {"Retry-After": "3600"})
        else:
            ok(h, n)
    return answer


def test_retry_after_an_hour_waits_no_longer_than_the_timeout(server: tuple[str, Script],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server
    script.post = _busy_then(1)
    t0 = time.monotonic()
    rc = run(["chat", "--server", url, "--retries", "1", "--timeout", "1", "hi"])
    took = time.monotonic() - t0
    captured = capsys.readouterr()
    assert (rc, captured.out) == (0, "fine\n")
    assert captured.err.splitlines() == [
        f"gemmapipe: warning: server {url}: HTTP 503 (Loading model); it asks for 3600 s (Retry-After), "
        "more than the longest wait allowed (1 s, the timeout or a minute); retrying in 1.0 s"]
    assert 0.9 < took < 3.0 and len(script.bodies()) == 2


def test_retry_after_an_hour_gives_up_after_the_retries(server: tuple[str, Script],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server
    script.post = _busy_then(99)
    t0 = time.monotonic()
    rc = run(["chat", "--server", url, "--retries", "2", "--timeout", "1", "hi"])
    took = time.monotonic() - t0
    captured = capsys.readouterr()
    assert rc == ExitStatus.ERROR and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 3 and all("retrying in 1.0 s" in x for x in lines[:2])
    assert lines[2] == f"gemmapipe: error: server {url}: HTTP 503: Loading model"
    assert 1.8 < took < 4.5 and len(script.bodies()) == 3


# --- --server-model that the server does not list (issue 19) --------------------------------------------------
def test_unlisted_server_model_is_warned_naming_the_listed_ones(server: tuple[str, Script],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server
    script.gets["/v1/models"] = {"data": [{"id": "gemma-4-12b-it"}, {"id": "gemma-4-e4b-it"}]}
    rc = run(["chat", "--server", url, "--server-model", "gemma4-12b", "hi"])
    captured = capsys.readouterr()
    assert (rc, captured.out) == (0, "fine\n")
    assert captured.err.splitlines() == [
        f"gemmapipe: warning: server {url} does not list model 'gemma4-12b' (it lists 'gemma-4-12b-it', "
        "'gemma-4-e4b-it'); sending the name anyway"]
    assert script.bodies()[0]["model"] == "gemma4-12b"
    assert run(["chat", "--server", url, "--server-model", "gemma-4-e4b-it", "hi"]) == 0
    assert capsys.readouterr().err == ""
    assert run(["chat", "--server", url, "-q", "--server-model", "nope", "hi"]) == 0
    assert capsys.readouterr().err == ""  # -q: warnings are off


# --- the server's context (issue 19) ------------------------------------------------------------------------------
@pytest.mark.parametrize(("listing", "props", "n_ctx"), [
    ({"data": [{"id": "g", "max_model_len": 32768}]}, None, 32768),  # vLLM
    ({"data": [{"id": "g", "context_length": 16384}]}, None, 16384),  # SGLang
    ({"data": [{"id": "g", "owned_by": "llamacpp", "meta": {"n_ctx": 8192, "n_ctx_train": 131072}}]}, None, 8192),
    # llama-server whose listing has only the training context: /props says what a slot has
    ({"data": [{"id": "g", "owned_by": "llamacpp", "meta": {"n_ctx_train": 131072}}]},
     {"default_generation_settings": {"n_ctx": 4096}, "total_slots": 1}, 4096),
    ({"data": [{"id": "g", "owned_by": "llamacpp", "meta": {"n_ctx_train": 131072}}]}, None, 2048),  # no /props
    ({"data": [{"id": "g", "max_model_len": "big"}]}, None, 2048),  # not a number: unknown
])
def test_server_context_is_read(server: tuple[str, Script], listing: Any, props: Any, n_ctx: int) -> None:
    url, script = server
    script.gets["/v1/models"] = listing
    if props is not None:
        script.gets["/props"] = props
    eng = RemoteEngine(RemoteConfig(url=url, retries=0), n_ctx=2048)
    assert eng.n_ctx == n_ctx and eng.describe().n_ctx == n_ctx
    asked = [p for m, p, _ in script.requests if m == "GET"]
    assert asked == (["/v1/models", "/props"] if listing["data"][0].get("owned_by") == "llamacpp"
                     and "n_ctx" not in listing["data"][0]["meta"] else ["/v1/models"])


def test_engine_errors_are_gemmapipe_errors(server: tuple[str, Script]) -> None:
    """The engine's own callers (not only the CLI) see a GemmapipeError for a malformed chunk, and
    the connection slot of -j is given back."""
    url, script = server
    script.post = _sse({"choices": [{"delta": {"content": "a"}}]}, {"choices": {"0": 1}})
    eng = RemoteEngine(RemoteConfig(url=url, retries=0, max_concurrency=1))
    got: list[str] = []
    with pytest.raises(GemmapipeError, match="choices is an object, not a list"):
        for piece in eng.generate([Message.user("x")], GenerateOptions()):
            got.append(piece)
    assert got == ["a"]
    script.post = ok
    assert "".join(eng.generate([Message.user("x")], GenerateOptions())) == "fine"  # the slot was released


# --- the same rule for the local engine ---------------------------------------------------------------------------
def test_local_engine_failing_mid_answer_is_marked_the_same_way(fake_model: Any, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from gemmapipe.core import session

    from fake_engine import FakeEngine

    class Failing(FakeEngine):
        def generate(self, messages: list[Message], options: GenerateOptions) -> Iterator[str]:
            def stream() -> Iterator[str]:
                yield "Once"
                yield " upon"
                raise GemmapipeError("engine", "llama_decode failed")
            return stream()

    monkeypatch.setattr(session, "_ENGINE_FACTORY", lambda config, pair, **kw: Failing(config=config))
    assert run(["chat", "tell me a story"]) == ExitStatus.ERROR
    captured = capsys.readouterr()
    assert captured.out == "Once upon\n"
    assert captured.err.splitlines() == [
        "gemmapipe: warning: the answer on stdout is incomplete: it stopped after 9 characters",
        "gemmapipe: error: engine: llama_decode failed"]
