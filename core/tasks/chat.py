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
                     warn: Callable[[str], None] | None = None) -> list[Part]:
    """Decode an attachment (image, audio or video; a path or -) into engine parts; `warn` gets what
    was worth a word but did not stop it (NaN samples replaced, a dropped audio track...)."""
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
        from .video import VideoOptions, build_timeline, unit_parts

        return unit_parts(build_timeline(src, VideoOptions(frame_tokens=frame_tokens)).units)


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
    attachments: list[list[str]] = field(default_factory=list)  # per user turn, for saving
    tools: Toolbox | None = None  # tools the model may call in every turn (see run_tools)
    warn: Callable[[str], None] | None = None  # what was worth a word but did not stop a turn

    def conversation(self) -> list[Message]:
        head = [Message("system", [Text(self.system)])] if self.system else []
        return head + self.messages

    def ask(self, engine: Engine, prompt: str, parts: list[Part], options: GenerateOptions,
            attachment_specs: list[str] | None = None) -> Iterator[str]:
        """Stream the answer; the turn is recorded once the stream is exhausted. With `tools`, the
        model's calls are run and their results given back to it until it answers without calling
        (see run_tools); the text of every step streams out in order."""
        n_before = len(self.messages)
        self.messages.append(Message("user", [*parts, Text(prompt)]))
        self.attachments.append(list(attachment_specs or []))
        try:
            if self.tools is not None and self.tools.tools:
                yield from run_tools(engine, self.conversation, self.messages, options, self.tools, warn=self.warn)
                return
            pieces: list[str] = []
            for piece in engine.generate(self.conversation(), options):
                pieces.append(piece)
                yield piece
        except BaseException:
            del self.messages[n_before:]
            self.attachments.pop()
            raise
        self.messages.append(Message("assistant", [Text("".join(pieces))]))

    def reset(self) -> None:
        self.messages.clear()
        self.attachments.clear()

    # --- persistence (--continue / --session / /save) ---------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """User turns and answers. The tool calls of a turn and their results are not kept: the
        texts of its steps are one answer."""
        turns: list[dict[str, Any]] = []
        user_i = 0
        for m in self.messages:
            if m.role == "tool":
                continue
            text = m.text
            if m.role == "assistant" and turns and turns[-1]["role"] == "assistant":
                turns[-1]["text"] += text
                continue
            turn: dict[str, Any] = {"role": m.role, "text": text}
            if m.role == "user":
                turn["attachments"] = self.attachments[user_i] if user_i < len(self.attachments) else []
                user_i += 1
            turns.append(turn)
        return {"system": self.system, "turns": turns}

    def save(self, path: Path, *, make_dirs: bool = False) -> None:
        """Write the conversation atomically (a temporary file renamed into place). `make_dirs`: create
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
        tmp = path.with_name(path.name + ".part")
        try:
            tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
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

    @classmethod
    def load(cls, path: Path, **attach_kw: Any) -> ChatSession:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except UnicodeDecodeError:
            raise UsageError(f"session {path}", "cannot read: not UTF-8 text") from None
        except OSError as exc:
            raise UsageError(f"session {path}", f"cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError(f"session {path}", f"not valid JSON: {exc}") from None
        turns = _session_turns(data)
        if turns is None:
            raise UsageError(f"session {path}", "not a gemmapipe session",
                             'expected {"system": ..., "turns": [{"role": "user" or "assistant", "text": ...}]}')
        session = cls(system=data.get("system"))
        for turn in turns:
            if turn["role"] == "user":
                specs = [s for s in turn.get("attachments", []) if s != "-"]
                parts: list[Part] = []
                for spec in specs:
                    parts += attachment_parts(spec, **attach_kw)
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
