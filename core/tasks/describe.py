"""describe: one model call per image. The prompt text comes BEFORE the image in the turn, so the
shared prefix (template + prompt) stays in the KV cache and only the image and answer are new
for each image of a batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..context import context_for
from ..engine.base import Engine, GenerateOptions
from ..engine.grammar import parse_json_output, schema_to_grammar
from ..engine.parts import Image, Message, Text
from ..results import Description

if TYPE_CHECKING:
    import numpy as np

    from ..media.source import Source

DEFAULT_PROMPT = "Describe this image concisely."
DEFAULT_IMAGE_TOKENS = 280  # what Google's processor uses for a still image


@dataclass
class DescribeOptions:
    prompt: str = DEFAULT_PROMPT
    schema: dict[str, Any] | None = None
    image_tokens: int = DEFAULT_IMAGE_TOKENS
    generate: GenerateOptions = field(default_factory=lambda: GenerateOptions(max_tokens=512))

    def __post_init__(self) -> None:
        if self.schema is not None and not self.generate.grammar:
            self.generate.grammar = schema_to_grammar(self.schema)
        if self.schema is not None and self.generate.json_schema is None:
            self.generate.json_schema = self.schema


def image_messages(pixels: np.ndarray, options: DescribeOptions) -> list[Message]:
    return [Message("user", [Text(options.prompt + "\n"), Image(pixels)])]


def n_ctx_for(options: DescribeOptions) -> int:
    need = options.image_tokens + 256 + len(options.prompt) // 2 + options.generate.max_tokens
    return context_for(need, 1024)


def answer(engine: Engine, messages: list[Message], generate: GenerateOptions, *, schema: bool,
           on_text: Callable[[str], None] | None = None) -> tuple[str, Any]:
    pieces = []
    for piece in engine.generate(messages, generate):
        pieces.append(piece)
        if on_text:
            on_text(piece)
    text = "".join(pieces).strip()
    return text, (parse_json_output(text) if schema else None)


def describe(source: Source, engine_for: Callable[[], Engine], options: DescribeOptions) -> Description:
    from ..media.image import load_image

    pixels = load_image(source, max_tokens=options.image_tokens, min_tokens=min(70, options.image_tokens))
    t0 = time.perf_counter()
    engine = engine_for()
    text, data = answer(engine, image_messages(pixels, options), options.generate, schema=options.schema is not None)
    stats = engine.stats
    meta = {"image_size": [int(pixels.shape[1]), int(pixels.shape[0])],
            "prompt_tokens": stats.prompt_tokens, "prompt_evaluated": stats.prompt_evaluated,
            "generated_tokens": stats.generated, "seconds": round(time.perf_counter() - t0, 3)}
    if stats.drafted:  # speculative decoding: what was drafted for this answer and kept
        meta["draft"] = {"drafted": stats.drafted, "accepted": stats.accepted,
                         "acceptance": round(stats.accepted / stats.drafted, 4)}
    return Description(file=source.name, text=text, data=data, meta=meta)

