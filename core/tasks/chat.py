"""chat: a conversation with attachments. The engine keeps the KV cache between turns, so each
turn evaluates only what is new (the previous answer is rendered back exactly as generated)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..audio_format import SAMPLE_RATE
from ..engine.base import Engine, GenerateOptions
from ..engine.parts import Audio, Image, Message, Part, Text, ToolCall
from ..errors import BadInput, GemmapipeError, UsageError
from ..tools import Toolbox, error_result

MAX_AUDIO_S = 30


def attachment_parts(spec: str, *, image_tokens: int = 280, frame_tokens: int = 70,
                     warn: Callable[[str], None] | None = None, name: str | None = None) -> list[Part]:
    """Decode an attachment (image, audio or video; a path or -) into engine parts; `warn` gets what
    was worth a word but did not stop it (NaN samples replaced, a dropped audio track...). `name`:
    what to call it in messages when `spec` is a copy (stdin or a URL fetched to a spool)."""
    if name is not None and name != spec:
        try:
            return attachment_parts(spec, image_tokens=image_tokens, frame_tokens=frame_tokens,
                                    warn=(lambda m: warn(m.replace(spec, name))) if warn else None)
        except GemmapipeError as exc:
            exc.subject = exc.subject.replace(spec, name)
            raise
    from ..media.source import open_input

    with open_input(spec, warn=warn) as src:
        if src.kind == "image":
            from ..media.image import load_image

            return [Image(load_image(src, max_tokens=image_tokens, min_tokens=min(70, image_tokens)))]
        if src.kind == "audio":
            from ..media.audio import read_audio

            samples = read_audio(src)
            if samples.size == 0:
                raise BadInput(src.name, "the audio is empty")
            step = MAX_AUDIO_S * SAMPLE_RATE  # the model's comfort zone per clip
            return [Audio(samples[i:i + step]) for i in range(0, samples.size, step)]
        from .video import VideoOptions, build_timeline, item_parts

        return item_parts(build_timeline(src, VideoOptions(frame_tokens=frame_tokens)).items)


FETCH_TIMEOUT_S = 30.0
_CHUNK = 1 << 16


@dataclass
class Attachment:
    """An attachment as the conversation keeps it: `path`, an absolute file to read it from (the file
    given, or a copy of stdin or of a URL's content), `name` for messages, and `owned` when the
    content exists only in that copy, so a saved session keeps the bytes beside itself."""

    path: str
    name: str
    owned: bool = False


def is_url(spec: str) -> bool:
    return spec.lower().startswith(("http://", "https://"))


def materialize(spec: str, *, stdin: Any = None, timeout: float = FETCH_TIMEOUT_S) -> Attachment:
    """Turn an attachment as given into a file: a path becomes absolute; `-` (standard input) and an
    http(s) URL are copied to a spool (capped at the spool limit, removed at exit). BadInput (exit 3)
    for a URL that cannot be fetched or stdin that is closed."""
    if spec == "-":
        import sys

        pipe = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
        if pipe is None or getattr(pipe, "closed", False):
            raise BadInput("<stdin>", "standard input is closed")
        return Attachment(_spool(pipe, "<stdin>"), "<stdin>", owned=True)
    if is_url(spec):
        return Attachment(fetch_url(spec, timeout=timeout), spec, owned=True)
    return Attachment(os.path.abspath(os.path.expanduser(spec)), spec)


def _spool(stream: Any, name: str, *, declared: int | None = None) -> str:
    from ..media.source import _SpoolFile, format_size

    spool = _SpoolFile(name)
    try:
        if declared is not None and declared > spool.limit:
            raise BadInput(name, f"is {format_size(declared)}, larger than the {format_size(spool.limit)} "
                                 "spool limit", "save it to a file and pass its path, or raise {spool_max_env}")
        while True:
            data = stream.read(_CHUNK)
            if not data:
                break
            spool.write(data)
    except BaseException:
        spool.remove()
        raise
    spool.close()
    return spool.path


def fetch_url(url: str, *, timeout: float = FETCH_TIMEOUT_S) -> str:
    """Download `url` into a spool (as `llm` fetches attachments): at most the spool limit, `timeout`
    seconds without data; the spool's path. BadInput naming the URL when it fails."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "gemmapipe"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            declared = int(length) if length and length.isdigit() else None
            return _spool(response, url, declared=declared)
    except urllib.error.HTTPError as exc:
        raise BadInput(url, f"cannot fetch: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        raise BadInput(url, f"cannot fetch: {getattr(reason, 'strerror', None) or reason}") from None
    except TimeoutError:
        raise BadInput(url, f"cannot fetch: no data for {timeout:g} s") from None
    except OSError as exc:
        raise BadInput(url, f"cannot fetch: {exc.strerror or exc}") from None


def n_ctx_for(parts: list[Part], options: GenerateOptions, tools: Toolbox | None = None) -> int:
    """The context a chat turn asks for: its media, the answer, and room for the conversation
    (with tools: their declarations, and a step of calls and results for each of the chain)."""
    from ..context import context_for

    room = 1024
    if tools is not None and tools.tools:
        room += len(json.dumps(tools.declarations())) // 2 + 512 * min(tools.chain_limit or 8, 8)
    return context_for(media_tokens(parts) + options.max_tokens + room + 1, 4096)


@dataclass
class ChatSession:
    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    attachments: list[list[str]] = field(default_factory=list)  # per user turn: absolute paths, for saving
    owned: set[str] = field(default_factory=set)  # attachment files whose bytes a saved session keeps
    tools: Toolbox | None = None  # tools the model may call in every turn (see run_tools)
    warn: Callable[[str], None] | None = None  # what was worth a word but did not stop a turn

    def conversation(self) -> list[Message]:
        head = [Message("system", [Text(self.system)])] if self.system else []
        return head + self.messages

    def ask(self, engine: Engine, prompt: str, parts: list[Part], options: GenerateOptions,
            attachments: list[str] | list[Attachment] | None = None) -> Iterator[str]:
        """Stream the answer; the turn is recorded once the stream is exhausted.

        Interrupted (KeyboardInterrupt, or the stream closed early) after some text: the turn is kept
        with the part that was generated, which is also what the engine's KV cache holds; before any
        text, or on an error: the turn is dropped. With a JSON schema (`options.json_schema`) an
        answer that is not valid JSON (cut off by `max_tokens`) is an error and is not kept."""
        specs = [a.path if isinstance(a, Attachment) else a for a in attachments or []]
        self.owned |= {a.path for a in attachments or [] if isinstance(a, Attachment) and a.owned}
        n_before = len(self.messages)
        self.messages.append(Message("user", [*parts, Text(prompt)]))
        self.attachments.append(specs)
        if self.tools is not None and self.tools.tools:
            # The model's calls are run and their results given back until it answers without
            # calling (run_tools); the text of every step streams out in order.
            try:
                yield from run_tools(engine, self.conversation, self.messages, options, self.tools, warn=self.warn)
            except BaseException:
                del self.messages[n_before:]
                self.attachments.pop()
                raise
            return
        pieces: list[str] = []
        stream = engine.generate(self.conversation(), options)
        try:
            for piece in stream:
                pieces.append(piece)
                yield piece
            if options.json_schema is not None:
                from ..engine.grammar import parse_json_output

                parse_json_output("".join(pieces).strip())
        except (KeyboardInterrupt, GeneratorExit):
            _close(stream)
            if pieces:
                self.messages.append(Message("assistant", [Text("".join(pieces))]))
            else:
                self._drop_turn()
            raise
        except BaseException:
            _close(stream)
            self._drop_turn()
            raise
        self.messages.append(Message("assistant", [Text("".join(pieces))]))

    def _drop_turn(self) -> None:
        self.messages.pop()
        self.attachments.pop()

    def reset(self) -> None:
        self.messages.clear()
        self.attachments.clear()

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")

    # --- persistence (--continue / --session / /save) ---------------------------------------------
    def to_json(self, files: dict[str, str] | None = None) -> dict[str, Any]:
        """The conversation as plain data; `files` maps an attachment path to what the file says
        instead (the copy kept beside a saved session, relative to it)."""
        files = files or {}
        turns: list[dict[str, Any]] = []
        user_i = 0
        for m in self.messages:
            if m.role == "tool":  # a turn's tool calls and results are not kept: its texts are one answer
                continue
            text = "".join(p.text for p in m.parts if isinstance(p, Text))
            if m.role == "assistant" and turns and turns[-1]["role"] == "assistant":
                turns[-1]["text"] += text
                continue
            turn: dict[str, Any] = {"role": m.role, "text": text}
            if m.role == "user":
                specs = self.attachments[user_i] if user_i < len(self.attachments) else []
                turn["attachments"] = [files.get(a, a) for a in specs]
                user_i += 1
            turns.append(turn)
        return {"system": self.system, "turns": turns}

    def _keep_files(self, path: Path) -> dict[str, str]:
        """Copy the bytes of owned attachments (stdin, URLs) into `<stem>.files/` beside `path`, named
        by content; {attachment path: the copy's path relative to `path`'s folder}."""
        import shutil

        from ..hashing import sha256_file

        specs = {a for turn in self.attachments for a in turn if a in self.owned}
        if not specs:
            return {}
        folder = path.parent / f"{path.stem}.files"
        mapping: dict[str, str] = {}
        for spec in sorted(specs):
            try:
                name = sha256_file(Path(spec))[:16]
                target = folder / name
                if Path(spec).resolve() != target.resolve() and not target.is_file():
                    folder.mkdir(exist_ok=True)
                    tmp = folder / (name + ".part")
                    shutil.copyfile(spec, tmp)
                    tmp.replace(target)
            except OSError as exc:
                raise GemmapipeError(f"session {path}", f"cannot keep the attachment {spec}: "
                                                       f"{exc.strerror or exc}") from None
            mapping[spec] = f"{folder.name}/{name}"
        # From now on the conversation reads them from the kept copy (the spool goes at exit).
        absolute = {spec: str(path.parent.absolute() / rel) for spec, rel in mapping.items()}
        self.attachments = [[absolute.get(a, a) for a in turn] for turn in self.attachments]
        self.owned = (self.owned - set(absolute)) | set(absolute.values())
        return {absolute[spec]: rel for spec, rel in mapping.items()}

    def save(self, path: Path, *, make_dirs: bool = False) -> None:
        """Write the conversation atomically (a temporary file renamed into place), the bytes of
        attachments that came from stdin or a URL beside it in `<stem>.files/`. `make_dirs`: create
        the missing folders (the session store); otherwise the folder must exist (`/save FILE`).
        GemmapipeError (exit 1) naming the file when it cannot be written."""
        where = f"session {path}"
        if path.is_dir():
            raise GemmapipeError(where, "is a directory")
        try:
            if make_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.parent.is_dir():
                raise GemmapipeError(where, f"no such directory: {path.parent}")
        except OSError as exc:
            raise GemmapipeError(where, f"cannot create its folder: {exc.strerror or exc}") from None
        files = self._keep_files(path)
        tmp = path.with_name(path.name + ".part")
        try:
            tmp.write_text(json.dumps(self.to_json(files), ensure_ascii=False, indent=1), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise GemmapipeError(where, f"cannot write: {exc.strerror or exc}") from None

    @staticmethod
    def check_store(path: Path) -> None:
        """Before the model is asked: the session store can hold `path` (its folder is, or can be
        made, a writable directory). GemmapipeError naming the folder otherwise."""
        folder = path.parent
        existing = folder
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        if not existing.is_dir():
            raise GemmapipeError(f"session store {folder}", f"{existing} is not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise GemmapipeError(f"session store {folder}", f"{existing} is not writable")
        if path.is_dir():
            raise GemmapipeError(f"session {path}", "is a directory")

    @staticmethod
    def read(path: Path) -> dict[str, Any] | None:
        """A saved session as plain data (checked), None when there is no such file; UsageError for
        a file that is not one."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except UnicodeDecodeError:
            raise UsageError(f"session {path}", "cannot read: not UTF-8 text") from None
        except OSError as exc:
            raise UsageError(f"session {path}", f"cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError(f"session {path}", f"not valid JSON: {exc}") from None
        if _session_turns(data) is None:
            raise UsageError(f"session {path}", "not a gemmapipe session",
                             'expected {"system": ..., "turns": [{"role": "user" or "assistant", "text": ...}]}')
        return data

    @classmethod
    def load(cls, path: Path, **attach_kw: Any) -> ChatSession:
        """The session saved at `path` (a new one when there is none). Attachments are read again
        from their files: absolute paths as saved, relative ones (kept copies) beside the session file
        (or, in files written before paths were absolute, from the current folder)."""
        data = cls.read(path)
        if data is None:
            return cls()
        session = cls(system=data.get("system"))
        folder = path.parent.absolute()
        for turn in data["turns"]:
            if turn["role"] == "user":
                specs: list[str] = []
                parts: list[Part] = []
                for spec in turn.get("attachments", []):
                    if spec == "-":  # written by versions that did not keep stdin's bytes
                        continue
                    full = spec
                    if not os.path.isabs(spec):
                        beside = folder / spec
                        full = str(beside) if beside.exists() else os.path.abspath(spec)
                        if beside.exists() and beside.parent.name.endswith(".files"):
                            session.owned.add(full)
                    parts += attachment_parts(full, **attach_kw)
                    specs.append(full)
                session.messages.append(Message("user", [*parts, Text(turn["text"])]))
                session.attachments.append(specs)
            else:
                session.messages.append(Message("assistant", [Text(turn["text"])]))
        return session


def run_tools(engine: Engine, conversation: Callable[[], list[Message]], messages: list[Message],
              options: GenerateOptions, toolbox: Toolbox, *,
              warn: Callable[[str], None] | None = None) -> Iterator[str]:
    """The tool loop of one turn: generate; if the answer calls tools, run them (in order), append
    the calls and their results to `messages`, and generate again, until an answer calls nothing.
    After `toolbox.chain_limit` steps that ended in calls (0: no limit) the model's next calls are
    not run: each is answered that the limit was reached, and the model is asked once more, with
    calls not asked for (`tool_choice` "none"); calls it still makes are dropped, with a warning.
    Yields the visible text of every step as it streams."""
    limit = toolbox.chain_limit
    steps = 0
    n_calls = sum(len(m.tool_calls) for m in messages)
    final = False
    while True:
        calls: list[ToolCall] = []
        step = replace(options, tools=toolbox.declarations(), on_tool_call=calls.append,
                       tool_choice="none" if final else options.tool_choice)
        pieces: list[str] = []
        for piece in engine.generate(conversation(), step):
            pieces.append(piece)
            yield piece
        text = "".join(pieces)
        named = []
        for call in calls:
            n_calls += 1
            named.append(call if call.id else replace(call, id=f"call_{n_calls}"))
        messages.append(Message("assistant", [Text(text), *named]))
        if not named:
            return
        if final:
            # The model would not stop calling: keep its calls out of the conversation.
            messages[-1] = Message("assistant", [Text(text)])
            if warn is not None:
                warn(f"the model still asked for {len(named)} tool call(s) after {limit} steps of calls; "
                     "they were not run (raise {chain_limit})")
            return
        steps += 1
        over = limit > 0 and steps > limit
        for call in named:
            if over:
                result = error_result(call, f"not run: the limit of {limit} steps of tool calls in a row was "
                                            "reached; answer now with what you have, without calling tools")
                if toolbox.on_call is not None:
                    toolbox.on_call(call, result)
            else:
                result = toolbox.run(call)
            messages.append(Message.tool(result))
        final = over


def _close(stream: Any) -> None:
    with contextlib.suppress(Exception):
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def session_summary(path: Path) -> dict[str, Any]:
    """What a listing shows of a saved session: name, modification time, user turns, first prompt.
    A file that is not a session has `error` instead."""
    st = path.stat()
    out: dict[str, Any] = {"name": path.stem, "path": str(path), "mtime": st.st_mtime}
    try:
        data = ChatSession.read(path)
    except GemmapipeError as exc:
        return {**out, "error": exc.reason}
    turns = [t for t in (data or {}).get("turns", []) if t["role"] == "user"]
    out["turns"] = len(turns)
    out["first"] = turns[0]["text"] if turns else ""
    return out


def _session_turns(data: Any) -> list[dict[str, Any]] | None:
    """The turns of a saved session, or None when `data` is not one (what to_json writes)."""
    if not isinstance(data, dict) or not isinstance(data.get("system"), str | None):
        return None
    turns = data.get("turns")
    if not isinstance(turns, list):
        return None
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant"):
            return None
        turn.setdefault("text", "")
        if not isinstance(turn["text"], str):
            return None
        attachments = turn.get("attachments", [])
        if not isinstance(attachments, list) or not all(isinstance(a, str) for a in attachments):
            return None
    return turns


def media_tokens(parts: list[Part]) -> int:
    from ..media.audio import windows_for
    from ..media.geometry import tokens_for

    n = 0
    for p in parts:
        if isinstance(p, Image):
            n += tokens_for(p.pixels.shape[1], p.pixels.shape[0])
        elif isinstance(p, Audio):
            n += windows_for(p.samples.size)
    return n
