"""gemmapipe chat [PROMPT]: one-shot, or an interactive session on a terminal."""

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .options import Common, with_common
from .runner import Runner, read_stdin_text
from .sessions import session_path

HELP_INTERACTIVE = "/attach FILE, /reset, /save FILE, /help, /exit"


@with_common
def command(
    prompt: Annotated[str | None, typer.Argument(help="The prompt; piped stdin text is added to it.",
                                                 show_default=False, metavar="PROMPT")] = None,
    attach: Annotated[list[str] | None, typer.Option("-a", "--attach", show_default=False, metavar="FILE",
                                                     help="Attach an image, audio or video file or http(s) URL "
                                                          "(repeatable; - reads it from stdin).")] = None,
    system: Annotated[str | None, typer.Option("-s", "--system", show_default=False, help="System prompt.")] = None,
    schema: Annotated[str | None, typer.Option("--schema", show_default=False, metavar="SCHEMA",
                                               help="JSON Schema (inline or a file): the answer is valid JSON.")]
    = None,
    think: Annotated[bool, typer.Option("--think", help="Let the model think first; thoughts go to stderr.")]
    = False,
    cont: Annotated[bool, typer.Option("--continue", help="Continue the last conversation.")] = False,
    session: Annotated[str | None, typer.Option("--session", show_default=False, metavar="NAME",
                                                help="Keep the conversation under this name between runs, or "
                                                     "in this file (a path: ./x.json, ~/chats/a.json).")]
    = None,
    list_: Annotated[bool, typer.Option("--list", help="List the kept conversations (name, time, turns, "
                                                       "first prompt) and exit.")] = False,
    image_tokens: Annotated[int, typer.Option("--image-tokens", min=70, max=1120, help="Token budget per image.")]
    = 280,
    functions: Annotated[list[str] | None, typer.Option("--functions", show_default=False, metavar="FILE.py",
                                                        help="Python file whose top-level functions the model may "
                                                             "call as tools (repeatable).")] = None,
    chain_limit: Annotated[int, typer.Option("--chain-limit", min=0, max=1000, metavar="N",
                                             help="Steps of tool calls in a row before the model must answer "
                                                  "(0: no limit).")] = 5,
    tools_debug: Annotated[bool, typer.Option("--tools-debug", help="Print each tool call and its result to "
                                                                    "stderr.")] = False,
    tools_approve: Annotated[bool, typer.Option("--tools-approve", help="Ask on the terminal before each tool call "
                                                                        "(refused when there is no terminal).")]
    = False,
    *,
    common: Common,
) -> int:
    from gemmapipe.core.engine.grammar import load_schema, schema_to_grammar
    from gemmapipe.core.errors import GemmapipeError, UsageError
    from gemmapipe.core.tasks.chat import ChatSession, is_url, n_ctx_for

    if list_:
        from .sessions import list_sessions

        return list_sessions()
    if cont and session:
        raise UsageError("--continue", "cannot be used with --session",
                         "--continue picks up the last conversation, --session NAME a named one: give one")
    attach = attach or []
    if attach.count("-") > 1:
        raise UsageError("--attach", "stdin (-) can be attached only once")
    stdin_text = None if "-" in attach else read_stdin_text()
    text = "\n\n".join(t for t in (stdin_text, prompt) if t)
    interactive = not text and sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty()
    if not text and not interactive and not attach:
        raise UsageError("prompt", "nothing to ask", "give a PROMPT, pipe text in, or run on a terminal")

    needs: set[str] = set()
    warn = Runner(common, needs=set(), command="chat").warn  # the real runner needs to know `needs` first
    attachments, parts = _attachments(attach, image_tokens=image_tokens, warn=warn)
    from gemmapipe.core.engine.parts import Audio, Image

    if any(isinstance(p, Image) for p in parts):
        needs.add("vision")
    if any(isinstance(p, Audio) for p in parts):
        needs.add("audio")
    runner = Runner(common, needs=needs, command="chat")
    runner.plan_outputs([a for a in attach if not is_url(a)])  # -o onto an attachment would destroy it
    store = session_path(session or "last") if (session or cont) else None
    # Where the conversation is kept, checked before the model is asked: an answer is never printed
    # and then lost to an unusable store. Asked for (--session, --continue): an error; the implicit
    # "last" (every conversation, one-shot or interactive, becomes it): a warning, and it is not kept.
    keep: Path | None = store
    if store is not None:
        ChatSession.check_store(store)
    else:
        keep = session_path("last")
        try:
            ChatSession.check_store(keep)
        except GemmapipeError as exc:
            runner.warn(f"{exc.subject}: {exc.reason}; this conversation is not kept for --continue")
            keep = None
    convo = ChatSession.load(store, image_tokens=image_tokens) if store else ChatSession()
    if system:
        convo.system = system
    if functions:
        from .toolsui import toolbox

        convo.tools = toolbox(functions, chain_limit=chain_limit, debug=tools_debug, approve=tools_approve,
                              schema=bool(schema), warn=runner.warn)
        convo.warn = runner.warn
    thoughts = _thought_printer(common) if think else None
    json_schema = load_schema(schema) if schema else None
    grammar = schema_to_grammar(json_schema) if json_schema else None
    options = runner.generate_options(2048, think=think, on_thought=thoughts, grammar=grammar, json_schema=json_schema)
    n_ctx = n_ctx_for(parts, options, convo.tools)

    def engine() -> Any:
        return runner.engine(n_ctx=n_ctx, image_tokens=(1, max(70, image_tokens)) if needs & {"vision"} else None)

    try:
        if interactive:
            from .interactive import repl

            return repl(convo, engine, options, parts, attachments, image_tokens=image_tokens, keep=keep,
                        info=runner.info, warn=runner.warn)
        from gemmapipe.core.sink import is_stdout, open_sink

        with open_sink(common.output) as out:
            written = 0
            try:
                for piece in convo.ask(engine(), text, parts, options, attachments):
                    out.write(piece)
                    out.flush()
                    written += len(piece)
            except Exception as exc:
                # Pieces stream to stdout as they come; if the answer fails after some reached it, end
                # that line and say on stderr that it is incomplete (the error line follows; exit 1).
                # A file given with -o is written whole or not at all, so it needs no mark.
                if written and is_stdout(common.output) and not isinstance(exc, BrokenPipeError):
                    _mark_incomplete(out, written)
                raise
            out.write("\n")
        if thoughts:
            sys.stderr.write("\n")
        # Every one-shot conversation is kept as "last", so --continue can pick it up.
        if keep is not None:
            try:
                convo.save(keep, make_dirs=True)
            except GemmapipeError as exc:
                if store is not None:
                    raise
                runner.warn(f"{exc.subject}: {exc.reason}; this conversation is not kept for --continue")
        return 0
    finally:
        runner.close()


def _attachments(specs: list[str], *, image_tokens: int, warn: Any) -> tuple[list[Any], list[Any]]:
    """Each -a as a file (stdin and URLs copied to a spool) and its decoded parts."""
    from gemmapipe.core.tasks.chat import attachment_parts, materialize

    attachments, parts = [], []
    for spec in specs:
        if spec == "-":
            from .runner import stdin_hint

            stdin_hint(quiet=False)
        att = materialize(spec)
        parts += attachment_parts(att.path, image_tokens=image_tokens, warn=warn, name=att.name)
        attachments.append(att)
    return attachments, parts


def _mark_incomplete(out: Any, written: int) -> None:
    try:
        out.write("\n")
        out.flush()
    except (OSError, ValueError):
        pass
    sys.stderr.write(f"gemmapipe: warning: the answer on stdout is incomplete: it stopped after {written} "
                     "characters\n")
    sys.stderr.flush()


def _thought_printer(common: Common) -> Any:
    dim = sys.stderr.isatty()

    def show(text: str) -> None:
        if common.quiet:
            return
        sys.stderr.write(f"\x1b[2m{text}\x1b[0m" if dim else text)
        sys.stderr.flush()

    return show
