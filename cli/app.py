"""The `gemmapipe` command: a Typer app whose errors all end in one line and a documented exit status.

Only light modules are imported here: `--help` must not pay for numpy, av or llama_cpp.
"""

import contextlib
import errno
import os
import sys
from typing import Annotated

import typer

from gemmapipe import __version__
from gemmapipe.core.errors import EXIT_STATUS_HELP, ExitStatus, GemmapipeError

from . import chat, configfile, describe, diarize, models, transcribe, video
from .errors import EXIT_BROKEN_PIPE, broken_pipe, error_line, report

# 141 is not an ExitStatus: it is what a filter killed by SIGPIPE reports (128 + 13), see run()
EXIT_STATUS = {**{int(code): text for code, text in EXIT_STATUS_HELP.items()},
               EXIT_BROKEN_PIPE: "stdout closed by its reader (SIGPIPE, as in | head)"}
EPILOG = "Exit status: " + "; ".join(f"{code} {text}" for code, text in EXIT_STATUS.items()) + "."

app = typer.Typer(
    name="gemmapipe",
    help="Gemma 4 unified (encoder-free) multimodal model from the shell: speech, images, video, chat.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: Rich's help renderer imports its Markdown stack (~0.12 s per --help)
    context_settings={"help_option_names": ["-h", "--help"]},
)

COMMANDS = configfile.COMMANDS
app.command("transcribe", epilog=EPILOG, help="Speech to text.")(transcribe.command)
app.command("diarize", epilog=EPILOG, help="Who spoke when (and what).")(diarize.command)
app.command("describe", epilog=EPILOG, help="Image understanding: describe or answer about images.")(describe.command)
app.command("video", epilog=EPILOG, help="Frames at 1 FPS plus audio, in one model call.")(video.command)
app.command("chat", epilog=EPILOG, help="One-shot or interactive chat, with -a attachments.")(chat.command)
app.add_typer(models.app, name="models", epilog=EPILOG, short_help="Download, list and locate models.")


def click_app() -> typer.core.TyperGroup:
    """The Click command tree, with grouped help and readable metavars (run and docgen use this)."""
    from .helpfmt import dress

    return dress(typer.main.get_command(app))


def parse_system_info(info: str) -> dict[str, list[str]]:
    """llama_print_system_info() -> {backend: features}:
    "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX = 1 | " -> {"CUDA": ["ARCHS=890",
    "USE_GRAPHS"], "CPU": ["SSE3", "AVX"]}."""
    backends: dict[str, list[str]] = {}
    current = None
    for field in (f.strip() for f in info.split("|")):
        name, colon, rest = field.partition(" : ")
        if colon:
            current = name.strip()
            backends[current] = []
            field = rest.strip()
        if current and field:
            key, _, val = field.partition(" = ")
            backends[current].append(key.strip() if val.strip() in ("", "1") else f"{key.strip()}={val.strip()}")
    return backends


def build_info() -> list[str]:
    """What --version says about llama.cpp: the binding's version, the backends it was built with
    (CPU, CUDA, Metal, Vulkan...) and whether layers can be offloaded. Only the ctypes bindings load
    (not llama_cpp's __init__, numpy or a model), and only when --version is asked."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        lines = [f"llama-cpp-python {version('llama_cpp_python')}"]
    except PackageNotFoundError:
        return ["llama-cpp-python: not installed (pip install llama-cpp-python)"]
    try:
        from gemmapipe.core.engine.native import bindings

        llama, _ = bindings()
        info = llama.llama_print_system_info().decode("utf-8", "replace")
        offload = bool(llama.llama_supports_gpu_offload())
    except Exception as exc:  # a broken native library: say so, --version itself still works
        return [*lines, f"llama.cpp: cannot load ({type(exc).__name__}: {exc})"]
    backends = parse_system_info(info)
    lines.append(f"llama.cpp backends: {', '.join(backends) or 'unknown'}; GPU offload: {'yes' if offload else 'no'}")
    lines += [f"  {name}: {' '.join(features)}" for name, features in backends.items() if features]
    return lines


def _version(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        print("\n".join([f"gemmapipe {__version__}", *build_info()]))
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True,
        help="Print the version (and llama.cpp's, with its backends) and exit.")] = False,
) -> None:
    pass


def _want_traceback(argv: list[str]) -> bool:
    return "--traceback" in argv or os.environ.get("GEMMAPIPE_TRACEBACK", "") not in ("", "0")


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit status instead of exiting (for tests and embedding)."""
    from typer._click.exceptions import NoArgsIsHelpError
    from typer.exceptions import Abort, Exit, TyperException


    args = list(sys.argv[1:] if argv is None else argv)
    traceback = _want_traceback(args)
    command = click_app()
    if os.environ.get("_GEMMAPIPE_COMPLETE"):  # a Tab in bash, zsh or fish (see completions/)
        from .completion import complete

        return complete(command, os.environ["_GEMMAPIPE_COMPLETE"])
    config = configfile.start(command, {"transcribe": transcribe.FORMATS, "diarize": diarize.FORMATS,
                                        "describe": describe.FORMATS, "video": video.FORMATS})
    try:
        result = command.main(args=args, prog_name="gemmapipe", standalone_mode=False, default_map=config)
        if result == ExitStatus.INTERRUPTED:  # Typer turns KeyboardInterrupt into a returned 130
            sys.stderr.write("\ngemmapipe: interrupted\n")
        return int(result) if isinstance(result, int) else 0
    except Exit as exc:
        if exc.exit_code == ExitStatus.INTERRUPTED:
            sys.stderr.write("\ngemmapipe: interrupted\n")
        return exc.exit_code
    except NoArgsIsHelpError as exc:  # bare `gemmapipe` or `gemmapipe models`: the help, as a usage error
        sys.stderr.write(exc.format_message().rstrip("\n") + "\n")
        return ExitStatus.USAGE
    except TyperException as exc:  # Click's usage errors (Typer vendors Click)
        if traceback:
            raise
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path} --help" if ctx is not None else "gemmapipe --help"
        error_line("usage", exc.format_message(), f"see '{where}'")
        return ExitStatus.USAGE
    except (KeyboardInterrupt, Abort):
        sys.stderr.write("\ngemmapipe: interrupted\n")
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        return broken_pipe()
    except GemmapipeError as exc:
        if traceback:
            raise
        report(exc)
        return exc.exit_status
    except Exception as exc:
        if traceback:
            raise
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO):
            error_line("output", f"cannot write: {exc.strerror or exc}")  # stdout on a full disk
            return ExitStatus.ERROR
        error_line("internal", f"{type(exc).__name__}: {exc}",
                   "this is a bug; rerun with --traceback and report it")
        return ExitStatus.ERROR


def main() -> None:
    from .signals import install_signal_handlers

    install_signal_handlers()
    # File names are bytes on Unix: one that is not UTF-8 reaches text output as it was given.
    for stream in (sys.stdout, sys.stdin):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    try:
        code = run()
        sys.stdout.flush()
    except BrokenPipeError:
        code = broken_pipe()
    except KeyboardInterrupt:  # arrived between the command's own handling and here
        code = ExitStatus.INTERRUPTED
    finally:
        from gemmapipe.core.sink import remove_temp_files

        remove_temp_files()
        source = sys.modules.get("gemmapipe.core.media.source")  # stdin spools (only if it was imported)
        if source is not None:
            source.remove_spools()
    if code == ExitStatus.INTERRUPTED:
        # Everything is cleaned up. Leave now: an interrupt that was already handled can still make
        # the interpreter re-raise SIGINT on its way out (seen as status -2 instead of 130).
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)
