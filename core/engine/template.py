"""Render a conversation into prompt text with the GGUF's own chat template (Jinja, as llama.cpp
does). Media become the mtmd marker; libmtmd wraps them in the model's own media tokens."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..errors import ModelError
from .parts import Audio, CachedMessage, Image, Message, Placeholder, Text


def _content(msg: Message | CachedMessage, marker: str) -> str:
    out = []
    for part in msg.parts:
        if isinstance(part, Text):
            out.append(part.text)
        elif isinstance(part, Image | Audio | Placeholder):
            out.append(marker)
    return "".join(out)


@lru_cache(maxsize=4)
def _compile(source: str) -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ModelError("chat template", message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except Exception as exc:
        raise ModelError("chat template", f"the GGUF's template does not compile: {exc}") from None


def render_prompt(messages: Sequence[Message | CachedMessage], *, template: str | None, marker: str, bos_text: str,
                  add_generation_prompt: bool = True, enable_thinking: bool = False) -> str:
    """Prompt text without the leading BOS (the tokenizer adds it when the model asks for one).

    With no template (a base model, or --no-template) the parts are concatenated in order: plain
    completion, no turn markup.
    """
    if not template:
        return "".join(_content(m, marker) for m in messages)
    rendered = _compile(template).render(
        messages=[{"role": m.role, "content": _content(m, marker)} for m in messages],
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        bos_token=bos_text,
        eos_token="",
    )
    if bos_text and rendered.startswith(bos_text):
        rendered = rendered[len(bos_text):]
    return str(rendered)
