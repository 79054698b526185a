"""Gemma 4's own tool-call format, as the official chat template writes it and llama.cpp reads it
(`models/templates/google-gemma-4-31B-it.jinja`, `common/chat.cpp` common_chat_params_init_gemma4,
`common/chat-peg-parser.cpp` gemma4_to_json, in the llama.cpp that llama-cpp-python 0.3.36 vendors).

A call: `<|tool_call>call:NAME{key:value,...}<tool_call|>`. Keys are bare; a string is wrapped in
`<|"|>` (no escapes inside); numbers, `true`, `false` and `null` are bare (the official template
writes a null as `None`, which is read too); objects `{...}` and
arrays `[...]` nest. The model ends its turn after its calls with `<|tool_response>` (an
end-of-generation token), and the results come back inside the same model turn as
`<|tool_response>response:NAME{...}<tool_response|>`, written by the template.

Here: `format_value` (the template's format_argument), `parse_call` (text -> ToolCall, or a
ToolCall with `error`), `CallSplitter` (streamed text -> visible text + calls) and `grammar`
(GBNF for llama.cpp's sampler, applied lazily once `<|tool_call>` is sampled).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

from .parts import ToolCall

CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
QUOTE = '<|"|>'
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


# --- writing ------------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    """A value as the template's format_argument(escape_keys=False) writes it: sorted bare keys."""
    if isinstance(value, str):
        return QUOTE + value + QUOTE
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "None"  # the template has no case for it: Jinja writes Python's None
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, int | float) else str(value)


def format_call(name: str, arguments: dict[str, Any]) -> str:
    return f"{CALL_OPEN}call:{name}{format_value(arguments)}{CALL_CLOSE}"


# --- reading ------------------------------------------------------------------------------------------
class _Bad(ValueError):
    pass


class _Reader:
    """A recursive-descent reader of one Gemma 4 value, as llama.cpp's gemma4 grammar accepts it
    (whitespace after `{`, `[`, `,` and `:` and before `}`, `]`), a little more lenient: keys may
    also be quoted, and whitespace may sit anywhere between items."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def fail(self, what: str) -> _Bad:
        near = self.s[self.i:self.i + 20]
        return _Bad(f"{what} at character {self.i}" + (f" (near {near!r})" if near else " (the call ends there)"))

    def value(self, depth: int = 0) -> Any:
        if depth > 64:
            raise self.fail("nesting too deep")
        self.ws()
        s, i = self.s, self.i
        if s.startswith(QUOTE, i):
            end = s.find(QUOTE, i + len(QUOTE))
            if end < 0:
                raise self.fail("a string that is not closed with <|\"|>")
            self.i = end + len(QUOTE)
            return s[i + len(QUOTE):end]
        if s.startswith("{", i):
            return self.mapping(depth)
        if s.startswith("[", i):
            self.i += 1
            items: list[Any] = []
            self.ws()
            if s.startswith("]", self.i):
                self.i += 1
                return items
            while True:
                items.append(self.value(depth + 1))
                self.ws()
                if s.startswith(",", self.i):
                    self.i += 1
                    continue
                if s.startswith("]", self.i):
                    self.i += 1
                    return items
                raise self.fail("expected , or ] in an array")
        for word, val in (("true", True), ("false", False), ("null", None), ("None", None)):
            if s.startswith(word, i):
                self.i += len(word)
                return val
        m = _NUMBER.match(s, i)
        if m and m.end() > i:
            self.i = m.end()
            text = m.group(0)
            return float(text) if any(c in text for c in ".eE") else int(text)
        if s.startswith('"', i):
            raise self.fail('a string in " quotes (Gemma 4 strings are wrapped in <|"|>)')
        raise self.fail("expected a value")

    def mapping(self, depth: int) -> dict[str, Any]:
        s = self.s
        if not s.startswith("{", self.i):
            raise self.fail("expected {")
        self.i += 1
        out: dict[str, Any] = {}
        self.ws()
        if s.startswith("}", self.i):
            self.i += 1
            return out
        while True:
            self.ws()
            if s.startswith(QUOTE, self.i):
                end = s.find(QUOTE, self.i + len(QUOTE))
                if end < 0:
                    raise self.fail("a key that is not closed with <|\"|>")
                key = s[self.i + len(QUOTE):end]
                self.i = end + len(QUOTE)
                self.ws()
                if not s.startswith(":", self.i):
                    raise self.fail("expected : after a key")
            else:
                colon = s.find(":", self.i)
                brace = s.find("}", self.i)
                if colon < 0 or (0 <= brace < colon):
                    raise self.fail("expected key:value")
                key = s[self.i:colon].strip()
                if not key:
                    raise self.fail("an empty key")
                self.i = colon
            self.i += 1  # the colon
            out[key] = self.value(depth + 1)
            self.ws()
            if s.startswith(",", self.i):
                self.i += 1
                continue
            if s.startswith("}", self.i):
                self.i += 1
                return out
            raise self.fail("expected , or } in an object")


def parse_value(text: str) -> Any:
    """One Gemma 4 value (the whole text); ValueError saying where it is wrong."""
    r = _Reader(text)
    value = r.value()
    r.ws()
    if r.i != len(text):
        raise r.fail("text after the value")
    return value


def parse_call(body: str) -> ToolCall:
    """What sits between `<|tool_call>` and `<tool_call|>`: `call:NAME{...}`. Never raises: a call
    that cannot be read is a ToolCall with `error` set (and the name, when it got that far)."""
    raw = CALL_OPEN + body + CALL_CLOSE
    text = body.strip()
    if not text.startswith("call:"):
        return ToolCall("", error="a call must start with call:NAME{", raw=raw)
    m = _NAME.match(text, len("call:"))
    if not m:
        return ToolCall("", error="no tool name after call:", raw=raw)
    name = m.group(0)
    r = _Reader(text)
    r.i = m.end()
    r.ws()
    try:
        if not text.startswith("{", r.i):
            raise r.fail("expected { after the tool name")
        args = r.mapping(0)
        r.ws()
        if r.i != len(text):
            raise r.fail("text after the arguments")
    except _Bad as exc:
        return ToolCall(name, error=str(exc), raw=raw)
    return ToolCall(name, args, raw=raw)


class CallSplitter:
    """Splits streamed answer text at `<|tool_call>...<tool_call|>`: `feed` returns the text to
    show (what is outside calls), the calls are collected in `calls`. A marker split across pieces
    is held back until it is whole. `finish` ends the stream: an unclosed call becomes a call with
    an error (the answer stopped inside it)."""

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []
        self.buf = ""
        self.inside = False

    def feed(self, text: str) -> str:
        self.buf += text
        out: list[str] = []
        while True:
            marker = CALL_CLOSE if self.inside else CALL_OPEN
            i = self.buf.find(marker)
            if i >= 0:
                if self.inside:
                    self.calls.append(parse_call(self.buf[:i]))
                else:
                    out.append(self.buf[:i])
                self.buf = self.buf[i + len(marker):]
                self.inside = not self.inside
                continue
            if self.inside:
                return "".join(out)
            keep = next((k for k in range(min(len(marker) - 1, len(self.buf)), 0, -1)
                         if marker.startswith(self.buf[-k:])), 0)
            out.append(self.buf[: len(self.buf) - keep])
            self.buf = self.buf[len(self.buf) - keep:]
            return "".join(out)

    def finish(self) -> str:
        """The text still held back (a partial marker that never completed)."""
        tail, self.buf = self.buf, ""
        if self.inside:
            self.inside = False
            call = parse_call(tail)
            self.calls.append(ToolCall(call.name, call.arguments, error="the answer stopped inside the call "
                                       f"(no {CALL_CLOSE})" + (f"; {call.error}" if call.error else ""),
                                       raw=CALL_OPEN + tail))
            return ""
        return tail


def split_calls(pieces: Iterator[str], on_call: Callable[[ToolCall], None] | None) -> Iterator[str]:
    """The visible text of a streamed answer; its calls go to `on_call` once the answer is complete."""
    splitter = CallSplitter()
    for piece in pieces:
        visible = splitter.feed(piece)
        if visible:
            yield visible
    tail = splitter.finish()
    if tail:
        yield tail
    if on_call is not None:
        for call in splitter.calls:
            on_call(call)


# --- the grammar ------------------------------------------------------------------------------------
def _lit(text: str) -> str:
    return json.dumps(text)  # GBNF string literals take JSON's escapes


def _cls(chars: set[str], negate: bool = False) -> str:
    body = "".join(c if c.isalnum() else f"\\x{ord(c):02X}" for c in sorted(chars))
    return f"[{'^' if negate else ''}{body}]"


def _excluding(prefix: str, forbidden: str) -> list[str]:
    """GBNF rules `{prefix}0`...: any text that does not contain `forbidden` (the complement of
    its Knuth-Morris-Pratt automaton; every state final), as llama.cpp's gbnf_excluding_grammar."""
    n = len(forbidden)
    alphabet = set(forbidden)

    def step(k: int, c: str) -> int:
        text = forbidden[:k] + c
        return next(j for j in range(min(len(text), n), -1, -1) if text.endswith(forbidden[:j]))

    rules = []
    for k in range(n):
        by_dest: dict[int, set[str]] = {}
        for c in alphabet:
            d = step(k, c)
            if d < n:
                by_dest.setdefault(d, set()).add(c)
        alts = ['""'] + [f"{_cls(cs)} {prefix}{d}" for d, cs in sorted(by_dest.items())]
        alts.append(f"{_cls(alphabet, negate=True)} {prefix}0")
        rules.append(f"{prefix}{k} ::= " + " | ".join(alts))
    return rules


def grammar(tools: list[dict[str, Any]], *, parallel: bool = True, thought: bool = False) -> str:
    """GBNF for one or more calls (root starts at `<|tool_call>`), as llama.cpp's gemma4 parser
    builds it, and a little tighter: the tool name is one of the declared ones and the keys of its
    arguments are its parameters' names (llama.cpp allows any key). Values nest as in llama.cpp:
    strings in `<|"|>` (with no `<|"|>` inside), objects, arrays, JSON numbers, true/false/null.
    `thought`: allow a thought channel before the first call (a forced call with thinking on)."""
    rules: dict[str, str] = {}
    alts = []
    for i, tool in enumerate(tools):
        fn = tool.get("function", tool)
        name = str(fn["name"])
        props = list(((fn.get("parameters") or {}).get("properties") or {}).keys())
        rule = f"tool-{i}"
        if props:
            key = " | ".join(_lit(str(k)) for k in props)
            rules[f"{rule}-kv"] = f"( {key} ) \":\" ws value"
            rules[rule] = (f"{_lit(name)} \"{{\" ws ( \"}}\" | {rule}-kv ( \",\" ws {rule}-kv )* ws \"}}\" )")
        else:
            rules[rule] = f"{_lit(name)} \"{{\" ws \"}}\""
        alts.append(rule)
    call = f"{_lit(CALL_OPEN + 'call:')} ( {' | '.join(alts)} ) {_lit(CALL_CLOSE)}"
    head = "root ::= " + ("thought? " if thought else "") + ("call+" if parallel else "call")
    lines = [head, f"call ::= {call}"]
    lines += [f"{k} ::= {v}" for k, v in rules.items()]
    lines += [
        "value ::= string | object | array | number | \"true\" | \"false\" | \"null\" | \"None\"",
        f"string ::= {_lit(QUOTE)} str0 {_lit(QUOTE)}",
        *_excluding("str", QUOTE),
        'object ::= "{" ws ( "}" | kv ( "," ws kv )* ws "}" )',
        "kv ::= key \":\" ws value",
        "key ::= [^:}<, \\t\\n] [^:}<,\\n]*",
        'array ::= "[" ws ( "]" | value ( "," ws value )* ws "]" )',
        'number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?',
        'ws ::= [ \\n]?',
    ]
    if thought:
        lines.append(f"thought ::= {_lit('<|channel>')} th0 {_lit('<channel|>')}")
        lines += _excluding("th", "<channel|>")
    return "\n".join(lines) + "\n"


def lazy_grammar_sampler(L: Any, vocab: Any, grammar_text: str, trigger_token: int | None) -> Any:
    """llama.cpp's lazy grammar sampler: unconstrained until `<|tool_call>` is sampled (the token
    when the vocabulary has it as one, else the text as a pattern), then the grammar from there on.
    None when llama.cpp rejects the grammar."""
    import ctypes

    tokens = (L.llama_token * 1)(trigger_token) if trigger_token is not None else None
    patterns = None if trigger_token is not None else (ctypes.c_char_p * 1)(re.escape(CALL_OPEN).encode())
    return L.llama_sampler_init_grammar_lazy_patterns(
        vocab, grammar_text.encode(), b"root", patterns, 0 if patterns is None else 1,
        tokens, 0 if tokens is None else 1)
