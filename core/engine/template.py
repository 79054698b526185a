"""Render a conversation into prompt text with the GGUF's own chat template (Jinja, as llama.cpp
does). Media become the mtmd marker; libmtmd wraps them in the model's own media tokens."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..errors import ModelError
from .parts import Audio, CachedMessage, Image, Message, Placeholder, Text, ToolCall, ToolResult

# How llama.cpp recognises Gemma 4's template (common/chat.cpp); the official one also renders
# OpenAI-style `tool` messages, older ones only `tool_responses` on the assistant message.
_GEMMA4_CALL = "'<|tool_call>call:'"


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


def _call_dict(call: ToolCall, index: int) -> dict[str, Any]:
    return {"id": call.id or f"call_{index}", "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


def template_messages(messages: Sequence[Message | CachedMessage], marker: str, *,
                      gemma4: bool) -> list[dict[str, Any]]:
    """The conversation as the template's `messages`. Tool calls are the assistant message's
    `tool_calls` (arguments as a mapping). With Gemma 4's template the turn of calls, their results
    and the answer that follows become one assistant message with `tool_responses`, as llama.cpp
    does for Gemma 4 (common/parsers/gemma4.cpp, convert_tool_responses_gemma4): both the official
    template and older ones render that as `<|tool_response>response:NAME{...}<tool_response|>`
    inside the model's turn, a JSON object as its keys, text as `value:<|"|>...<|"|>`. Other
    templates get OpenAI-style `tool` messages (content as text, JSON written out)."""
    out: list[dict[str, Any]] = []
    n_calls = 0
    i = 0
    while i < len(messages):
        msg = messages[i]
        i += 1
        calls = [p for p in msg.parts if isinstance(p, ToolCall)]
        results = [p for p in msg.parts if isinstance(p, ToolResult)]
        if msg.role == "tool" and not gemma4:
            for r in results:
                content = r.content if isinstance(r.content, str) else json.dumps(r.content, ensure_ascii=False)
                out.append({"role": "tool", "name": r.name, "tool_call_id": r.call_id, "content": content})
            continue
        if msg.role == "tool":  # a result with no call before it: nothing to attach it to
            continue
        entry: dict[str, Any] = {"role": msg.role, "content": _content(msg, marker)}
        if not calls:
            out.append(entry)
            continue
        entry["tool_calls"] = [_call_dict(c, n_calls + k) for k, c in enumerate(calls)]
        n_calls += len(calls)
        if gemma4:
            # Text the model wrote before its calls was shown as it came; llama.cpp drops it here too.
            entry["content"] = ""
            responses = []
            while i < len(messages) and messages[i].role == "tool":
                responses += [{"name": r.name, "response": r.content}
                              for r in messages[i].parts if isinstance(r, ToolResult)]
                i += 1
            if responses:
                entry["tool_responses"] = responses
                nxt = messages[i] if i < len(messages) else None
                if (nxt is not None and nxt.role == "assistant" and not any(isinstance(p, ToolCall) for p in nxt.parts)
                        and _content(nxt, marker)):
                    entry["content"] = _content(nxt, marker)
                    i += 1
        out.append(entry)
    return out


def render_prompt(messages: Sequence[Message | CachedMessage], *, template: str | None, marker: str, bos_text: str,
                  add_generation_prompt: bool = True, enable_thinking: bool = False,
                  tools: list[dict[str, Any]] | None = None) -> str:
    """Prompt text without the leading BOS (the tokenizer adds it when the model asks for one).

    With no template (a base model, or --no-template) the parts are concatenated in order: plain
    completion, no turn markup. `tools`: OpenAI function declarations, handed to the template as
    its `tools` (Gemma 4's declares them in the system turn); a template that never mentions tools
    is refused rather than silently dropping them.
    """
    if not template:
        if tools:
            raise ModelError("chat template", "the model has none, so it cannot be told about tools",
                             "use a model whose GGUF has a chat template with tools, without {no_template}")
        return "".join(_content(m, marker) for m in messages)
    if tools and "tools" not in template:
        raise ModelError("chat template", "the model's template does not declare tools",
                         "use a model whose chat template takes tools (Gemma 4's does)")
    extra: dict[str, Any] = {"tools": tools} if tools else {}
    rendered = _compile(template).render(
        messages=template_messages(messages, marker, gemma4=_GEMMA4_CALL in template),
        **extra,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        bos_token=bos_text,
        eos_token="",
    )
    if bos_text and rendered.startswith(bos_text):
        rendered = rendered[len(bos_text):]
    return str(rendered)
