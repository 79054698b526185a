"""Tools for the model: plain Python functions read from files, as simonw/llm's `--functions` does.

Every top-level function a file defines (not imported, not starting with `_`) becomes a tool: its
name, its docstring as the description, and a JSON Schema of its parameters from the type hints
(`str`, `int`, `float`, `bool`, `list[X]`, `dict[str, X]`, `Literal[...]`, enums, `X | None`,
dataclasses and TypedDicts; an unannotated parameter is a string). A call from the model runs the
function with its arguments; what it returns goes back to the model as text (a `str`) or as JSON
(anything JSON can carry). Whatever goes wrong in a call (an unknown tool, missing or unexpected
arguments, an exception in the function, a call the user refused) is told to the model as the
call's result, never raised: the model can correct itself.

The files are ordinary Python run with the user's rights, as a script would be: only pass files
you would run.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.parts import ToolCall, ToolResult
from .errors import UsageError

#: What a result may take of the context: longer text is cut, and the model told so.
MAX_RESULT_CHARS = 32_000


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    function: Callable[..., Any]
    source: str = ""

    def declaration(self) -> dict[str, Any]:
        """The OpenAI function declaration (what servers and Gemma 4's template take)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


# --- type hints -> JSON Schema ---------------------------------------------------------------------
_SIMPLE: dict[Any, dict[str, Any]] = {
    str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"},
    type(None): {"type": "null"}, Any: {}, bytes: {"type": "string"},
}


def schema_of(hint: Any, depth: int = 0) -> dict[str, Any]:
    """The JSON Schema of a Python type hint (a best effort: an unknown type is a string)."""
    if depth > 16:
        return {}
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return schema_of(args[0], depth + 1)
    if origin is typing.Literal:
        values = list(args)
        kinds = {type(v) for v in values}
        out: dict[str, Any] = {"enum": values}
        if len(kinds) == 1 and next(iter(kinds)) in _SIMPLE:
            out = {**_SIMPLE[next(iter(kinds))], **out}
        return out
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            inner = schema_of(members[0], depth + 1)
            if type(None) in args:
                inner["nullable"] = True  # Gemma 4's template and OpenAI's both read it
            return inner
        return {"anyOf": [schema_of(a, depth + 1) for a in args]}
    if origin in (list, set, frozenset, tuple) or hint in (list, set, frozenset, tuple):
        out = {"type": "array"}
        item_args = [a for a in args if a is not Ellipsis]
        if item_args:
            out["items"] = schema_of(item_args[0], depth + 1)
        return out
    if origin is dict or hint is dict:
        out = {"type": "object"}
        if len(args) == 2:
            out["additionalProperties"] = schema_of(args[1], depth + 1)
        return out
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        values = [m.value for m in hint]
        return {**(schema_of(type(values[0]), depth + 1) if values else {}), "enum": values}
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or typing.is_typeddict(hint)):
        return _object_schema(hint, depth + 1)
    return {"type": "string"}


def _object_schema(cls: type, depth: int) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    if dataclasses.is_dataclass(cls):
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    else:
        required = sorted(getattr(cls, "__required_keys__", hints.keys()))
    return {"type": "object", "properties": {k: schema_of(v, depth) for k, v in hints.items()},
            "required": [k for k in hints if k in required]}


def _param_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The parameters' type hints, resolved (the return type's is not needed, and may name a class
    local to where the function was made)."""
    shim = types.SimpleNamespace(__annotations__={k: v for k, v in getattr(fn, "__annotations__", {}).items()
                                                  if k != "return"})
    return typing.get_type_hints(shim, globalns=getattr(fn, "__globals__", None), include_extras=False)


def tool_from_function(fn: Callable[..., Any], *, source: str = "") -> Tool:
    """A Tool from a function: name, docstring, and the schema of its parameters from its hints."""
    name = fn.__name__
    where = f"function {name}" + (f" in {source}" if source else "")
    try:
        hints = _param_hints(fn)
    except Exception as exc:  # a hint naming something that does not exist
        raise UsageError(where, f"its type hints cannot be read: {exc}", parameter="functions") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue  # *args / **kwargs: not offered to the model
        if param.kind is param.POSITIONAL_ONLY:
            raise UsageError(where, f"parameter {param.name!r} is positional-only; a tool is called with keywords",
                             parameter="functions")
        prop = schema_of(hints.get(param.name, str))
        if param.default is param.empty:
            required.append(param.name)
        elif _jsonable(param.default):
            prop["default"] = param.default
        properties[param.name] = prop
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return Tool(name, inspect.getdoc(fn) or "", parameters, fn, source)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def load_functions(path: str) -> list[Tool]:
    """The tools a Python file defines: its own top-level functions not starting with `_`.
    UsageError (exit 2) naming the file when it cannot be read, does not compile, fails while
    loading, or defines no function."""
    where = f"functions {path}"
    file = Path(path).expanduser()
    try:
        source = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(where, "cannot read: not UTF-8 text", parameter="functions") from None
    except OSError as exc:
        raise UsageError(where, f"cannot read: {exc.strerror or exc}", parameter="functions") from None
    try:
        code = compile(source, str(file), "exec")
    except SyntaxError as exc:
        raise UsageError(where, f"line {exc.lineno}: {exc.msg}", parameter="functions") from None
    # A module of its own, registered while it runs, so dataclasses and string annotations
    # (`from __future__ import annotations`) resolve as in any imported module.
    mod_name = f"gemmapipe_functions_{abs(hash(str(file.resolve())))}"
    module = types.ModuleType(mod_name)
    module.__file__ = str(file)
    sys.modules[mod_name] = module
    try:
        exec(code, module.__dict__)
    except SystemExit:
        raise UsageError(where, "exited while loading", parameter="functions") from None
    except Exception as exc:
        raise UsageError(where, f"failed while loading: {type(exc).__name__}: {exc}", parameter="functions") from None
    tools = [tool_from_function(value, source=path) for name, value in vars(module).items()
             if inspect.isfunction(value) and not name.startswith("_") and value.__module__ == mod_name
             and value.__name__ == name]  # a def of that name: not a lambda, not an alias
    if not tools:
        raise UsageError(where, "defines no function (a top-level def whose name does not start with _)",
                         parameter="functions")
    return tools


# --- running calls -----------------------------------------------------------------------------------
def _as_content(value: Any) -> Any:
    """What a function returned, as a result: text stays text, JSON values stay JSON, anything
    else becomes its str()."""
    if isinstance(value, str):
        return value if len(value) <= MAX_RESULT_CHARS else (
            value[:MAX_RESULT_CHARS] + f"\n[cut: the result was {len(value)} characters, the first "
                                       f"{MAX_RESULT_CHARS} are shown]")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=_plain)
    except (TypeError, ValueError):
        try:
            return _as_content(str(value))
        except Exception:
            return f"(a {type(value).__name__} that cannot be written out)"
    if len(text) > MAX_RESULT_CHARS:
        return _as_content(text)
    return json.loads(text)


def _plain(value: Any) -> Any:
    """What JSON cannot write itself, as plain data: dataclasses, enums, tuples and sets."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(type(value).__name__)


def _coerce(value: Any, hint: Any) -> Any:
    """An argument as its parameter's type where JSON cannot carry that type: an enum from its
    value, a dataclass from an object. Anything else is passed as it came."""
    members = [a for a in typing.get_args(hint) if a is not type(None)] \
        if typing.get_origin(hint) in (typing.Union, types.UnionType) else [hint]
    if len(members) != 1 or value is None:
        return value
    target = members[0]
    try:
        if isinstance(target, type) and issubclass(target, enum.Enum) and not isinstance(value, target):
            return target(value)
        if isinstance(target, type) and dataclasses.is_dataclass(target) and isinstance(value, dict):
            inner = typing.get_type_hints(target)
            return target(**{k: _coerce(v, inner.get(k, Any)) for k, v in value.items()})
    except (TypeError, ValueError):
        return value  # the function sees what the model sent, and may say what is wrong with it
    return value


def error_result(call: ToolCall, message: str) -> ToolResult:
    return ToolResult(call.name or "unknown", f"error: {message}", call.id)


@dataclass
class Toolbox:
    """The tools of a conversation and how calls are run. `approve(call)` (optional) is asked
    before each call and says whether it may run; `on_call(call, result)` sees each call and its
    result (the command line prints them with its debug option)."""

    tools: list[Tool] = field(default_factory=list)
    chain_limit: int = 5  # model turns in a row that may end in calls; 0: no limit
    approve: Callable[[ToolCall], bool] | None = None
    on_call: Callable[[ToolCall, ToolResult], None] | None = None

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for t in self.tools:
            if t.name in seen:
                raise UsageError(f"function {t.name}", f"is defined in both {seen[t.name]} and {t.source}",
                                 parameter="functions")
            seen[t.name] = t.source

    @classmethod
    def from_files(cls, paths: list[str], **kw: Any) -> Toolbox:
        return cls([t for p in paths for t in load_functions(p)], **kw)

    def declarations(self) -> list[dict[str, Any]]:
        return [t.declaration() for t in self.tools]

    def run(self, call: ToolCall) -> ToolResult:
        result = self._run(call)
        if self.on_call is not None:
            self.on_call(call, result)
        return result

    def _run(self, call: ToolCall) -> ToolResult:
        if call.error is not None:
            return error_result(call, f"the call could not be read: {call.error}. Write a call as "
                                      "<|tool_call>call:NAME{key:value,...}<tool_call|> with strings in <|\"|>"
                                      if call.raw else f"the call could not be read: {call.error}")
        tool = next((t for t in self.tools if t.name == call.name), None)
        if tool is None:
            names = ", ".join(t.name for t in self.tools)
            return error_result(call, f"there is no tool named {call.name!r}; the tools are: {names}")
        try:
            hints = _param_hints(tool.function)
            bound = inspect.signature(tool.function).bind(
                **{k: _coerce(v, hints.get(k, Any)) for k, v in call.arguments.items()})
        except TypeError as exc:
            return error_result(call, f"wrong arguments for {tool.name}: {exc}")
        if self.approve is not None and not self.approve(call):
            return error_result(call, "the user refused this call; do not try it again, answer without it")
        try:
            value = tool.function(*bound.args, **bound.kwargs)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            return error_result(call, f"{tool.name} raised {type(exc).__name__}: {exc}")
        return ToolResult(tool.name, _as_content(value), call.id)


def describe_call(call: ToolCall) -> str:
    """`name(key=value, ...)` for people (the debug lines, the approval question)."""
    if call.error is not None:
        return f"{call.name or '?'}: unreadable call ({call.error})"
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in call.arguments.items())
    return f"{call.name}({args})"


def describe_result(result: ToolResult) -> str:
    content = result.content
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
