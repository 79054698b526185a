"""chat: a conversation with attachments. The engine keeps the KV cache between turns, so each
turn evaluates only what is new (the previous answer is rendered back exactly as generated)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.base import Engine, GenerateOptions
from ..engine.parts import Audio, Image, Message, Part, Text
from ..errors import BadInput, UsageError

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
        from .video import VideoOptions, build_timeline, unit_parts

        return unit_parts(build_timeline(src, VideoOptions(frame_tokens=frame_tokens)).units)


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

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, **attach_kw: Any) -> ChatSession:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise UsageError(f"session {path}", f"cannot read: {exc}") from None
        session = cls(system=data.get("system"))
        for turn in data.get("turns", []):
            if turn.get("role") == "user":
                specs = [s for s in turn.get("attachments", []) if s != "-"]
                parts: list[Part] = []
                for spec in specs:
                    parts += attachment_parts(spec, **attach_kw)
                session.messages.append(Message("user", [*parts, Text(turn.get("text", ""))]))
                session.attachments.append(specs)
            else:
                session.messages.append(Message("assistant", [Text(turn.get("text", ""))]))
        return session


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
