"""The engine interface tasks program against; local (llama.cpp) and fake engines implement it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .parts import CachedMessage, Message, ToolCall


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter GGUF and the scale it is applied with (0: loaded and checked, no effect)."""

    path: Path
    scale: float = 1.0


@dataclass
class EngineConfig:
    """How to load and run the model; built from CLI options or by a Python caller."""

    model: Path
    mmproj: Path | None = None
    threads: int | None = None  # None: physical cores, as llama.cpp's own default
    gpu_layers: int = -1  # -1: all layers when the build supports offload
    ctx_size: int | None = None  # None: sized to the job by the caller
    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    flash_attn: str = "auto"  # auto | on | off
    cache_type: str = "f16"  # KV cache type: f16 | q8_0 | q4_0
    no_template: bool = False
    swa_full: bool = False
    verbose: bool = False
    lora: tuple[LoraAdapter, ...] = ()  # applied in order to the text decoder (core/lora.py)
    # Sequences decoded together in one context (the session's jobs): each has a context of its own of
    # the engine's n_ctx, and the requests of concurrent callers share every decode step.
    parallel: int = 1
    # Speculative decoding: None, "ngram" (prompt lookup) or the path of a draft model GGUF; at most
    # draft_max tokens drafted per step (see core/engine/speculative.py for why 2 is the default).
    draft: str | None = None
    draft_max: int = 2


@dataclass
class GenerateOptions:
    max_tokens: int = 512
    temperature: float = 0.0  # 0: greedy
    top_k: int = 64
    top_p: float = 0.95
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None
    grammar: str | None = None  # GBNF; see core.engine.grammar.schema_to_grammar
    # The JSON Schema the grammar was built from, when there is one: a remote engine sends it as
    # `response_format` (servers build their own grammar); the local engine uses `grammar`.
    json_schema: dict[str, Any] | None = None
    think: bool = False
    on_thought: Callable[[str], None] | None = None  # thinking text goes here, never to the answer
    add_generation_prompt: bool = True
    # Tools the model may call, as OpenAI function declarations ({"type": "function", "function":
    # {"name", "description", "parameters"}}): the local engine puts them in the template's `tools`,
    # a remote engine in the request. The answer's calls go to `on_tool_call` (one ToolCall each, in
    # order, once the answer is complete), never into the text. `tool_choice`: "auto" (the model
    # decides), "required" (it must call) or "none" (declared, but calls are not asked for).
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "auto"
    on_tool_call: Callable[[ToolCall], None] | None = None


@dataclass
class EngineState:
    """What an engine saves of itself for a later process: llama.cpp's own state of the sequence
    (opaque bytes, checked by llama.cpp when loaded) and plain-data bookkeeping that JSON can carry.
    Nothing in it is code: a state read from disk can be wrong, never dangerous."""

    kv: memoryview
    info: dict[str, Any]


class StateError(ValueError):
    """A saved state that does not fit this engine (malformed bookkeeping, refused by llama.cpp)."""


@dataclass
class EngineStats:
    """Counters for the last request, and totals, so callers and tests can see what was reused."""

    prompt_tokens: int = 0  # tokens of the whole prompt of the last request
    prompt_evaluated: int = 0  # of those, how many were evaluated (the rest came from the KV cache)
    generated: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    total_prompt_evaluated: int = 0
    total_generated: int = 0
    stop_reason: str = ""  # "eog" | "length" | "context" | "cancelled"
    drafted: int = 0  # speculative decoding: tokens drafted for this request ...
    accepted: int = 0  # ... and how many of them the model's own sampling confirmed
    total_drafted: int = 0
    total_accepted: int = 0
    # Summed over every request, whatever the engine (it sets the per-request fields above once per
    # request, or resets them to 0 first): see __setattr__.
    total_prompt_tokens: int = 0
    total_prefill_s: float = 0.0
    total_decode_s: float = 0.0

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SUMMED and value:
            total = "total_" + name
            object.__setattr__(self, total, getattr(self, total, 0) + value)
        object.__setattr__(self, name, value)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_SUMMED = frozenset({"prompt_tokens", "prefill_s", "decode_s"})


@dataclass
class TokenCount:
    total: int
    per_chunk: list[tuple[str, int]] = field(default_factory=list)  # (kind, tokens) in prompt order


@dataclass(frozen=True)
class EngineInfo:
    """What an engine runs, for result metadata and cache keys: the same fields for every engine."""

    model: str  # the model file (local) or the model name the server was asked for
    mmproj: str | None
    n_ctx: int
    server: str | None = None  # the server's base URL; None for a local engine
    architecture: str | None = None
    n_batch: int | None = None
    threads: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields that apply (model, mmproj and n_ctx always; the rest when known)."""
        keep = {"model", "mmproj", "n_ctx"}
        return {k: v for k, v in self.__dict__.items() if k in keep or v is not None}


@runtime_checkable
class Engine(Protocol):
    """What every engine does. Optional abilities are the protocols below, checked with isinstance.

    `stats` describes the last request made *from the calling thread*: an engine that serves several
    threads at once (a server client under -j) keeps one per thread, so concurrent requests never
    read each other's counters.
    """

    n_ctx: int

    @property
    def stats(self) -> EngineStats: ...

    def generate(self, messages: list[Message], options: GenerateOptions) -> Iterator[str]:
        """Yield the visible answer text as it is generated (thinking stripped)."""
        ...

    def count_tokens(self, messages: list[Message], options: GenerateOptions) -> TokenCount: ...

    def describe(self) -> EngineInfo:
        """Model facts for result metadata and cache keys."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class AppliesTemplate(Protocol):
    """An engine that renders prompts with a chat template of its own (the GGUF's, or the server's).

    `templated` is False when the model has no template (plain completion): tasks then write the
    turn markers themselves."""

    @property
    def templated(self) -> bool: ...


@runtime_checkable
class StatefulEngine(Engine, Protocol):
    """An engine whose prefilled state can be saved and resumed by a later process (the local one)."""

    def prefill(self, messages: list[Message], options: GenerateOptions) -> int | None:
        """Evaluate the prompt up to the end of its last media; None when there is nothing to share."""
        ...

    def save_state(self) -> EngineState: ...

    def load_state(self, state: EngineState) -> None:
        """Restore a saved state, or StateError (with the KV cache left empty)."""
        ...

    def generate_cached(self, messages: list[CachedMessage], options: GenerateOptions) -> Iterator[str] | None:
        """`generate` after `load_state`, the media as placeholders; None when the state does not fit."""
        ...

    def state_setup(self) -> dict[str, Any]:
        """What a saved state depends on besides the prompt (for the cache key)."""
        ...

    def reset(self) -> None: ...


def is_templated(engine: Engine) -> bool:
    """Whether `engine` applies a chat template of its own (else tasks write plain prompts)."""
    return isinstance(engine, AppliesTemplate) and engine.templated
