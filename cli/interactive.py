"""The interactive chat: readline history and completion, replies streamed as Markdown with Rich.

Earlier turns and media stay in the engine's KV cache, so each turn evaluates only what is new.

Keys, as in Python's REPL and ollama: Ctrl-C at the prompt clears the line; Ctrl-C during an answer
stops it (marked as interrupted; the part already shown stays in the conversation) and the session
goes on; Ctrl-D or /exit leaves. The signal handler (cli/signals.py) raises KeyboardInterrupt on the
first signal and exits at once on a second one while the first is pending, so each handled Ctrl-C
clears the request (`interrupt.clear()`): the next Ctrl-C is a first one again.
"""

import contextlib
import glob
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMMANDS = {
    "/attach": "FILE  attach an image, audio or video file (or an http(s) URL) to the next prompt",
    "/reset": "forget the conversation",
    "/save": "FILE  save the conversation (load it again with --session FILE)",
    "/help": "this list",
    "/exit": "leave (or Ctrl-D)",
}
BANNER = "gemmapipe chat: /attach FILE, /reset, /save FILE, /help, /exit (or Ctrl-D); Ctrl-C stops an answer"


def _history_file() -> Path:
    from gemmapipe.core.config import xdg_dir

    return xdg_dir("data") / "history"


def complete_paths(text: str) -> list[str]:
    """File names starting with `text` (`~` expanded as typed, folders ending in /)."""
    expanded = os.path.expanduser(text)
    out = []
    for match in sorted(glob.glob(glob.escape(expanded) + "*")):
        shown = text + match[len(expanded):] if expanded != text and match.startswith(expanded) else match
        out.append(shown + "/" if os.path.isdir(match) else shown)
    return out


def completer(line: str, text: str) -> list[str]:
    """Candidates for readline: commands after a leading /, paths after `/attach ` or `/save `."""
    cmd, space, _ = line.partition(" ")
    if not space:
        return [c + " " for c in COMMANDS if c.startswith(text)] if text.startswith("/") else []
    if cmd in ("/attach", "/save"):
        return complete_paths(text)
    return []


def _setup_readline() -> Any:
    try:
        import readline
    except ImportError:
        return None
    with contextlib.suppress(OSError):
        hist = _history_file()
        hist.parent.mkdir(parents=True, exist_ok=True)
        readline.read_history_file(hist)
    matches: list[str] = []

    def complete(text: str, state: int) -> str | None:
        nonlocal matches
        if state == 0:
            matches = completer(readline.get_line_buffer()[: readline.get_begidx()] + text, text)
        return matches[state] if state < len(matches) else None

    readline.set_completer_delims(" \t\n")
    readline.set_completer(complete)
    with contextlib.suppress(Exception):  # a folder completes without a space after it
        readline.set_completion_display_matches_hook(None)
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    return readline


def repl(convo: Any, engine_for: Any, options: Any, parts: list[Any], attachments: list[Any], *,
         image_tokens: int, keep: Path | None, info: Callable[[str], None] | None = None,
         warn: Callable[[str], None] | None = None) -> int:
    """Run the session until Ctrl-D or /exit; after each answer the conversation is saved to `keep`
    (the named session, or "last" for --continue)."""
    from rich.console import Console
    from rich.markup import escape

    from gemmapipe.core import interrupt
    from gemmapipe.core.engine.base import StatefulEngine
    from gemmapipe.core.errors import GemmapipeError
    from gemmapipe.core.tasks.chat import attachment_parts, materialize

    readline = _setup_readline()
    console = Console()
    err = Console(stderr=True, highlight=False, soft_wrap=True)

    def say(text: str) -> None:
        err.print(f"[dim]{escape(text)}[/dim]")

    def error(exc: GemmapipeError) -> None:
        from .errors import for_people

        err.print(f"[red]error:[/red] {escape(for_people(exc.subject))}: {escape(for_people(exc.reason))}")

    say(BANNER)
    pending, pending_att = list(parts), list(attachments)
    engine = engine_for()
    try:
        while True:
            try:
                line = input(">>> ")
            except KeyboardInterrupt:  # clear the line, as Python and ollama do
                interrupt.clear()
                sys.stdout.write("\n")
                sys.stdout.flush()
                continue
            except EOFError:
                console.print()
                break
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not _command(line, convo=convo, engine=engine, pending=pending, pending_att=pending_att,
                                    image_tokens=image_tokens, say=say, error=error, warn=warn,
                                    attachment_parts=attachment_parts, materialize=materialize,
                                    stateful=StatefulEngine):
                        break
                    continue
                stopped = _answer(console, convo, engine, line, pending, options, pending_att)
                pending, pending_att = [], []
                if stopped:
                    interrupt.clear()
                    say("[interrupted]")
                if info is not None:
                    s = engine.stats
                    info(f"prompt {s.prompt_tokens} tokens, {s.prompt_evaluated} evaluated, {s.generated} generated")
                if keep is not None and convo.messages:
                    try:
                        convo.save(keep, make_dirs=True)
                    except GemmapipeError as exc:
                        error(exc)
            except KeyboardInterrupt:  # between an answer and the prompt: nothing to stop
                interrupt.clear()
                say("[interrupted]")
            except GemmapipeError as exc:  # a failed turn is a message; the session goes on
                error(exc)
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                readline.write_history_file(_history_file())
    sys.stdout.flush()
    return 0


def _answer(console: Any, convo: Any, engine: Any, line: str, parts: list[Any], options: Any,
            attachments: list[Any]) -> bool:
    """Stream one answer as Markdown; True when Ctrl-C stopped it (the part shown stays)."""
    from rich.live import Live
    from rich.markdown import Markdown

    text = ""
    stream = convo.ask(engine, line, parts, options, attachments)
    try:
        with Live(Markdown(""), console=console, refresh_per_second=12) as live:
            for piece in stream:
                text += piece
                live.update(Markdown(text))
    except KeyboardInterrupt:
        stream.close()  # records the part that was generated
        return True
    return False


def _command(line: str, *, convo: Any, engine: Any, pending: list[Any], pending_att: list[Any], image_tokens: int,
             say: Callable[[str], None], error: Callable[[Any], None], warn: Callable[[str], None] | None,
             attachment_parts: Any, materialize: Any, stateful: Any) -> bool:
    """Run a slash command; False to leave the session."""
    from gemmapipe.core.errors import GemmapipeError

    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    if cmd in ("/exit", "/quit", "/bye"):
        return False
    if cmd == "/reset":
        convo.reset()
        if isinstance(engine, stateful):
            engine.reset()
        say("conversation cleared")
    elif cmd == "/attach":
        if not arg:
            say("usage: /attach FILE (or an http(s) URL)")
            return True
        try:
            att = materialize(arg)
            pending += attachment_parts(att.path, image_tokens=image_tokens, warn=warn, name=att.name)
            pending_att.append(att)
            say(f"attached {arg}")
        except GemmapipeError as exc:
            error(exc)
    elif cmd == "/save":
        if not arg:
            say("usage: /save FILE")
            return True
        try:  # a failed save is a message; the conversation goes on
            target = Path(arg).expanduser().absolute()
            convo.save(target)
            say(f"saved to {arg} (continue it with: gemmapipe chat --session {target})")
        except GemmapipeError as exc:
            error(exc)
    elif cmd in ("/help", "/?"):
        for name, text in COMMANDS.items():
            say(f"{name} {text}")
    else:
        say(f"unknown command {cmd}; commands: {', '.join(COMMANDS)}")
    return True
