"""A fake engine with canned replies, for unit tests of tasks, writers and the CLI (as `llm` has
its mock model). It records every request so tests can assert on what the model was fed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from gemmapipe.core.engine.base import EngineInfo, EngineStats, GenerateOptions, TokenCount
from gemmapipe.core.engine.parts import Audio, Image, Message, Text


@dataclass
class FakeEngine:
    replies: list[str] = field(default_factory=lambda: ["canned reply"])
    n_ctx: int = 4096
    template: str | None = "{{ messages }}"
    config: Any = None
    stats: EngineStats = field(default_factory=EngineStats)
    requests: list[tuple[list[Message], GenerateOptions]] = field(default_factory=list)
    closed: bool = False

    language: str = "English"  # the answer to transcribe's spoken-language question

    def generate(self, messages: list[Message], options: GenerateOptions) -> Iterator[str]:
        self.requests.append((messages, options))
        if _asks_language(messages):  # recorded, but it takes no canned reply: those are the clips'
            reply = self.language
        else:
            answered = sum(1 for m, _ in self.requests if not _asks_language(m))
            reply = self.replies[(answered - 1) % len(self.replies)]
        self.stats.prompt_tokens = self.count_tokens(messages, options).total
        self.stats.generated = len(reply.split())
        self.stats.stop_reason = "eog"

        def stream() -> Iterator[str]:
            for i, word in enumerate(reply.split(" ")):
                yield word if i == 0 else " " + word

        if options.tools:  # as the local engine: Gemma 4's calls in the reply are split out of the text
            from gemmapipe.core.engine.gemma4 import split_calls

            return split_calls(stream(), options.on_tool_call)
        return stream()

    def count_tokens(self, messages: list[Message], options: GenerateOptions) -> TokenCount:
        n = 0
        for m in messages:
            for p in m.parts:
                if isinstance(p, Text):
                    n += len(p.text.split())
                elif isinstance(p, Image):
                    n += (p.pixels.shape[0] // 48) * (p.pixels.shape[1] // 48)
                elif isinstance(p, Audio):
                    n += (p.samples.size + 639) // 640
        return TokenCount(n)

    @property
    def templated(self) -> bool:
        return bool(self.template)

    def describe(self) -> EngineInfo:
        return EngineInfo(model=str(self.config.model) if self.config else "fake.gguf", mmproj=None, n_ctx=self.n_ctx)

    def close(self) -> None:
        self.closed = True


def _asks_language(messages: list[Message]) -> bool:
    from gemmapipe.core.tasks.transcribe import LANGUAGE_QUESTION

    return any(LANGUAGE_QUESTION in m.text for m in messages)


@pytest.fixture
def fake_engine() -> Iterator[list[FakeEngine]]:
    """Register a FakeEngine factory through the session's public hook; the list collects every engine
    created (set replies before running, via the returned list's `.replies` attribute)."""
    from gemmapipe.core.session import register_engine_factory

    class Created(list):  # type: ignore[type-arg]
        replies: list[str]
        language: str

    created = Created()
    created.replies = ["canned reply"]
    created.language = "English"

    def factory(config: Any, pair: Any, *, n_ctx: int, max_image_tokens: int = 0) -> FakeEngine:
        eng = FakeEngine(replies=list(created.replies), n_ctx=n_ctx, config=config, language=created.language)
        created.append(eng)
        return eng

    previous = register_engine_factory(factory)
    try:
        yield created
    finally:
        register_engine_factory(previous)
