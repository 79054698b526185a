"""The shape of the house, checked from the source: no import cycles, core that never names a flag
and loads no terminal library, and plans that match the runs."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"gemmapipe.cli": ROOT / "cli", "gemmapipe.core": ROOT / "core", "gemmapipe": ROOT / "cli" / "_root"}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if prefix != "gemmapipe" and "_root" in path.parts:
                continue
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([prefix, *parts]) if parts else prefix] = path
    return mods


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every gemmapipe module `name` imports when it runs (nested imports too; TYPE_CHECKING blocks not)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.add(alias.name)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join([*base, child.module] if child.module else base)
                else:
                    mod = child.module or ""
                found.add(mod)
                for alias in child.names:  # `from . import chat` imports the module chat
                    found.add(f"{mod}.{alias.name}")
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def test_no_import_cycle_anywhere() -> None:
    mods = _modules()
    known = set(mods)
    graph = {name: _imports(name, path, known) for name, path in mods.items()}
    # A package imports its __init__ first: edges to a package are edges to its __init__ only.
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            dfs(name)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


_FLAG = re.compile(r"(?<![\w-])--[a-z]|gemmapipe (transcribe|diarize|describe|video|chat|models)\b|GEMMAPIPE_[A-Z]")
_OTHER_TOOL = re.compile(r"llama-server[^,;)]*")
_MESSAGE_CALLS = re.compile(r"(Error|BadInput|ContextOverflow|BatchFailed|warn|_log|log|info)$")


def _strings(node: ast.AST) -> list[str]:
    out = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            out.append(sub.value)
    return out


def test_core_messages_name_no_flag_command_or_variable() -> None:
    """Errors and warnings raised in core speak of parameters ({ctx_size}); the CLI names the flags."""
    offenders = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if not _MESSAGE_CALLS.search(name):
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for text in _strings(arg):
                    text = _OTHER_TOOL.sub("", text)  # another program's flags (llama-server --mmproj) may be named
                    if _FLAG.search(text):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    # module-level hint constants handed to those calls
    for path in sorted((ROOT / "core").rglob("*.py")):
        for m in re.finditer(r"^[A-Z_]*HINT[A-Z_]* = \(?\s*\n?((?:\s*\".*\"\n?)+)", path.read_text(), re.M):
            if _FLAG.search(m.group(1)):
                offenders.append(f"{path.relative_to(ROOT)}: {m.group(0)[:60]!r}")
    assert offenders == []


def test_the_flag_table_knows_every_placeholder_core_uses() -> None:
    from gemmapipe.cli.errors import FLAGS

    used = set()
    for path in (ROOT / "core").rglob("*.py"):
        used |= set(re.findall(r"\{([a-z][a-z0-9_]*)\}[^\"']*[\"']", path.read_text()))
        used |= {m for m in re.findall(r'parameter="([a-z_]+)"', path.read_text())}
    placeholders = {u for u in used if u in FLAGS or u.endswith(("_env", "_command")) or u in {
        "ctx_size", "cache_type", "max_tokens", "output_dir", "server", "timeout"}}
    missing = sorted(p for p in placeholders if p not in FLAGS)
    assert missing == []


def test_importing_core_loads_no_terminal_library() -> None:
    code = ("import sys, gemmapipe.core.session, gemmapipe.core.sink, gemmapipe.core.errors, "
            "gemmapipe.core.engine.base, gemmapipe.core.tasks.transcribe, gemmapipe.core.writers; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', 'click')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_nothing_imports_names_from_the_llama_cpp_package() -> None:
    """`from llama_cpp import x` asks the package for `x`, which runs its __init__ (native.bindings
    registers it without): half a second of imports, and its logger then prints llama.cpp's log on
    stderr whatever -v says. Submodules are imported by their full name instead."""
    offenders = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "llama_cpp" and node.level == 0:
                offenders.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name == "llama_cpp" for a in node.names):
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_a_library_error_reads_with_parameter_names() -> None:
    from gemmapipe.cli.errors import for_people
    from gemmapipe.core.errors import ContextOverflow, UsageError

    exc = ContextOverflow("prompt", 5000, 4096)
    assert "raise ctx_size to at least 5000" in str(exc.hint and __import__("gemmapipe.core.errors",
                                                                          fromlist=["render"]).render(exc.hint))
    assert for_people(exc.hint or "") == "raise --ctx-size to at least 5000, or shorten the input"
    err = UsageError(None, "must not be negative", parameter="start")
    assert str(err) == "start: must not be negative"


# --- the context a dry run plans is the one the run loads ---------------------------------------------

@pytest.fixture
def loaded(fake_model: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """n_ctx of every engine the session asks the factory for."""
    from gemmapipe.core import session

    from fake_engine import FakeEngine

    seen: list[int] = []

    def factory(config: object, pair: object, *, n_ctx: int, max_image_tokens: int = 0) -> FakeEngine:
        seen.append(n_ctx)
        return FakeEngine(config=config, n_ctx=n_ctx)

    monkeypatch.setattr(session, "_ENGINE_FACTORY", factory)
    return seen


def _planned_ctx(argv: list[str], capsys: pytest.CaptureFixture[str]) -> int:
    from gemmapipe.cli.app import run

    assert run([*argv, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out.splitlines()[0])
    return int(plan["memory"]["n_ctx"])


@pytest.mark.parametrize("command", ["transcribe", "diarize", "describe", "video"])
@pytest.mark.parametrize("extra", [[], ["--max-tokens", "900"], ["-c", "3000"]])
def test_dry_run_plans_the_context_the_run_loads(command: str, extra: list[str], loaded: list[int], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    import soundfile as sf

    from gemmapipe.cli.app import run

    from media_factory import recorded_speech, write_image, write_video

    if command in ("transcribe", "diarize"):
        media = tmp_path / "a.wav"
        x = np.zeros(4 * 16000, dtype=np.float32)
        x[8000:40000] = recorded_speech(32000)
        sf.write(media, x, 16000)
    elif command == "describe":
        media = write_image(tmp_path / "a.png", (200, 150))
    else:
        media = write_video(tmp_path / "a.mp4", seconds=3.0, with_audio=True)
    argv = [command, *extra, str(media)]
    planned = _planned_ctx(argv, capsys)
    assert run([*argv, "--no-cache"] if command == "video" else argv) == 0
    capsys.readouterr()
    assert loaded and loaded[0] == planned, (planned, loaded)
