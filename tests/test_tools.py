"""Tools (issue 18): Gemma 4's call format, functions files, the loop, the CLI options, the server
engine's `tool_calls`, and real llama.cpp runs on the tiny Gemma 4 model.

What is checked against llama.cpp itself: the grammar compiles in llama.cpp and its grammar engine
accepts what the official Gemma 4 template writes for a call (and refuses broken calls); the
official template (read from the llama-cpp-python sdist when it is there) renders our messages as
Google's format, and the calls it writes parse back to the same arguments. What only a scripted
or random-weight model shows: that the loop runs calls, feeds results back and stops.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_safety_server import Handler, Script, server  # noqa: F401  (fixture)

from gemmapipe.cli.app import run
from gemmapipe.core.engine import gemma4
from gemmapipe.core.engine.base import EngineConfig, GenerateOptions
from gemmapipe.core.engine.parts import Image, Message, Text, ToolCall, ToolResult
from gemmapipe.core.engine.template import render_prompt
from gemmapipe.core.errors import ExitStatus, ModelError, UsageError
from gemmapipe.core.tasks.chat import ChatSession, run_tools
from gemmapipe.core.tools import Toolbox, load_functions, tool_from_function

from fake_engine import FakeEngine, fake_engine  # noqa: F401  (fixture)

SDIST = Path(os.environ.get("GEMMAPIPE_LLAMA_SDIST", "/tmp/llama-sdist/llama_cpp_python-0.3.36"))
OFFICIAL = SDIST / "vendor/llama.cpp/models/templates/google-gemma-4-31B-it.jinja"

ADD = {"type": "function", "function": {"name": "add", "description": "Add two numbers.",
                                         "parameters": {"type": "object",
                                                        "properties": {"a": {"type": "integer"},
                                                                       "b": {"type": "integer"}},
                                                        "required": ["a", "b"]}}}


def official_template() -> str:
    if not OFFICIAL.is_file():
        pytest.skip(f"the official Gemma 4 template is not here ({OFFICIAL}: unpack the llama-cpp-python 0.3.36 "
                    "sdist there, or point GEMMAPIPE_LLAMA_SDIST at it)")
    return OFFICIAL.read_text(encoding="utf-8")


# --- the call format ------------------------------------------------------------------------------------
def test_parse_nested_arguments() -> None:
    call = gemma4.parse_call('call:plan{trip:{from:<|"|>Paris, FR<|"|>,stops:[1,-2.5,3e2,true,null,<|"|>a:b}<|"|>]},'
                             'n:0,note:<|"|><|"|>}')
    assert call.error is None and call.name == "plan"
    assert call.arguments == {"trip": {"from": "Paris, FR", "stops": [1, -2.5, 300.0, True, None, "a:b}"]},
                              "n": 0, "note": ""}


def test_parse_is_lenient_where_llama_cpp_is() -> None:
    # whitespace after { , : and before }, as llama.cpp's gemma4 grammar allows; quoted keys too
    assert gemma4.parse_call('call:f{ a: 1,\n b:[ 1, 2 ] }').arguments == {"a": 1, "b": [1, 2]}
    assert gemma4.parse_call('call:f{<|"|>a b<|"|>:1}').arguments == {"a b": 1}
    assert gemma4.parse_call("call:f{}").arguments == {}


@pytest.mark.parametrize(("body", "why"), [
    ("call:f{a:1", "expected , or } in an object"),
    ('call:f{a:<|"|>open}', 'a string that is not closed with <|"|>'),
    ('call:f{a:"x"}', 'a string in " quotes'),
    ("call:f{a:1} extra", "text after the arguments"),
    ("call:f(a=1)", "expected { after the tool name"),
    ("f{a:1}", "a call must start with call:NAME{"),
    ("call:f{a:nope}", "expected a value"),
    ("call:{a:1}", "no tool name after call:"),
])
def test_malformed_calls_are_errors_not_exceptions(body: str, why: str) -> None:
    call = gemma4.parse_call(body)
    assert call.error is not None and why in call.error
    assert call.raw == f"<|tool_call>{body}<tool_call|>"


_keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=8)
_strings = st.text(max_size=20).filter(lambda s: '<|"|>' not in s)
_values = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | _strings
                       | st.floats(allow_nan=False, allow_infinity=False, width=32).map(float),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
                       max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5))
def test_format_then_parse_round_trips(args: dict[str, Any]) -> None:
    text = gemma4.format_call("f", args)
    body = text[len(gemma4.CALL_OPEN):-len(gemma4.CALL_CLOSE)]
    call = gemma4.parse_call(body)
    assert call.error is None and call.arguments == json.loads(json.dumps(args))


def test_splitter_streams_text_and_holds_back_markers() -> None:
    splitter = gemma4.CallSplitter()
    pieces = ["Let me ", "check.<|tool", "_call>call:add{a:", "1,b:2}<tool_", "call|><|tool_call>call:add{}<tool_call|>",
              " ok <|tool"]
    shown = [splitter.feed(p) for p in pieces]
    assert shown == ["Let me ", "check.", "", "", "", " ok "]
    assert splitter.finish() == "<|tool"  # a marker that never completed is text after all
    assert [(c.name, c.arguments, c.error) for c in splitter.calls] == [("add", {"a": 1, "b": 2}, None),
                                                                         ("add", {}, None)]


def test_splitter_reports_a_call_cut_off_by_the_token_limit() -> None:
    seen: list[ToolCall] = []
    out = "".join(gemma4.split_calls(iter(["Sure.", "<|tool_call>call:add{a:1,"]), seen.append))
    assert out == "Sure."
    assert len(seen) == 1 and seen[0].name == "add"
    assert seen[0].error is not None and seen[0].error.startswith("the answer stopped inside the call")


# --- the official template (llama.cpp's copy of Google's) ------------------------------------------------
def test_official_template_renders_declarations_calls_and_results() -> None:
    t = official_template()
    msgs = [Message("system", [Text("Be brief.")]), Message.user("2+3? And the weather?"),
            Message("assistant", [Text("Checking."), ToolCall("add", {"a": 2, "b": 3}, id="c1"),
                                  ToolCall("weather", {"where": {"city": "Paris", "days": [1, 2]}}, id="c2")]),
            Message.tool(ToolResult("add", 5, "c1")),
            Message.tool(ToolResult("weather", {"sky": "sunny", "temp": 15}, "c2"))]
    weather = {"type": "function", "function": {"name": "weather", "description": "Weather.",
                                                "parameters": {"type": "object", "properties": {
                                                    "where": {"type": "object", "description": "Place."}}}}}
    text = render_prompt(msgs, template=t, marker="<__media__>", bos_text="<bos>", tools=[ADD, weather])
    assert text == (
        '<|turn>system\nBe brief.'
        '<|tool>declaration:add{description:<|"|>Add two numbers.<|"|>,parameters:{properties:{'
        'a:{type:<|"|>INTEGER<|"|>},b:{type:<|"|>INTEGER<|"|>}},required:[<|"|>a<|"|>,<|"|>b<|"|>],'
        'type:<|"|>OBJECT<|"|>}}<tool|>'
        '<|tool>declaration:weather{description:<|"|>Weather.<|"|>,parameters:{properties:{'
        'where:{description:<|"|>Place.<|"|>,properties:{},type:<|"|>OBJECT<|"|>}},type:<|"|>OBJECT<|"|>}}<tool|><turn|>\n'
        '<|turn>user\n2+3? And the weather?<turn|>\n'
        '<|turn>model\n'
        '<|tool_call>call:add{a:2,b:3}<tool_call|>'
        '<|tool_call>call:weather{where:{city:<|"|>Paris<|"|>,days:[1,2]}}<tool_call|>'
        '<|tool_response>response:add{value:5}<tool_response|>'
        '<|tool_response>response:weather{sky:<|"|>sunny<|"|>,temp:15}<tool_response|>')
    # no generation prompt after results: the model goes on in its own turn
    final = render_prompt([*msgs, Message("assistant", [Text("5, and sunny.")])], template=t, marker="<__media__>",
                          bos_text="<bos>", tools=[ADD, weather], add_generation_prompt=False)
    assert final.endswith("<tool_response|>5, and sunny.<turn|>\n")


def test_calls_the_official_template_writes_parse_back_and_match_ours() -> None:
    t = official_template()
    args = {"q": "a, b: {c}", "n": [1, {"deep": [True, None, -0.5]}], "flag": False}
    text = render_prompt([Message.user("x"), Message("assistant", [ToolCall("search", args)])], template=t,
                         marker="<__media__>", bos_text="<bos>", tools=[ADD], add_generation_prompt=False)
    written = text[text.index(gemma4.CALL_OPEN):text.index(gemma4.CALL_CLOSE) + len(gemma4.CALL_CLOSE)]
    assert written == gemma4.format_call("search", args)  # so a generated call is re-read as the same tokens
    seen: list[ToolCall] = []
    assert "".join(gemma4.split_calls(iter([written]), seen.append)) == ""
    assert seen[0].arguments == args


def test_a_template_without_tools_is_refused() -> None:
    with pytest.raises(ModelError, match="does not declare tools"):
        render_prompt([Message.user("x")], template="{{ messages }}", marker="m", bos_text="", tools=[ADD])


def test_other_templates_get_openai_tool_messages() -> None:
    t = ("{% for m in messages %}[{{ m.role }}|{{ m.content }}|{{ m.tool_calls | default([]) | length }}"
         "|{{ m.tool_call_id | default('') }}]{% endfor %}{% for t in tools %}<{{ t.function.name }}>{% endfor %}")
    msgs = [Message.user("q"), Message("assistant", [ToolCall("add", {"a": 1}, id="c9")]),
            Message.tool(ToolResult("add", {"sum": 1}, "c9"))]
    assert render_prompt(msgs, template=t, marker="m", bos_text="", tools=[ADD]) == \
        '[user|q|0|][assistant||1|][tool|{"sum": 1}|0|c9]<add>'


# --- functions files ----------------------------------------------------------------------------------------
FUNCS = '''
"""Tools for the tests."""
import json
from dataclasses import dataclass
from enum import Enum
from typing import Literal
from os.path import join  # imported: not a tool


class Unit(Enum):
    C = "celsius"
    F = "fahrenheit"


@dataclass
class Place:
    city: str
    country: str = "FR"


def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


def weather(place: Place, unit: Unit = Unit.C, days: list[int] | None = None, mode: Literal["a", "b"] = "a",
            note=None) -> dict:
    """Weather for a place.

    Second paragraph."""
    return {"place": place, "unit": unit, "days": days}


def shout(text: str) -> str:
    """Upper-case text."""
    return text.upper()


def fail(x: str) -> str:
    """Always fails."""
    raise ValueError("no " + x)


def _helper() -> None:
    pass

LAMBDA = lambda: 1
'''


def write_funcs(tmp_path: Path, text: str = FUNCS, name: str = "tools.py") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_functions_file_gives_its_own_functions_with_schemas(tmp_path: Path) -> None:
    tools = {t.name: t for t in load_functions(str(write_funcs(tmp_path)))}
    assert sorted(tools) == ["add", "fail", "shout", "weather"]  # not join, _helper, Place, the lambda
    assert tools["add"].description == "Add two integers."
    assert tools["add"].parameters == {"type": "object", "required": ["a"],
                                       "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "default": 0}}}
    w = tools["weather"].parameters
    assert w["required"] == ["place"]
    assert w["properties"]["place"] == {"type": "object", "required": ["city"],
                                        "properties": {"city": {"type": "string"}, "country": {"type": "string"}}}
    assert w["properties"]["unit"] == {"type": "string", "enum": ["celsius", "fahrenheit"]}
    assert w["properties"]["days"] == {"type": "array", "items": {"type": "integer"}, "nullable": True, "default": None}
    assert w["properties"]["mode"] == {"type": "string", "enum": ["a", "b"], "default": "a"}
    assert w["properties"]["note"] == {"type": "string", "default": None}  # no hint: a string, as in llm
    assert tools["weather"].description.startswith("Weather for a place.\n\nSecond paragraph.")


def test_schema_of_future_annotations(tmp_path: Path) -> None:
    src = "from __future__ import annotations\n\ndef f(x: list[str], y: dict[str, float] | None = None) -> str:\n" \
          "    return ''\n"
    (tool,) = load_functions(str(write_funcs(tmp_path, src)))
    assert tool.parameters["properties"] == {"x": {"type": "array", "items": {"type": "string"}},
                                             "y": {"type": "object", "additionalProperties": {"type": "number"},
                                                   "nullable": True, "default": None}}


@pytest.mark.parametrize(("text", "why"), [
    ("def f(:\n", "line 1: invalid syntax"),
    ("raise RuntimeError('boom')\n", "failed while loading: RuntimeError: boom"),
    ("x = 1\n", "defines no function"),
    ("def f(a, /):\n    pass\n", "positional-only"),
])
def test_broken_functions_files_are_usage_errors(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        load_functions(str(write_funcs(tmp_path, text)))


def test_the_same_name_in_two_files_is_refused(tmp_path: Path) -> None:
    a = write_funcs(tmp_path, "def add(a: int) -> int:\n    return a\n", "a.py")
    with pytest.raises(UsageError, match="is defined in both"):
        Toolbox.from_files([str(a), str(write_funcs(tmp_path))])


def test_calls_that_go_wrong_are_told_to_the_model(tmp_path: Path) -> None:
    box = Toolbox.from_files([str(write_funcs(tmp_path))])
    assert box.run(ToolCall("add", {"a": 2, "b": 3}, id="x")) == ToolResult("add", 5, "x")
    assert box.run(ToolCall("shout", {"text": "hi"})).content == "HI"
    assert box.run(ToolCall("weather", {"place": {"city": "Oslo"}})).content == \
        {"place": {"city": "Oslo", "country": "FR"}, "unit": "celsius", "days": None}  # built as a Place, back as JSON
    for call, said in [(ToolCall("nope", {}), "there is no tool named 'nope'; the tools are: add, weather, shout, fail"),
                       (ToolCall("add", {"c": 1}), "wrong arguments for add: missing a required argument: 'a'"),
                       (ToolCall("fail", {"x": "way"}), "fail raised ValueError: no way"),
                       (gemma4.parse_call("call:add{a:"), "the call could not be read: expected a value")]:
        content = box.run(call).content
        assert content.startswith("error: ") and said in content


def test_a_result_that_is_neither_text_nor_json_becomes_text() -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    def thing() -> Thing:
        """A thing."""
        return Thing()

    def odd() -> Unprintable:
        """Odd."""
        return Unprintable()

    box = Toolbox([tool_from_function(thing), tool_from_function(odd)])
    assert box.run(ToolCall("thing", {})).content == "a thing"
    assert box.run(ToolCall("odd", {})).content == "(a Unprintable that cannot be written out)"


def test_a_huge_result_is_cut() -> None:
    def big() -> str:
        """Big."""
        return "x" * 100_000

    content = Toolbox([tool_from_function(big)]).run(ToolCall("big", {})).content
    assert len(content) < 33_000 and "[cut: the result was 100000 characters" in content


# --- the loop, with a scripted engine ---------------------------------------------------------------------
def _box(*fns: Any, **kw: Any) -> Toolbox:
    return Toolbox([tool_from_function(f) for f in fns], **kw)


def add(a: int, b: int = 0) -> int:
    """Add."""
    return a + b


def echo(data: dict[str, Any]) -> dict[str, Any]:
    """Echo."""
    return data


def test_loop_runs_a_call_and_gives_the_result_back() -> None:
    eng = FakeEngine(replies=['Let me add.<|tool_call>call:add{a:2,b:3}<tool_call|>', "It is 5."])
    convo = ChatSession(tools=_box(add))
    out = "".join(convo.ask(eng, "2+3?", [], GenerateOptions()))
    assert out == "Let me add.It is 5."
    roles = [m.role for m in convo.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert convo.messages[1].tool_calls == [ToolCall("add", {"a": 2, "b": 3}, id="call_1",
                                                     raw="<|tool_call>call:add{a:2,b:3}<tool_call|>")]
    assert convo.messages[2].parts == [ToolResult("add", 5, "call_1")]
    second, opts = eng.requests[1]
    assert second[-1].role == "tool" and opts.tools == _box(add).declarations()
    assert convo.to_json()["turns"] == [{"role": "user", "text": "2+3?", "attachments": []},
                                        {"role": "assistant", "text": "Let me add.It is 5."}]


def test_loop_passes_nested_arguments() -> None:
    eng = FakeEngine(replies=['<|tool_call>call:echo{data:{a:[1,{b:<|"|>x y<|"|>}]}}<tool_call|>', "done"])
    convo = ChatSession(tools=_box(echo))
    assert "".join(convo.ask(eng, "q", [], GenerateOptions())) == "done"
    assert convo.messages[2].parts[0] == ToolResult("echo", {"a": [1, {"b": "x y"}]}, "call_1")


def test_loop_reports_a_malformed_call_and_goes_on() -> None:
    eng = FakeEngine(replies=['<|tool_call>call:add{a:"two"}<tool_call|>', "sorry"])
    convo = ChatSession(tools=_box(add))
    assert "".join(convo.ask(eng, "q", [], GenerateOptions())) == "sorry"
    result = convo.messages[2].parts[0]
    assert isinstance(result, ToolResult) and result.content.startswith("error: the call could not be read: "
                                                                        'a string in " quotes')


def test_chain_limit_stops_the_loop() -> None:
    warnings: list[str] = []
    eng = FakeEngine(replies=["<|tool_call>call:add{a:1}<tool_call|>"])  # calls forever
    convo = ChatSession(tools=_box(add, chain_limit=2), warn=warnings.append)
    assert "".join(convo.ask(eng, "q", [], GenerateOptions())) == ""
    # 2 steps run, the 3rd step's call refused, a last step with calls not asked for
    assert len(eng.requests) == 4
    assert [r[1].tool_choice for r in eng.requests] == ["auto", "auto", "auto", "none"]
    results = [m.parts[0].content for m in convo.messages if m.role == "tool"]
    assert results[:2] == [1, 1] and results[2].startswith("error: not run: the limit of 2 steps")
    assert convo.messages[-1].tool_calls == []  # the unrun last calls are not kept
    assert warnings == ["the model still asked for 1 tool call(s) after 2 steps of calls; they were not run "
                        "(raise {chain_limit})"]


def test_chain_limit_0_is_no_limit() -> None:
    eng = FakeEngine(replies=["<|tool_call>call:add{a:1}<tool_call|>"] * 9 + ["end"])
    convo = ChatSession(tools=_box(add, chain_limit=0))
    assert "".join(convo.ask(eng, "q", [], GenerateOptions())) == "end"
    assert len(eng.requests) == 10


def test_a_failed_step_leaves_the_conversation_as_it_was() -> None:
    class Broken(FakeEngine):
        def generate(self, messages: list[Message], options: GenerateOptions) -> Any:
            if self.requests:
                raise RuntimeError("decode failed")
            return super().generate(messages, options)

    convo = ChatSession(tools=_box(add))
    with pytest.raises(RuntimeError):
        "".join(convo.ask(Broken(replies=["<|tool_call>call:add{a:1}<tool_call|>"]), "q", [], GenerateOptions()))
    assert convo.messages == [] and convo.attachments == []


# --- through the command line (fake model) ----------------------------------------------------------------
@pytest.fixture
def funcs(tmp_path: Path) -> Path:
    return write_funcs(tmp_path)


pytest_cli = pytest.mark.usefixtures("fake_model")


@pytest_cli
def test_cli_functions_debug_and_answer(funcs: Path, capsys: pytest.CaptureFixture[str],
                                        fake_engine: list) -> None:  # noqa: F811
    fake_engine.replies = ['<|tool_call>call:shout{text:<|"|>hi there<|"|>}<tool_call|>', "It says HI THERE."]
    assert run(["chat", "--functions", str(funcs), "--tools-debug", "Shout hi there."]) == 0
    out, err = capsys.readouterr()
    assert out == "It says HI THERE.\n"
    assert 'gemmapipe: tool call: shout(text="hi there")\ngemmapipe: tool result: HI THERE\n' in err
    first = fake_engine[0].requests[0][1]
    assert [d["function"]["name"] for d in first.tools] == ["add", "weather", "shout", "fail"]


@pytest_cli
def test_cli_approval_in_a_pipe_refuses_without_blocking(funcs: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          fake_engine: list) -> None:  # noqa: F811
    from gemmapipe.cli import toolsui

    monkeypatch.setattr(toolsui, "TTY", str(tmp_path / "no-such-terminal"))  # what setsid/cron/CI give
    fake_engine.replies = ["<|tool_call>call:add{a:1,b:2}<tool_call|>", "I was not allowed."]
    assert run(["chat", "--functions", str(funcs), "--tools-approve", "1+2?"]) == 0
    out, err = capsys.readouterr()
    assert out == "I was not allowed.\n"
    assert "gemmapipe: warning: no terminal to ask whether to run add(a=1, b=2): refused (the model is told)" in err
    told = fake_engine[0].requests[1][0][-1].parts[0]
    assert told.content == "error: the user refused this call; do not try it again, answer without it"


@pytest_cli
@pytest.mark.parametrize(("answer", "runs"), [("y\n", True), ("n\n", False), ("\n", False)])
def test_cli_approval_asks_the_terminal_not_stdin(funcs: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, answer: str, runs: bool,
                                                  fake_engine: list) -> None:  # noqa: F811
    import io
    import tty

    from gemmapipe.cli import toolsui

    master, slave = os.openpty()
    tty.setraw(slave)  # no echo: what the master reads back is only what gemmapipe wrote
    try:
        monkeypatch.setattr(toolsui, "TTY", os.ttyname(slave))
        monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped text is the prompt, never the answer
        os.write(master, answer.encode())
        fake_engine.replies = ["<|tool_call>call:add{a:1,b:2}<tool_call|>", "done"]
        assert run(["chat", "--functions", str(funcs), "--tools-approve", "1+2?"]) == 0
        asked = os.read(master, 4096).decode()
    finally:
        os.close(master)
        os.close(slave)
    assert "gemmapipe: run add(a=1, b=2)? [y/N] " in asked
    told = fake_engine[0].requests[1][0][-1].parts[0].content
    assert (told == 3) is runs
    assert "y" in fake_engine[0].requests[0][0][0].text  # stdin's text went to the prompt


@pytest_cli
def test_cli_attachments_and_tools_share_a_conversation(funcs: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        fake_engine: list) -> None:  # noqa: F811
    from media_factory import write_image

    img = write_image(tmp_path / "photo.png", (96, 96))
    fake_engine.replies = ["<|tool_call>call:add{a:40,b:2}<tool_call|>", "42 things."]
    assert run(["chat", "-a", str(img), "--functions", str(funcs), "How many, plus 2?"]) == 0
    assert capsys.readouterr().out == "42 things.\n"
    second = fake_engine[0].requests[1][0]
    assert any(isinstance(p, Image) for p in second[0].parts)  # the image is still in the conversation
    assert [m.role for m in second] == ["user", "assistant", "tool"]


@pytest_cli
def test_cli_chain_limit_option(funcs: Path, capsys: pytest.CaptureFixture[str],
                                fake_engine: list) -> None:  # noqa: F811
    fake_engine.replies = ["<|tool_call>call:add{a:1}<tool_call|>"]
    assert run(["chat", "--functions", str(funcs), "--chain-limit", "1", "q"]) == 0
    err = capsys.readouterr().err
    assert "after 1 steps of calls; they were not run (raise --chain-limit)" in err
    assert len(fake_engine[0].requests) == 3


@pytest_cli
@pytest.mark.parametrize(("args", "said"), [
    (["--schema", '{"type": "object"}'], "--functions: cannot be combined with --schema"),
    (["--functions", "missing.py"], "functions missing.py: cannot read: No such file or directory"),
])
def test_cli_tool_usage_errors_come_before_the_model(funcs: Path, capsys: pytest.CaptureFixture[str],
                                                     args: list[str], said: str,
                                                     fake_engine: list) -> None:  # noqa: F811
    assert run(["chat", "--functions", str(funcs), *args, "q"]) == ExitStatus.USAGE
    assert said in capsys.readouterr().err
    assert not fake_engine


# --- the server engine: OpenAI tools and tool_calls, on loopback -------------------------------------------
def _tool_stream(h: Handler, n: int) -> None:
    h.sse_head()
    if n == 0:
        h.event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Adding. "}}]})
        h.event({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_a", "type": "function", "function": {"name": "add", "arguments": ""}}]}}]})
        for piece in ['{"a": ', "2, ", '"b": 3}']:
            h.event({"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": piece}}]}}]})
        h.event({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 1, "id": "call_b", "function": {"name": "shout", "arguments": "{not json"}}]}}]})
        h.done("tool_calls")
    else:
        h.content("Five.")
        h.done()
    h.raw(b"data: [DONE]\n\n")


def test_remote_loop_with_streamed_tool_calls(server: tuple[str, Script], funcs: Path,  # noqa: F811
                                              capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server
    script.post = _tool_stream
    assert run(["chat", "--server", url, "--retries", "0", "--functions", str(funcs), "--tools-debug", "2+3?"]) == 0
    out, err = capsys.readouterr()
    assert out == "Adding. Five.\n"
    assert "tool call: add(a=2, b=3)\ngemmapipe: tool result: 5" in err
    first, second = script.bodies()
    assert [t["function"]["name"] for t in first["tools"]] == ["add", "weather", "shout", "fail"]
    assert first["tool_choice"] == "auto"
    assert second["messages"][1] == {
        "role": "assistant", "content": "Adding. ",
        "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}},
                       {"id": "call_b", "type": "function", "function": {"name": "shout", "arguments": "{}"}}]}
    assert second["messages"][2] == {"role": "tool", "tool_call_id": "call_a", "name": "add", "content": "5"}
    bad = second["messages"][3]
    assert bad["tool_call_id"] == "call_b" and bad["content"].startswith("error: the call could not be read: its "
                                                                         "arguments are not JSON")


def test_remote_whole_answer_with_tool_calls(server: tuple[str, Script], funcs: Path,  # noqa: F811
                                             capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server

    def answer(h: Handler, n: int) -> None:
        if n == 0:
            h.send_json(200, {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "tool_calls": [
                    {"id": "x", "type": "function", "function": {"name": "weather",
                                                                 "arguments": {"place": {"city": "Oslo"}}}}]}}]})
        else:
            h.send_json(200, {"choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": "Cold."}}]})

    script.post = answer
    assert run(["chat", "--server", url, "--retries", "0", "--functions", str(funcs), "Oslo?"]) == 0
    assert capsys.readouterr().out == "Cold.\n"
    result = script.bodies()[1]["messages"][-1]
    assert json.loads(result["content"]) == {"place": {"city": "Oslo", "country": "FR"}, "unit": "celsius", "days": None}


def test_remote_malformed_tool_calls_are_exit_1(server: tuple[str, Script], funcs: Path,  # noqa: F811
                                                capsys: pytest.CaptureFixture[str]) -> None:
    url, script = server

    def answer(h: Handler, n: int) -> None:
        h.sse_head()
        h.event({"choices": [{"index": 0, "delta": {"tool_calls": {"name": "add"}}}]})
        h.raw(b"data: [DONE]\n\n")

    script.post = answer
    assert run(["chat", "--server", url, "--retries", "0", "--functions", str(funcs), "q"]) == ExitStatus.ERROR
    assert "malformed answer: choices[0].delta.tool_calls is an object, not a list" in capsys.readouterr().err


# --- real llama.cpp on the tiny Gemma 4 model ---------------------------------------------------------------
#: Gemma 4's tool format in a few lines (the official template's declarations are longer; its
#: rendering is checked above): declarations in the system turn, calls and results in the model's turn.
TOOLS_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if tools -%}{{ '<|turn>system\\n' }}"
    "{%- for t in tools -%}<|tool>declaration:{{ t.function.name }}{description:<|\"|>"
    "{{ t.function.description }}<|\"|>}<tool|>{%- endfor -%}{{ '<turn|>\\n' }}{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}{{ '<|turn>model\\n' }}"
    "{%- for c in m.tool_calls | default([]) -%}"
    "{{ '<|tool_call>call:' + c.function.name + '{' }}"
    "{%- for k, v in c.function.arguments | dictsort -%}{{ k }}:{{ v }}{{ ',' if not loop.last }}{%- endfor -%}"
    "}<tool_call|>{%- endfor -%}"
    "{%- for r in m.tool_responses | default([]) -%}"
    "<|tool_response>response:{{ r.name }}{value:{{ r.response }}}<tool_response|>{%- endfor -%}"
    "{{ m.content }}{%- if not m.tool_responses or m.content -%}{{ '<turn|>\\n' }}{%- endif -%}"
    "{%- else -%}{{ '<|turn>' + m.role + '\\n' + (m.content | trim) + '<turn|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and not messages[-1].tool_responses -%}{{ '<|turn>model\\n' }}{%- endif -%}"
)


@pytest.fixture(scope="module")
def tools_engine(tiny_gemma4: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gemmapipe.core.engine.local import LocalEngine
    from gemmapipe.core.model import resolve

    from models import tiny_gemma4 as tg

    path = tg.write_tiny_gemma4_text(tmp_path_factory.mktemp("tools") / "tiny-tools.gguf",
                                     chat_template=TOOLS_TEMPLATE)
    pair = resolve(str(path), None, needs=set())
    with LocalEngine(EngineConfig(model=path), pair, n_ctx=2048) as eng:
        yield eng


def test_tiny_model_forced_call_parses_and_ends_the_answer(tools_engine: Any) -> None:
    calls: list[ToolCall] = []
    opts = GenerateOptions(max_tokens=200, tools=[ADD], tool_choice="required", on_tool_call=calls.append)
    assert "".join(tools_engine.generate([Message.user("2+3?")], opts)) == ""  # the call is not text
    assert tools_engine.stats.stop_reason == "eog"  # one call, then an end-of-generation token
    assert len(calls) == 1 and calls[0].name == "add" and calls[0].error is None
    assert set(calls[0].arguments) <= {"a", "b"}  # the grammar knows the parameters' names


def test_tiny_model_lazy_grammar_leaves_free_text_alone(tools_engine: Any) -> None:
    msgs = [Message.user("Say something.")]
    calls: list[ToolCall] = []
    lazy = "".join(tools_engine.generate(msgs, GenerateOptions(max_tokens=40, tools=[ADD],
                                                               on_tool_call=calls.append)))
    free = "".join(tools_engine.generate(msgs, GenerateOptions(max_tokens=40, tools=[ADD], tool_choice="none")))
    assert lazy == free and lazy and not calls


def test_tiny_model_exact_call_through_a_grammar_and_the_loop(tools_engine: Any) -> None:
    """A grammar forcing one exact call: the engine hands it over parsed, the loop runs it, the
    result goes back through the template into the same model turn, and the KV cache is reused."""
    forced = 'root ::= "<|tool_call>call:add{a:2,b:40}<tool_call|>"'
    seen: list[tuple[ToolCall, ToolResult]] = []
    box = _box(add, chain_limit=1, on_call=lambda c, r: seen.append((c, r)))
    msgs: list[Message] = [Message.user("2+40?")]
    opts = GenerateOptions(max_tokens=80, grammar=forced)  # the grammar may spell markers in characters
    "".join(run_tools(tools_engine, lambda: list(msgs), msgs, opts, box, warn=lambda _: None))
    assert seen[0] == (ToolCall("add", {"a": 2, "b": 40}, id="call_1",
                                raw="<|tool_call>call:add{a:2,b:40}<tool_call|>"), ToolResult("add", 42, "call_1"))
    prompt = render_prompt(msgs[:3], template=tools_engine.template, marker=tools_engine.marker, bos_text="",
                           tools=box.declarations())
    assert prompt.endswith("<|turn>model\n<|tool_call>call:add{a:2,b:40}<tool_call|>"
                           "<|tool_response>response:add{value:42}<tool_response|>")
    # the forced call again in step 2 is over the limit of 1: refused, then one more step
    assert [m.role for m in msgs] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert str(msgs[4].parts[0].content).startswith("error: not run")  # type: ignore[union-attr]
    st_ = tools_engine.stats
    assert 0 < st_.prompt_evaluated < st_.prompt_tokens  # the conversation so far came from the KV cache


def _grammar_accepts(engine: Any, grammar_text: str, text: str) -> bool:
    """Feed `text`'s tokens through llama.cpp's grammar sampler: does each one survive the grammar?"""
    import llama_cpp as L

    sampler = L.llama_sampler_init_grammar(engine._vocab, grammar_text.encode(), b"root")
    assert sampler, "llama.cpp rejected the grammar"
    try:
        for tok in engine.tokenize(text, add_special=False, parse_special=True):
            data = (L.llama_token_data * 1)(L.llama_token_data(tok, 1.0, 0.0))
            arr = L.llama_token_data_array(data, 1, -1, False)
            L.llama_sampler_apply(sampler, ctypes.byref(arr))
            if data[0].logit == float("-inf"):
                return False
            L.llama_sampler_accept(sampler, tok)
        return True
    finally:
        L.llama_sampler_free(sampler)


def test_llama_cpp_grammar_engine_accepts_what_the_official_template_writes(tools_engine: Any) -> None:
    t = official_template()
    search = {"type": "function", "function": {"name": "search", "description": "Search.", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "array"}, "flag": {"type": "boolean"}}}}}
    args = {"q": "a, b: {c} <|x", "n": [1, {"deep": [True, None, -0.5, 1e-3]}], "flag": False}
    text = render_prompt([Message.user("x"), Message("assistant", [ToolCall("search", args)])], template=t,
                         marker="<__media__>", bos_text="<bos>", tools=[search], add_generation_prompt=False)
    written = text[text.index(gemma4.CALL_OPEN):text.index(gemma4.CALL_CLOSE) + len(gemma4.CALL_CLOSE)]
    g = gemma4.grammar([search, ADD])
    assert _grammar_accepts(tools_engine, g, written)
    assert _grammar_accepts(tools_engine, g, written + gemma4.format_call("add", {"a": 1}))  # parallel calls
    for broken in ['<|tool_call>call:search{q:"quoted"}<tool_call|>',  # JSON quotes
                   "<|tool_call>call:other{}<tool_call|>",  # not a declared tool
                   "<|tool_call>call:add{c:1}<tool_call|>",  # not one of add's parameters
                   '<|tool_call>call:search{q:<|"|>x<|"|>y<|"|>}<tool_call|>']:  # <|"|> inside a string
        assert not _grammar_accepts(tools_engine, g, broken), broken


def test_lazy_sampler_is_built_for_a_vocabulary_without_the_trigger_token(tools_engine: Any) -> None:
    import llama_cpp as L

    s = gemma4.lazy_grammar_sampler(L, tools_engine._vocab, gemma4.grammar([ADD]), None)  # pattern trigger
    assert s
    L.llama_sampler_free(s)

