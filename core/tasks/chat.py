"""chat: a conversation with attachments. The engine keeps the KV cache between turns, so each
turn evaluates only what is new (the previous answer is rendered back exactly as generated)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.base import Engine, GenerateOptions
from ..engine.parts import Audio, Image, Message, Part, Text
from ..errors import BadInput, GemmapipeError, UsageError

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
            step = MAX_AUDIO_S * 16000  # the model's comfort zone per clip
            return [Audio(samples[i:i + step]) for i in range(0, samples.size, step)]
        from .video import VideoOptions, build_timeline, item_parts

        return item_parts(build_timeline(src, VideoOptions(frame_tokens=frame_tokens)).items)


def n_ctx_for(parts: list[Part], options: GenerateOptions) -> int:
    """The context a chat turn asks for: its media, the answer, and room for the conversation."""
    from ..context import context_for

    return context_for(media_tokens(parts) + options.max_tokens + 1024 + 1, 4096)


@dataclass
class ChatSession:
    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    attachments: list[list[str]] = field(default_factory=list)  # per user turn, for saving

    def conversation(self) -> list[Message]:
        head = [Message("system", [Text(self.system)])] if self.system else []
        return head + self.messages

    def ask(self, engine: Engine, prompt: str, parts: list[Part], options: GenerateOptions,
            attachment_specs: list[str] | None = None) -> Iterator[str]:
        """Stream the answer; the turn is recorded once the stream is exhausted."""
        self.messages.append(Message("user", [*parts, Text(prompt)]))
        self.attachments.append(list(attachment_specs or []))
        pieces: list[str] = []
        try:
            for piece in engine.generate(self.conversation(), options):
                pieces.append(piece)
                yield piece
        except BaseException:
            self.messages.pop()
            self.attachments.pop()
            raise
        self.messages.append(Message("assistant", [Text("".join(pieces))]))

    def reset(self) -> None:
        self.messages.clear()
        self.attachments.clear()

    # --- persistence (--continue / --session / /save) ---------------------------------------------
    def to_json(self) -> dict[str, Any]:
        turns = []
        user_i = 0
        for m in self.messages:
            text = "".join(p.text for p in m.parts if isinstance(p, Text))
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
