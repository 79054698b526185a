"""Greedy requests are sampled by an argmax over llama.cpp's logits (LocalEngine._sample) instead of
the sampler chain: the tokens must be the chain's, suppressed tokens included (the tiny Gemma 4
suppresses its media markers, and its random weights would otherwise pick them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemmapipe.core.engine.base import EngineConfig, GenerateOptions
from gemmapipe.core.engine.local import LocalEngine
from gemmapipe.core.engine.parts import Message
from gemmapipe.core.model import resolve

pytestmark = [pytest.mark.model]
_GREEDY_ONLY = LocalEngine._greedy_only
PROMPTS = ["The capital of France is", "1, 2, 3, 4, 5,", "<|image> <mask> <|audio>", "Once upon a time"]


def _answers(model: Path, monkeypatch: pytest.MonkeyPatch, *, fast: bool, **kw: object) -> tuple[list[str], int]:
    calls = 0
    real = _GREEDY_ONLY

    def greedy_only(self: LocalEngine, options: GenerateOptions) -> bool:
        nonlocal calls
        ok = real(self, options)
        calls += ok
        return ok and fast

    monkeypatch.setattr(LocalEngine, "_greedy_only", greedy_only)
    pair = resolve(model, None, load_projector=False)
    with LocalEngine(EngineConfig(model=model, threads=2, **kw), pair, n_ctx=512) as eng:  # type: ignore[arg-type]
        texts = ["".join(eng.generate([Message.user(p)], GenerateOptions(max_tokens=40))) for p in PROMPTS]
    return texts, calls


@pytest.mark.parametrize("which", ["tiny_gemma4", "gemma3_270m"])
def test_the_argmax_picks_the_chains_tokens(which: str, request: pytest.FixtureRequest,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model = request.getfixturevalue(which)
    model = model[0] if isinstance(model, tuple) else model
    chain, _ = _answers(model, monkeypatch, fast=False)
    fast, calls = _answers(model, monkeypatch, fast=True)
    assert calls == len(PROMPTS)  # every request here took the argmax path
    assert fast == chain
    assert all(chain)


def test_sampled_requests_keep_the_chain() -> None:
    greedy_only = LocalEngine._greedy_only
    assert greedy_only(None, GenerateOptions())  # type: ignore[arg-type]
    assert not greedy_only(None, GenerateOptions(temperature=0.7))  # type: ignore[arg-type]
    assert not greedy_only(None, GenerateOptions(grammar="root ::= \"a\""))  # type: ignore[arg-type]
    assert not greedy_only(None, GenerateOptions(repeat_penalty=1.1))  # type: ignore[arg-type]
    assert not greedy_only(None, GenerateOptions(tools=[{"name": "f"}]))  # type: ignore[arg-type]
    assert greedy_only(None, GenerateOptions(tools=[{"name": "f"}], tool_choice="none"))  # type: ignore[arg-type]
