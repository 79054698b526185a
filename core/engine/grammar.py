"""JSON Schema -> llama.cpp GBNF grammar, and validation of what the model produced."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import GemmapipeError, UsageError


def load_schema(spec: str) -> dict[str, Any]:
    """`spec` is inline JSON (starts with `{`) or a path to a JSON file."""
    text = spec
    if not spec.lstrip().startswith("{"):
        path = Path(spec).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"schema {spec}", f"cannot read: {exc.strerror or exc}") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError("schema", f"not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise UsageError("schema", "a JSON Schema must be an object")
    return schema


def schema_to_grammar(schema: dict[str, Any]) -> str:
    """llama-cpp-python's converter is the well-kept port of llama.cpp's json-schema-to-grammar.
    Its failures (and the $ref it cannot follow) are one UsageError line each."""
    check_refs(schema)
    from .native import light_package

    light_package()
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except KeyError as exc:  # a $ref the converter met while still resolving it
        raise UsageError("schema", f"$ref {exc.args[0]!r} is recursive in a way the grammar converter does not "
                                   "support", _RECURSION_HINT) from None
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, TypeError | AttributeError):  # a keyword holding the wrong kind of value
            reason = f"a keyword holds a value of the wrong type ({reason})"
        raise UsageError("schema", f"cannot be turned into a grammar: {reason}") from None


_RECURSION_HINT = 'refer to it from a property instead: {"type": "object", "properties": {"root": {"$ref": ...}}}'


def check_refs(schema: dict[str, Any]) -> None:
    """Every `$ref` is a local JSON pointer into the schema that points at something, and the schema
    is not itself a reference to a recursive definition (which the converter cannot turn into a
    grammar; recursion below a property works)."""

    def target(ref: Any) -> Any:
        if not isinstance(ref, str):
            raise UsageError("schema", f"$ref must be a string, not {json.dumps(ref)}")
        if ref == "#":
            raise UsageError("schema", "$ref '#' (the whole schema) makes it recursive, which is not supported")
        if not ref.startswith("#/"):
            raise UsageError("schema", f"$ref {ref!r}: only references inside the schema (#/...) are supported")
        node: Any = schema
        for sel in ref[2:].split("/"):
            if isinstance(node, dict) and sel in node:
                node = node[sel]
            elif isinstance(node, list) and sel.isdigit() and int(sel) < len(node):
                node = node[int(sel)]
            else:
                raise UsageError("schema", f"$ref {ref!r} points to nothing in the schema")
        return node

    def refs_in(node: Any) -> list[Any]:
        found: list[Any] = []
        stack = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, dict):
                if "$ref" in n:
                    found.append(n["$ref"])
                stack.extend(v for k, v in n.items() if k != "$ref")
            elif isinstance(n, list):
                stack.extend(n)
        return found

    for ref in refs_in(schema):
        target(ref)
    root = schema.get("$ref")
    if root is None:
        return
    seen: set[str] = set()
    todo = [root]
    while todo:
        ref = todo.pop()
        for inner in refs_in(target(ref)):
            if inner == root:
                raise UsageError("schema", f"$ref {root!r} is recursive, and a recursive definition as the whole "
                                           "schema is not supported", _RECURSION_HINT)
            if inner not in seen:
                seen.add(inner)
                todo.append(inner)


def parse_json_output(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GemmapipeError("output", f"the model's answer is not valid JSON ({exc})",
                             "raise {max_tokens}: the answer may have been cut off") from None
