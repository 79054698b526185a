"""gemmapipe chat [PROMPT]: one-shot, or an interactive session on a terminal."""

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .options import Common, with_common
from .runner import Runner, read_stdin_text

HELP_INTERACTIVE = "/attach FILE, /reset, /save FILE, /exit"


def _session_path(name: str) -> Path:
    from gemmapipe.core.config import xdg_dir

    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return xdg_dir("data") / "sessions" / f"{safe}.json"


@with_common
def command(
    prompt: Annotated[str | None, typer.Argument(help="The prompt; piped stdin text is added to it.",
                                                 show_default=False, metavar="PROMPT")] = None,
    attach: Annotated[list[str] | None, typer.Option("-a", "--attach", show_default=False, metavar="FILE",
                                                     help="Attach an image, audio or video file (repeatable; "
                                                          "- reads it from stdin).")] = None,
    system: Annotated[str | None, typer.Option("-s", "--system", show_default=False, help="System prompt.")] = None,
    schema: Annotated[str | None, typer.Option("--schema", show_default=False, metavar="SCHEMA",
                                               help="JSON Schema (inline or a file): the answer is valid JSON.")]
    = None,
    think: Annotated[bool, typer.Option("--think", help="Let the model think first; thoughts go to stderr.")]
    = False,
    cont: Annotated[bool, typer.Option("--continue", help="Continue the last conversation.")] = False,
    session: Annotated[str | None, typer.Option("--session", show_default=False, metavar="NAME",
                                                help="Keep the conversation under this name between runs.")]
    = None,
    image_tokens: Annotated[int, typer.Option("--image-tokens", min=70, max=1120, help="Token budget per image.")]
    = 280,
    *,
    common: Common,
) -> int:
    from gemmapipe.core.engine.grammar import load_schema, schema_to_grammar
    from gemmapipe.core.errors import UsageError
    from gemmapipe.core.tasks.chat import ChatSession, attachment_parts, media_tokens

    attach = attach or []
    if attach.count("-") > 1:
        raise UsageError("--attach", "stdin (-) can be attached only once")
    stdin_text = None if "-" in attach else read_stdin_text()
    text = "\n\n".join(t for t in (stdin_text, prompt) if t)
    interactive = not text and sys.stdin.isatty() and sys.stdout.isatty()
    if not text and not interactive and not attach:
        raise UsageError("prompt", "nothing to ask", "give a PROMPT, pipe text in, or run on a terminal")

    needs: set[str] = set()
    parts: list[Any] = []
    for spec in attach:
        parts += attachment_parts(spec, image_tokens=image_tokens)
    from gemmapipe.core.engine.parts import Audio, Image

    if any(isinstance(p, Image) for p in parts):
        needs.add("vision")
    if any(isinstance(p, Audio) for p in parts):
        needs.add("audio")
    runner = Runner(common, needs=needs, command="chat")
    store = _session_path(session or "last") if (session or cont) else None
    convo = ChatSession.load(store, image_tokens=image_tokens) if store and (cont or session) else ChatSession()
    if system:
        convo.system = system
    thoughts = _thought_printer(common) if think else None
    json_schema = load_schema(schema) if schema else None
    grammar = schema_to_grammar(json_schema) if json_schema else None
    options = runner.generate_options(2048, think=think, on_thought=thoughts, grammar=grammar, json_schema=json_schema)
    n_ctx = max(4096, 1 << (media_tokens(parts) + options.max_tokens + 1024).bit_length())

    def engine() -> Any:
        return runner.engine(n_ctx=n_ctx, image_tokens=(1, max(70, image_tokens)) if needs & {"vision"} else None)

    try:
        if interactive:
            from .interactive import repl

            return repl(convo, engine, options, parts, attach, image_tokens=image_tokens, store=store,
                        info=runner.info)
        out = sys.stdout
        for piece in convo.ask(engine(), text, parts, options, attach):
            out.write(piece)
            out.flush()
        out.write("\n")
        if thoughts:
            sys.stderr.write("\n")
        # Every one-shot conversation is kept as "last", so --continue can pick it up.
        convo.save(store or _session_path("last"))
        return 0
    finally:
        runner.close()


def _thought_printer(common: Common) -> Any:
    dim = sys.stderr.isatty()

    def show(text: str) -> None:
        if common.quiet:
            return
        sys.stderr.write(f"\x1b[2m{text}\x1b[0m" if dim else text)
        sys.stderr.flush()

    return show
