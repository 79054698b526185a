"""What an engine is fed: messages made of ordered parts. Media are numpy arrays, never files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True, eq=False)
class Image:
    """RGB uint8 pixels, shape (H, W, 3), already scaled to the size the model will see."""

    pixels: np.ndarray


@dataclass(frozen=True, eq=False)
class Audio:
    """Mono float32 samples at the projector's rate (16 kHz), in [-1, 1]."""

    samples: np.ndarray


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for, in an assistant message: the tool's name and its arguments.

    `error` is set, and `arguments` may be partial, when what the model wrote could not be read
    (malformed syntax, arguments that are not an object): the call is reported back to the model,
    never run. `raw` is what the model wrote, when the engine saw the text (the local engine)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    error: str | None = None
    raw: str = ""


@dataclass(frozen=True)
class ToolResult:
    """What a tool answered, in a message of role "tool": text (a str) or a JSON value (dict, list,
    number, bool or None). `call_id` ties it to its ToolCall (servers need it)."""

    name: str
    content: Any
    call_id: str = ""


Part = Text | Image | Audio | ToolCall | ToolResult
Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class Placeholder:
    """Where an image or audio part went in a prompt whose media already sit in the engine's KV
    cache (a restored state): rendered as the media marker, never decoded, hashed or evaluated."""

    kind: Literal["image", "audio"]


@dataclass
class CachedMessage:
    """A message for `generate_cached`: its media are placeholders for media already evaluated."""

    role: Role
    parts: list[Text | Placeholder] = field(default_factory=list)


@dataclass
class Message:
    role: Role
    parts: list[Part] = field(default_factory=list)

    @classmethod
    def user(cls, *parts: Part | str) -> Message:
        return cls("user", [Text(p) if isinstance(p, str) else p for p in parts])

    @classmethod
    def tool(cls, result: ToolResult) -> Message:
        return cls("tool", [result])

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [p for p in self.parts if isinstance(p, ToolCall)]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, Text))
