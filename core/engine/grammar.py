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
    """llama-cpp-python's converter is the well-kept port of llama.cpp's json-schema-to-grammar."""
    from .native import light_package

    light_package()
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:
        raise UsageError("schema", f"cannot be turned into a grammar: {exc}") from None


def parse_json_output(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GemmapipeError("output", f"the model's answer is not valid JSON ({exc})",
                             "raise --max-tokens: the answer may have been cut off") from None
