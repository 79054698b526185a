"""What an engine is fed: messages made of ordered parts. Media are numpy arrays, never files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

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


Part = Text | Image | Audio
Role = Literal["system", "user", "assistant"]


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
