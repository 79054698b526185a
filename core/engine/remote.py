"""The remote engine: the Engine protocol over an OpenAI-compatible `/v1/chat/completions` endpoint.

Works with llama.cpp's llama-server, vLLM and SGLang serving Gemma 4, and `litert-lm serve`. One
request = one POST with `stream: true`; the answer is read as server-sent events. Media travel
inline, as the llama.cpp server documents them (tools/server/README.md, "multimodal input"):

- an image as `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}` (PNG of the
  pixels already scaled to the token budget);
- audio as `{"type": "input_audio", "input_audio": {"data": "<base64 WAV>", "format": "wav"}}`
  (16 kHz mono 16-bit PCM);
- a JSON schema as `response_format: {"type": "json_schema", "json_schema": {"name", "schema",
  "strict"}}`; a server that rejects that type (llama-cpp-python's) gets `{"type": "json_object",
  "schema": ...}` instead, and the engine remembers which one worked.

Only the standard library speaks HTTP (http.client); proxies from the environment are not used.
Connection failures and 429/5xx answers are retried with exponential backoff (Retry-After is
honoured up to the timeout, and a longer ask is said on the log); a refused modality, bad
credentials or an unreachable server end in a one-line error (exit 1). Every JSON read from the
server goes through the `parse_*` functions, so an answer of the wrong shape is a MalformedAnswer,
never a crash. The timeout counts from the last event that moved the answer on (keep-alive comments
do not), and a stream that closes before its end (no finish_reason, no [DONE]) is a failed request,
not a short answer. The engine is thread-safe: `stats` is per thread, so concurrent requests (`-j`)
each see their own counters.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import random
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..audio_format import SAMPLE_RATE
from ..errors import GemmapipeError, UsageError
from .base import EngineInfo, EngineStats, GenerateOptions, TokenCount
from .parts import Audio, Image, Message, Text, ToolCall, ToolResult

if TYPE_CHECKING:
    import numpy as np

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_MAX_DELAY_S = 60.0
_THOUGHT_OPEN, _THOUGHT_CLOSE = "<|channel>", "<channel|>"
# What servers say when the model behind them lacks a modality (llama-server: "image input is not
# supported - hint: ...", HTTP 500; vLLM: "... is not a multimodal model" / "At most 0 image(s)").
_REFUSAL = re.compile(r"not supported|unsupported|does not support|not a multimodal|at most 0|no (mmproj|projector)"
                      r"|multimodal (is )?(disabled|not)", re.I)

# The image token bounds a server applies: gemma4uv's own [70, 1120], which llama-server keeps unless
# started with --image-min-tokens / --image-max-tokens (neither /props nor /v1/models reports them).
# An image outside them is rescaled there, so images are counted, and video frames sized, by them.
SERVER_IMAGE_TOKENS = (70, 1120)

_INVALID = re.compile(r"validation error|response_format|invalid_request|invalid request", re.I)


class ServerError(GemmapipeError):
    """A failure of the server or of talking to it (exit 1). `batch_fatal`: every other input of a
    batch would fail the same way (unreachable, refused credentials or modality), so stop there."""

    def __init__(self, subject: str, reason: str, hint: str | None = None, *, batch_fatal: bool = False) -> None:
        super().__init__(subject, reason, hint)
        self.batch_fatal = batch_fatal


class MalformedAnswer(ServerError):
    """The server answered JSON of a shape the OpenAI format does not have (or no JSON at all)."""


@dataclass
class RemoteConfig:
    url: str  # base URL: http://host:8080 (a trailing /v1 or /v1/chat/completions is accepted)
    api_key: str | None = None
    model: str | None = None  # the served model id; None: the first one /v1/models lists
    timeout: float = 600.0  # seconds the server may stay silent (prefill of a long prompt included)
    connect_timeout: float = 10.0
    retries: int = 4  # a server still loading its model answers 503 for a while
    backoff_s: float = 1.0  # first retry after this, doubling: 1 + 2 + 4 + 8 s
    n_ctx: int = 0  # 0: what the server reports, else the caller's size
    max_concurrency: int = 0  # requests in flight at once, all threads together (-j); 0: no bound
    verbose: bool = False
    log: Callable[[str], None] | None = None  # where retry notices go (stderr in the CLI)


def base_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of an OpenAI-compatible server from what a user types."""
    text = url.strip()
    if not text:
        raise UsageError(None, "empty URL", "e.g. {server} http://127.0.0.1:8080", parameter="server")
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(None, f"not an http(s) URL: {url!r}", "e.g. {server} http://127.0.0.1:8080",
                         parameter="server")
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/v1"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UsageError(None, f"bad port in {url!r}", parameter="server") from None
    return parts.scheme, parts.hostname, port, path


# --- encoding parts ---------------------------------------------------------------------------------
def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Mono float samples in [-1, 1] as a 16-bit PCM WAV file, in memory."""
    import wave

    import numpy as np

    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    import numpy as np
    from PIL import Image as PILImage

    px = np.ascontiguousarray(pixels, dtype=np.uint8)
    if px.ndim != 3 or px.shape[2] != 3:
        raise GemmapipeError("image", f"expected HxWx3 RGB pixels, got shape {px.shape}")
    buf = io.BytesIO()
    PILImage.fromarray(px, "RGB").save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def content_part(part: Text | Image | Audio) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Image):
        return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _b64(png_bytes(part.pixels))}}
    return {"type": "input_audio", "input_audio": {"data": _b64(wav_bytes(part.samples)), "format": "wav"}}


def openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages in the Chat Completions format: plain strings where there is only text (every
    server takes those), typed content arrays, media in place, where there is more."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        if msg.role == "tool":
            for r in msg.parts:
                if isinstance(r, ToolResult):
                    body = r.content if isinstance(r.content, str) else json.dumps(r.content, ensure_ascii=False)
                    out.append({"role": "tool", "tool_call_id": r.call_id, "name": r.name, "content": body})
            continue
        calls = [p for p in msg.parts if isinstance(p, ToolCall)]
        if calls:
            out.append({"role": "assistant", "content": msg.text or None,
                        "tool_calls": [{"id": c.id, "type": "function",
                                        "function": {"name": c.name,
                                                     "arguments": json.dumps(c.arguments, ensure_ascii=False)}}
                                       for c in calls]})
            continue
        parts: list[Text | Image | Audio] = []
        for p in msg.parts:  # adjacent text runs become one text part
            if isinstance(p, ToolCall | ToolResult):
                continue
            if isinstance(p, Text) and parts and isinstance(parts[-1], Text):
                parts[-1] = Text(parts[-1].text + p.text)
            else:
                parts.append(p)
        if all(isinstance(p, Text) for p in parts) or msg.role != "user":
            if any(not isinstance(p, Text) for p in parts):
                raise GemmapipeError("remote request", f"media in a {msg.role} message cannot be sent to a server")
            content: Any = "".join(p.text for p in parts if isinstance(p, Text))
        else:
            content = [content_part(p) for p in parts]
        out.append({"role": msg.role, "content": content})
    return out


def media_kinds(messages: list[Message]) -> set[str]:
    kinds = set()
    for m in messages:
        for p in m.parts:
            if isinstance(p, Image):
                kinds.add("image")
            elif isinstance(p, Audio):
                kinds.add("audio")
    return kinds


def request_body(messages: list[Message], options: GenerateOptions, *, model: str | None,
                 schema_style: str = "json_schema") -> dict[str, Any]:
    """The JSON of one streaming chat completion request. `schema_style`: how a JSON schema is sent,
    "json_schema" or "json_object" (`response_format`), or "grammar": the GBNF built here from it,
    for llama-server, whose own schema grammar lets a model open a ```json fence and pad every gap
    with up to 20 blanks (a small model spends its token budget there)."""
    body: dict[str, Any] = {
        "messages": openai_messages(messages),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max(1, options.max_tokens),
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": options.top_k,
        # llama.cpp's name; sent always because llama-cpp-python's server defaults to 1.1.
        "repeat_penalty": options.repeat_penalty,
        # Gemma 4's template thinks only when asked; llama-server would otherwise turn it on.
        "chat_template_kwargs": {"enable_thinking": bool(options.think)},
    }
    if model:
        body["model"] = model
    if options.repeat_penalty != 1.0:
        body["repetition_penalty"] = options.repeat_penalty  # vLLM's and SGLang's name
    if options.min_p > 0:
        body["min_p"] = options.min_p
    if options.seed is not None:
        body["seed"] = options.seed
    if options.json_schema is not None and not (schema_style == "grammar" and options.grammar):
        if schema_style in ("json_schema", "grammar"):
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": options.json_schema,
                                                       "strict": True}}
        else:
            body["response_format"] = {"type": "json_object", "schema": options.json_schema}
    elif options.grammar:
        body["grammar"] = options.grammar  # llama.cpp's extension; other servers ignore it
    if options.tools:
        body["tools"] = options.tools
        body["tool_choice"] = options.tool_choice
    return body


class ThoughtFilter:
    """Splits streamed text at Gemma 4's `<|channel>...<channel|>` markers, for servers that pass
    the thought channel through as text: thoughts go to `on_thought`, the rest is returned."""

    def __init__(self, on_thought: Callable[[str], None] | None) -> None:
        self.on_thought = on_thought
        self.inside = False
        self.buf = ""

    def _emit(self, text: str, out: list[str]) -> None:
        if not text:
            return
        if self.inside:
            if self.on_thought:
                self.on_thought(text)
        else:
            out.append(text)

    def feed(self, text: str) -> str:
        out: list[str] = []
        self.buf += text
        while True:
            marker = _THOUGHT_CLOSE if self.inside else _THOUGHT_OPEN
            i = self.buf.find(marker)
            if i >= 0:
                self._emit(self.buf[:i], out)
                self.buf = self.buf[i + len(marker):]
                self.inside = not self.inside
                continue
            keep = next((k for k in range(min(len(marker) - 1, len(self.buf)), 0, -1)
                         if marker.startswith(self.buf[-k:])), 0)
            self._emit(self.buf[: len(self.buf) - keep], out)
            self.buf = self.buf[len(self.buf) - keep:]
            return "".join(out)

    def flush(self) -> str:
        out: list[str] = []
        self._emit(self.buf, out)
        self.buf = ""
        return "".join(out)


def _error_message(raw: bytes) -> str:
    """The human part of an error body: OpenAI-style {"error": {"message"}}, FastAPI's {"detail"},
    or the text itself."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:500] or "(empty answer)"
    err = data.get("error", data.get("detail", data.get("message"))) if isinstance(data, dict) else None
    if isinstance(err, dict):
        err = err.get("message", err)
    if isinstance(err, list):  # FastAPI's validation errors: [{"loc": [...], "msg": ...}, ...]
        items = []
        for e in err:
            if isinstance(e, dict):
                where = ".".join(str(x) for x in e.get("loc", []))
                items.append(f"{e.get('msg', e)}" + (f" (at {where})" if where else ""))
            else:
                items.append(str(e))
        err = "; ".join(items)
    return " ".join(str(err if err is not None else text).split())[:500]


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: use our own backoff


# --- the shapes of what servers answer ---------------------------------------------------------------
# Every JSON the client reads (the model list, /props, streamed chunks, a non-streamed answer, usage)
# passes through the parsers below and nothing else: a wrong type where the OpenAI format has a known
# one is a `_Malformed`, which the engine turns into a one-line ServerError naming the server. Fields
# that are extensions (a context size, llama.cpp's timings) are read when they are numbers and
# otherwise ignored.
class _Malformed(Exception):
    """An answer of the wrong shape; the message says where (`choices[0].delta is a string ...`)."""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _want(value: Any, types: type | tuple[type, ...], where: str, what: str) -> Any:
    if not isinstance(value, types):
        raise _Malformed(f"{where} is {_kind(value)}, not {what}")
    return value


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    return "" if value is None else str(_want(value, str, f"{where}.{key}", "a string"))


def _number(obj: Any, key: str) -> float | None:
    """An optional count or duration: a non-negative number, or None (absent, null, or not a number)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


@dataclass
class _ToolDelta:
    """One streamed piece of a tool call (OpenAI `tool_calls[]`): pieces with the same index add up."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class _Choice:
    text: str = ""
    reasoning: str = ""
    finish: str = ""
    tool_calls: list[_ToolDelta] = field(default_factory=list)


@dataclass
class _Usage:
    prompt: int | None = None
    completion: int | None = None
    cached: int | None = None


@dataclass
class _Chunk:
    """One streamed event, or the whole of a non-streamed answer."""

    error: str | None = None
    choices: list[_Choice] = field(default_factory=list)
    usage: _Usage | None = None
    timings: dict[str, float] | None = None  # llama-server's: prompt_n, prompt_ms, predicted_n, ...

    @property
    def progress(self) -> bool:
        """Does this event move the answer on (text, thoughts or its end), unlike a role-only delta?"""
        return any(c.text or c.reasoning or c.finish or c.tool_calls for c in self.choices)


def _count(obj: dict[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise _Malformed(f"{where}.{key} is {_kind(value)}, not a token count")
    return int(value)


def parse_usage(value: Any) -> _Usage | None:
    if value is None:
        return None
    _want(value, dict, "usage", "an object")
    details = value.get("prompt_tokens_details")
    if details is not None:
        _want(details, dict, "usage.prompt_tokens_details", "an object")
    return _Usage(prompt=_count(value, "prompt_tokens", "usage"),
                  completion=_count(value, "completion_tokens", "usage"),
                  cached=_count(details, "cached_tokens", "usage.prompt_tokens_details") if details else None)


def parse_chunk(obj: Any) -> _Chunk:
    """A chat completion (chunk): {"choices": [{"delta" or "message": {...}, "finish_reason"}], "usage"}."""
    _want(obj, dict, "the answer", "a JSON object")
    if obj.get("error") is not None:
        return _Chunk(error=_error_message(json.dumps(obj).encode()))
    choices = obj.get("choices")
    chunk = _Chunk(usage=parse_usage(obj.get("usage")))
    if isinstance(obj.get("timings"), dict):
        chunk.timings = {k: float(v) for k, v in obj["timings"].items()
                         if isinstance(v, int | float) and not isinstance(v, bool)}
    for i, choice in enumerate(_want(choices, list, "choices", "a list") if choices is not None else []):
        where = f"choices[{i}]"
        _want(choice, dict, where, "an object")
        key = "delta" if choice.get("delta") is not None else "message"
        delta = choice.get(key)
        if delta is None:
            delta = {}
        _want(delta, dict, f"{where}.{key}", "an object")
        where = f"{where}.{key}"
        reasoning = _opt_str(delta, "reasoning_content", where) or _opt_str(delta, "reasoning", where)
        finish = choice.get("finish_reason")
        if finish is not None:
            _want(finish, str, f"choices[{i}].finish_reason", "a string")
        chunk.choices.append(_Choice(text=_opt_str(delta, "content", where), reasoning=reasoning,
                                     finish=finish or "", tool_calls=_parse_tool_calls(delta, where)))
    return chunk


def _parse_tool_calls(delta: dict[str, Any], where: str) -> list[_ToolDelta]:
    """`tool_calls` of a delta (pieces, `index` required) or of a whole message (`index` optional)."""
    calls = delta.get("tool_calls")
    if calls is None:
        return []
    out = []
    for j, call in enumerate(_want(calls, list, f"{where}.tool_calls", "a list")):
        at = f"{where}.tool_calls[{j}]"
        _want(call, dict, at, "an object")
        index = call.get("index", j)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise _Malformed(f"{at}.index is {_kind(index)}, not a position")
        function = call.get("function")
        if function is None:
            function = {}
        _want(function, dict, f"{at}.function", "an object")
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # some servers send the object itself
            arguments = json.dumps(arguments)
        elif arguments is not None:
            _want(arguments, str, f"{at}.function.arguments", "a string")
        out.append(_ToolDelta(index, _opt_str(call, "id", at), _opt_str(function, "name", f"{at}.function"),
                              arguments or ""))
    return out


def tool_calls_of(pieces: list[_ToolDelta]) -> list[ToolCall]:
    """The calls that streamed pieces add up to, in index order; arguments that are not a JSON
    object make a call with `error` set (told to the model, never run)."""
    merged: dict[int, _ToolDelta] = {}
    for p in pieces:
        acc = merged.setdefault(p.index, _ToolDelta(p.index))
        acc.id = acc.id or p.id
        acc.name += p.name
        acc.arguments += p.arguments
    calls = []
    for acc in (merged[i] for i in sorted(merged)):
        try:
            args = json.loads(acc.arguments) if acc.arguments.strip() else {}
        except ValueError as exc:
            calls.append(ToolCall(acc.name, id=acc.id, error=f"its arguments are not JSON: {exc}",
                                  raw=acc.arguments))
            continue
        if not isinstance(args, dict):
            calls.append(ToolCall(acc.name, id=acc.id, error=f"its arguments are {_kind(args)}, not an object",
                                  raw=acc.arguments))
            continue
        calls.append(ToolCall(acc.name, args, id=acc.id))
    return calls


@dataclass
class _Model:
    id: str
    n_ctx: int = 0  # the context one request may use, where the server says
    llama_cpp: bool = False  # llama-server's listing: /props has the context


def parse_models(obj: Any) -> list[_Model]:
    """GET /v1/models: {"data": [{"id": ..., ...}, ...]}. vLLM says max_model_len, SGLang
    context_length, llama-server builds that have it meta.n_ctx (others only /props)."""
    _want(obj, dict, "the model list", "a JSON object")
    data = obj.get("data")
    if data is None:
        return []
    models = []
    for i, entry in enumerate(_want(data, list, "the model list's data", "a list")):
        _want(entry, dict, f"data[{i}]", "an object")
        ident = _want(entry.get("id"), str, f"data[{i}].id", "a string")
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        n_ctx = next((int(v) for v in (_number(entry, "max_model_len"), _number(entry, "context_length"),
                                       _number(meta, "n_ctx")) if v), 0)
        models.append(_Model(ident, n_ctx, llama_cpp=entry.get("owned_by") == "llamacpp" or bool(meta)))
    return models


def parse_props_n_ctx(obj: Any) -> int:
    """llama-server's GET /props: the context of one slot, default_generation_settings.n_ctx (0: not said)."""
    if not isinstance(obj, dict):
        return 0
    value = _number(obj.get("default_generation_settings"), "n_ctx") or _number(obj, "n_ctx")
    return int(value or 0)


@dataclass
class _StreamState:
    last_progress: float  # perf_counter() of the last event that moved the answer on
    done: bool = False  # the stream reached its end ([DONE], or a whole non-streamed body)
    finished: bool = False  # a finish_reason arrived: what may follow is only usage and [DONE]


@dataclass
class _Answer:
    """One streamed reply as it arrives."""

    conn: http.client.HTTPConnection
    resp: http.client.HTTPResponse
    t_sent: float
    sock: Any = None  # the socket under `resp` (http.client lets go of it once a reply will close)


class RemoteEngine:
    """Talks to one OpenAI-compatible server. Thread-safe; each request opens its own connection."""

    templated = True  # the server applies the model's chat template

    def __init__(self, config: RemoteConfig, *, n_ctx: int = 0) -> None:
        self.config = config
        self.scheme, self.host, self.port, self.prefix = base_url(config.url)
        self.url = f"{self.scheme}://{self.host}:{self.port}{self.prefix}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._totals = [0, 0]  # prompt tokens evaluated, tokens generated
        self._schema_style = "json_schema"
        self._slots = threading.BoundedSemaphore(config.max_concurrency) if config.max_concurrency > 0 else None
        self.model = config.model
        self.server_n_ctx = 0
        self._probe()
        self.n_ctx = config.n_ctx or self.server_n_ctx or n_ctx or 0

    # --- per-thread stats -----------------------------------------------------------------------
    @property
    def stats(self) -> EngineStats:
        stats = getattr(self._local, "stats", None)
        if stats is None:
            stats = self._local.stats = EngineStats()
        return stats

    # --- HTTP -------------------------------------------------------------------------------------
    def _log(self, message: str) -> None:
        if self.config.log is not None:
            self.config.log(message)

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.config.connect_timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.config.connect_timeout)
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(self.config.timeout)
        return conn

    def _headers(self, stream: bool) -> dict[str, str]:
        from gemmapipe import __version__

        headers = {"Content-Type": "application/json", "User-Agent": f"gemmapipe/{__version__}",
                   "Accept": "text/event-stream" if stream else "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _unreachable(self, exc: BaseException) -> ServerError:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no connection within {self.config.connect_timeout:g} s"
        return ServerError(f"server {self.url}", f"cannot connect: {reason}",
                           "is the server running and listening there? ({server}, {server_env})",
                           batch_fatal=True)

    def _send(self, method: str, path: str, payload: dict[str, Any] | None, *, stream: bool,
              media: set[str] | frozenset[str] = frozenset()) -> _Answer:
        """Send one request, retrying what may pass (no connection, 429, 5xx) with backoff; return
        the open response once the server answers 200."""
        body = json.dumps(payload, ensure_ascii=False).encode() if payload is not None else None
        attempt = 0
        # No single wait is longer than the timeout the user allowed (nor than a minute): a server
        # asking for an hour (Retry-After: 3600) is told so on stderr and asked again sooner.
        longest = min(_MAX_DELAY_S, self.config.timeout)
        while True:
            delay = min(longest, self.config.backoff_s * (2 ** attempt) * (1 + 0.1 * random.random()))
            try:
                conn = self._connect()
            except (ConnectionError, TimeoutError) as exc:
                if attempt < self.config.retries:
                    self._log(f"server {self.url}: {exc}; retrying in {delay:.1f} s")
                    time.sleep(delay)
                    attempt += 1
                    continue
                raise self._unreachable(exc) from None
            except OSError as exc:  # name resolution, no route, TLS: not worth retrying
                raise self._unreachable(exc) from None
            sock, t_sent = conn.sock, time.perf_counter()
            try:
                conn.request(method, self.prefix + path, body=body, headers=self._headers(stream))
                resp = conn.getresponse()
            except TimeoutError:
                conn.close()
                raise ServerError(f"server {self.url}", f"no answer within {self.config.timeout:g} s",
                                  "the server may be overloaded; raise {timeout}") from None
            except (ConnectionError, http.client.HTTPException) as exc:
                conn.close()
                if attempt < self.config.retries:
                    self._log(f"server {self.url}: {exc or type(exc).__name__}; retrying in {delay:.1f} s")
                    time.sleep(delay)
                    attempt += 1
                    continue
                raise ServerError(f"server {self.url}", f"connection lost: {exc or type(exc).__name__}",
                                  batch_fatal=True) from None
            if resp.status == 200:
                return _Answer(conn, resp, t_sent, sock)
            try:
                raw = resp.read(1 << 16)
            except (OSError, http.client.HTTPException):
                raw = b""
            conn.close()
            message = _error_message(raw)
            refusal = bool(media) and bool(_REFUSAL.search(message))
            # What the server says is wrong with the request itself will not pass on a retry, even
            # under a 500 (llama-cpp-python's server answers its validation errors that way).
            invalid = bool(_INVALID.search(message))
            if resp.status in _RETRY_STATUS and not (refusal or invalid) and attempt < self.config.retries:
                asked = _retry_after(resp.getheader("Retry-After"))
                wait = min(longest, asked) if asked is not None else delay
                note = (f"; it asks for {asked:g} s (Retry-After), more than the longest wait allowed"
                        f" ({longest:g} s, the timeout or a minute)" if asked is not None and asked > longest else "")
                self._log(f"server {self.url}: HTTP {resp.status} ({message}){note}; retrying in {wait:.1f} s")
                time.sleep(wait)
                attempt += 1
                continue
            raise self._http_error(resp.status, message, path, media, refusal)

    def _http_error(self, status: int, message: str, path: str, media: set[str] | frozenset[str],
                    refusal: bool) -> GemmapipeError:
        subject = f"server {self.url}"
        if refusal:
            kinds = " and ".join(sorted(media))
            return ServerError(subject, f"refused {kinds} input: {message}",
                               "serve Gemma 4 with its projector (llama-server --mmproj mmproj-...gguf), "
                               "or run without {server}", batch_fatal=True)
        if status in (401, 403):
            return ServerError(subject, f"HTTP {status}: {message}", "check {api_key} ({api_key_env})",
                               batch_fatal=True)
        if status == 404 and path.endswith("/chat/completions"):
            return ServerError(subject, f"HTTP 404 on {self.prefix}{path}: {message}",
                               "{server} takes the base URL of an OpenAI-compatible server, "
                               "e.g. http://127.0.0.1:8080", batch_fatal=True)
        if re.search(r"context|too long|exceed", message, re.I) and status == 400:
            return ServerError(subject, f"the request does not fit the server's context: {message}",
                               "shorten the input, or start the server with a larger context")
        return ServerError(subject, f"HTTP {status}: {message}")

    # --- model facts --------------------------------------------------------------------------------
    def _malformed(self, what: str, exc: _Malformed | str) -> ServerError:
        return MalformedAnswer(f"server {self.url}", f"malformed {what}: {exc}")

    def _get_json(self, path: str, what: str) -> Any:
        """GET a JSON document; ServerError if the server fails or the body is not JSON."""
        ans = self._send("GET", path, None, stream=False)
        try:
            raw = ans.resp.read(1 << 22)
        except TimeoutError:
            raise ServerError(f"server {self.url}", f"no answer within {self.config.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ServerError(f"server {self.url}", f"connection lost: {exc or type(exc).__name__}") from None
        finally:
            ans.conn.close()
        try:
            return json.loads(raw)
        except ValueError:
            raise self._malformed(what, f"not JSON: {_error_message(raw)[:200]}") from None

    def _probe(self) -> None:
        """GET /v1/models: is anybody there, which model, how much context (vLLM's max_model_len,
        SGLang's context_length, llama-server's meta.n_ctx or else its /props). A server without
        the listing is fine; an unreachable one, or a listing of the wrong shape, is an error right away."""
        try:
            data = self._get_json("/v1/models", "model list")
        except ServerError as exc:
            if exc.batch_fatal or isinstance(exc, MalformedAnswer):  # unreachable, refused key, not a server
                raise
            return  # no listing here: send requests without a model name
        try:
            models = parse_models(data)
        except _Malformed as exc:
            raise self._malformed("model list", exc) from None
        if not models:
            return
        if any(m.llama_cpp for m in models):
            self._schema_style = "grammar"  # llama-server: our GBNF, not its own schema grammar (request_body)
        chosen = next((m for m in models if m.id == self.model), None)
        if chosen is None and self.model is None:
            chosen = models[0]
            self.model = chosen.id or None
        elif chosen is None:
            # A single-model llama-server answers to any name, so a typo would pass unnoticed.
            listed = ", ".join(repr(m.id) for m in models[:8]) + (", ..." if len(models) > 8 else "")
            self._log(f"server {self.url} does not list model {self.model!r} (it lists {listed}); "
                      "sending the name anyway")
        if chosen is not None:
            self.server_n_ctx = chosen.n_ctx
            if not self.server_n_ctx and chosen.llama_cpp:
                try:
                    self.server_n_ctx = parse_props_n_ctx(self._get_json("/props", "/props"))
                except ServerError:
                    pass  # an older server, or /props turned off: the context stays unknown

    # --- Engine protocol ------------------------------------------------------------------------------
    def count_tokens(self, messages: list[Message], options: GenerateOptions) -> TokenCount:
        """An estimate (no server counts media for us): text ~4 characters a token, an image as
        gemma4uv counts it once the server has scaled it into SERVER_IMAGE_TOKENS, audio 25 tokens
        a second, as the Gemma 4 projectors do."""
        from ..media.audio import windows_for
        from ..media.geometry import mtmd_size, tokens_for

        lo, hi = SERVER_IMAGE_TOKENS

        per: list[tuple[str, int]] = []
        for m in messages:
            for p in m.parts:
                if isinstance(p, Text):
                    per.append(("text", (len(p.text) + 3) // 4))
                elif isinstance(p, Image):
                    h, w = p.pixels.shape[:2]
                    per.append(("image", max(1, tokens_for(*mtmd_size(w, h, min_tokens=lo, max_tokens=hi)))))
                elif isinstance(p, Audio):
                    per.append(("audio", windows_for(p.samples.size)))
                elif isinstance(p, ToolCall | ToolResult):  # what the template writes around them
                    per.append(("text", 8 + len(json.dumps(p.arguments if isinstance(p, ToolCall) else p.content,
                                                           default=str)) // 4))
        return TokenCount(sum(n for _, n in per) + 8 * len(messages), per)

    def generate(self, messages: list[Message], options: GenerateOptions) -> Iterator[str]:
        """Send the request now (errors surface here, as the local engine's prefill errors do) and
        return the answer's stream."""
        media = media_kinds(messages)
        stats = self.stats
        stats.prompt_tokens = stats.prompt_evaluated = stats.generated = 0
        stats.prefill_s = stats.decode_s = 0.0
        stats.stop_reason = ""
        if self._slots is not None:
            self._slots.acquire()  # released when the answer's stream ends
        try:
            style = self._schema_style
            try:
                ans = self._send("POST", "/v1/chat/completions",
                                 request_body(messages, options, model=self.model, schema_style=style),
                                 stream=True, media=media)
            except ServerError as exc:
                # llama-cpp-python's server knows only {"type": "json_object", "schema": ...}.
                if options.json_schema is None or style != "json_schema" or "response_format" not in exc.reason:
                    raise
                self._schema_style = "json_object"
                ans = self._send("POST", "/v1/chat/completions",
                                 request_body(messages, options, model=self.model, schema_style="json_object"),
                                 stream=True, media=media)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        return self._stream(ans, messages, options)

    def _events(self, ans: _Answer, state: _StreamState) -> Iterator[_Chunk]:
        """The chunks of the SSE stream (or the one chunk of a non-streamed answer), shape-checked.
        `state.done` tells whether the stream reached its end ([DONE]) rather than just closing;
        the timeout runs from the last event that moved the answer on, so keep-alive comments
        (": ping") and role-only deltas do not hold the client past it."""
        ctype = (ans.resp.getheader("Content-Type") or "").lower()
        timeout = self.config.timeout

        def wait_for_more() -> None:
            left = state.last_progress + timeout - time.perf_counter()
            if left <= 0:
                raise TimeoutError
            if ans.sock is not None:
                ans.sock.settimeout(left)

        def parse(obj: Any) -> _Chunk:
            try:
                chunk = parse_chunk(obj)
            except _Malformed as exc:
                raise self._malformed("answer", exc) from None
            if chunk.progress:
                state.last_progress = time.perf_counter()
            state.finished = state.finished or any(c.finish for c in chunk.choices)
            return chunk

        if "text/event-stream" not in ctype:
            wait_for_more()
            raw = ans.resp.read()
            try:
                obj = json.loads(raw)
            except ValueError:
                raise self._malformed("answer", f"not a chat completion: {_error_message(raw)[:200]}") from None
            state.done = True  # the whole body arrived (http.client checks its length)
            yield parse(obj)
            return
        data: list[str] = []
        while True:
            wait_for_more()
            try:
                raw_line = ans.resp.readline()
            except (ConnectionError, http.client.HTTPException):
                if state.finished:  # the answer is whole; only its usage (or [DONE]) was lost
                    break
                raise
            if not raw_line:
                break
            line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
                continue
            if line or not data:
                continue  # comments (": ping"), event names, ids, blank keep-alives
            payload, data = "\n".join(data), []
            if payload.strip() == "[DONE]":
                state.done = True
                return
            try:
                obj = json.loads(payload)
            except ValueError:
                raise self._malformed("answer", f"bad event in the stream: {payload[:200]}") from None
            yield parse(obj)
        if data and data[-1].strip() == "[DONE]":
            state.done = True
        elif data:  # a last event without its blank line
            try:
                obj = json.loads("\n".join(data))
            except ValueError:
                return  # cut off: the stream did not end
            yield parse(obj)

    def _stream(self, ans: _Answer, messages: list[Message], options: GenerateOptions) -> Iterator[str]:
        stats = self.stats
        thoughts = ThoughtFilter(options.on_thought)
        state = _StreamState(last_progress=ans.t_sent)
        t_first: float | None = None
        chunks = 0
        usage = _Usage()
        timings: dict[str, float] = {}
        finish = ""
        subject = f"server {self.url}"
        tool_pieces: list[_ToolDelta] = []
        try:
            for chunk in self._events(ans, state):
                if chunk.error is not None:
                    raise ServerError(subject, f"error in the middle of an answer: {chunk.error}")
                if chunk.usage is not None:
                    usage = chunk.usage
                if chunk.timings is not None:
                    timings = chunk.timings
                for choice in chunk.choices:
                    if choice.reasoning and options.on_thought:
                        options.on_thought(choice.reasoning)
                    tool_pieces += choice.tool_calls
                    if choice.reasoning or choice.text or choice.tool_calls:
                        chunks += 1
                        if t_first is None:
                            t_first = time.perf_counter()
                    if choice.text:
                        visible = thoughts.feed(choice.text)
                        if visible:
                            yield visible
                    if choice.finish:
                        finish = choice.finish
            if not (state.done or finish):
                # Closed before [DONE] and without a finish_reason: a server that died or a proxy
                # that cut the stream. What arrived may be any prefix of the answer.
                raise ServerError(subject, "the answer was cut off: the stream closed before its end "
                                  "(no finish_reason, no [DONE])")
            tail = thoughts.flush()
            if tail:
                yield tail
            if tool_pieces and options.on_tool_call is not None:
                for call in tool_calls_of(tool_pieces):
                    options.on_tool_call(call)
        except TimeoutError:
            if t_first is None:
                raise ServerError(subject, f"no answer within {self.config.timeout:g} s",
                                  "the server may be overloaded; raise {timeout}") from None
            raise ServerError(subject, f"no progress for {self.config.timeout:g} s in the middle of an answer",
                              "raise {timeout}") from None
        except (ConnectionError, http.client.HTTPException) as exc:
            raise ServerError(subject,
                              f"connection lost in the middle of an answer: {exc or type(exc).__name__}") from None
        finally:
            ans.conn.close()
            ans.resp.close()
            if self._slots is not None:
                self._slots.release()
            t_end = time.perf_counter()
            self._fill_stats(stats, messages, options, usage, timings, finish, chunks,
                             ans.t_sent, t_first or t_end, t_end)

    def _fill_stats(self, stats: EngineStats, messages: list[Message], options: GenerateOptions,
                    usage: _Usage, timings: dict[str, float], finish: str, chunks: int,
                    t_sent: float, t_first: float, t_end: float) -> None:
        def num(key: str) -> int | None:
            v = timings.get(key)
            return int(v) if v is not None else None

        prompt = usage.prompt
        if prompt is None:
            prompt = self.count_tokens(messages, options).total
        cached = usage.cached if usage.cached is not None else num("cache_n")
        evaluated = num("prompt_n")
        if evaluated is None:
            evaluated = max(0, prompt - (cached or 0))
        generated = usage.completion
        if generated is None:
            generated = num("predicted_n")
        if generated is None:
            generated = chunks
        stats.prompt_tokens = prompt
        stats.prompt_evaluated = evaluated
        stats.generated = generated
        prompt_ms, predicted_ms = timings.get("prompt_ms"), timings.get("predicted_ms")
        stats.prefill_s = prompt_ms / 1000 if prompt_ms is not None else t_first - t_sent
        stats.decode_s = predicted_ms / 1000 if predicted_ms is not None else t_end - t_first
        stats.stop_reason = {"stop": "eog", "length": "length", "": "eog" if chunks else ""}.get(finish, finish)
        with self._lock:
            self._totals[0] += evaluated
            self._totals[1] += generated
            stats.total_prompt_evaluated, stats.total_generated = self._totals

    def describe(self) -> EngineInfo:
        return EngineInfo(model=self.model or "(server default)", server=self.url, mmproj=None, n_ctx=self.n_ctx)

    def close(self) -> None:
        pass  # every request closes its own connection

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["MalformedAnswer", "RemoteConfig", "RemoteEngine", "ServerError", "base_url", "openai_messages",
           "request_body", "wav_bytes"]
