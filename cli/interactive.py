"""The interactive chat: readline history, replies streamed as Markdown with Rich.

Earlier turns and media stay in the engine's KV cache, so each turn evaluates only what is new.
"""

import contextlib
import sys
from pathlib import Path
from typing import Any


def _history_file() -> Path:
    from gemmapipe.core.config import xdg_dir

    return xdg_dir("data") / "history"


def repl(convo: Any, engine_for: Any, options: Any, parts: list[Any], specs: list[str], *,
         image_tokens: int, store: Path | None, info: Any = None) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.markdown import Markdown
    from rich.markup import escape

    from gemmapipe.core.engine.base import StatefulEngine
    from gemmapipe.core.errors import GemmapipeError
    from gemmapipe.core.tasks.chat import attachment_parts

    try:
        import readline

        hist = _history_file()
        with contextlib.suppress(OSError):
            hist.parent.mkdir(parents=True, exist_ok=True)
            readline.read_history_file(hist)
    except (ImportError, OSError):
        readline = None  # type: ignore[assignment]

    console = Console()
    err = Console(stderr=True)
    err.print("[dim]gemmapipe chat: /attach FILE, /reset, /save FILE, /exit[/dim]")
    pending, pending_specs = list(parts), list(specs)
    engine = engine_for()
    try:
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                console.print()
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                cmd, _, arg = line.partition(" ")
                arg = arg.strip()
                if cmd in ("/exit", "/quit"):
                    break
                if cmd == "/reset":
                    convo.reset()
                    if isinstance(engine, StatefulEngine):
                        engine.reset()
                    err.print("[dim]conversation cleared[/dim]")
                elif cmd == "/attach" and arg:
                    try:
                        pending += attachment_parts(arg, image_tokens=image_tokens)
                        pending_specs.append(arg)
                        err.print(f"[dim]attached {arg}[/dim]")
                    except GemmapipeError as exc:
                        err.print(f"[red]error:[/red] {exc.subject}: {exc.reason}")
                elif cmd == "/save" and arg:
                    try:  # a failed save is a message; the conversation goes on
                        convo.save(Path(arg).expanduser())
                        err.print(f"[dim]saved to {arg}[/dim]")
                    except GemmapipeError as exc:
                        err.print(f"[red]error:[/red] {escape(exc.subject)}: {escape(exc.reason)}",
                                  highlight=False, soft_wrap=True)
                else:
                    err.print("[dim]commands: /attach FILE, /reset, /save FILE, /exit[/dim]")
                continue
            text = ""
            with Live(Markdown(""), console=console, refresh_per_second=12) as live:
                for piece in convo.ask(engine, line, pending, options, pending_specs):
                    text += piece
                    live.update(Markdown(text))
            pending, pending_specs = [], []
            if info is not None:
                s = engine.stats
                info(f"prompt {s.prompt_tokens} tokens, {s.prompt_evaluated} evaluated, {s.generated} generated")
            if store is not None:
                try:
                    convo.save(store, make_dirs=True)
                except GemmapipeError as exc:
                    err.print(f"[red]error:[/red] {escape(exc.subject)}: {escape(exc.reason)}",
                              highlight=False, soft_wrap=True)
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                readline.write_history_file(_history_file())
    sys.stdout.flush()
    return 0
