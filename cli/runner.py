"""The command line's side of a run: a Reporter on stderr (a Rich bar on a terminal) and the shared
options turned into a core Session. The application itself lives in gemmapipe.core.session."""

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from gemmapipe.core.errors import GemmapipeError, UsageError
from gemmapipe.core.session import Session, SessionConfig, ensure_output_dir, output_path_for

from .errors import for_people
from .options import Common

__all__ = ["CliReporter", "Runner", "ensure_output_dir", "output_path_for", "read_files_from", "read_stdin_text"]


class CliReporter:
    """info with -v, warnings unless -q, errors always, on stderr; a progress bar only when stderr is
    a terminal (and not with -q or --no-progress)."""

    def __init__(self, common: Common) -> None:
        self.common = common

    def info(self, message: str) -> None:
        if self.common.verbose:
            sys.stderr.write(f"gemmapipe: {for_people(message)}\n")

    def warn(self, message: str) -> None:
        if not self.common.quiet:
            sys.stderr.write(f"gemmapipe: warning: {for_people(message)}\n")

    def error(self, exc: GemmapipeError) -> None:
        from .errors import report

        report(exc)

    def show_progress(self) -> bool:
        return not (self.common.quiet or self.common.no_progress) and sys.stderr.isatty()

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None) -> Iterator[Callable[[float], None]]:
        """Yield an `advance_to(done)` callback: a Rich bar on stderr when it is a TTY, else nothing."""
        if not self.show_progress():
            yield lambda done: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                      console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done: bar.update(task, completed=done)


def session_config(common: Common) -> SessionConfig:
    return SessionConfig(model=common.model, mmproj=common.mmproj, threads=common.threads,
                         gpu_layers=common.gpu_layers, ctx_size=common.ctx_size, seed=common.seed,
                         temperature=common.temperature, max_tokens=common.max_tokens,
                         no_template=common.no_template, flash_attn=common.flash_attn, cache_type=common.cache_type,
                         output=common.output, server=common.server, api_key=common.api_key,
                         server_model=common.server_model, timeout=common.timeout, retries=common.retries,
                         jobs=common.jobs, draft=common.draft,
                         draft_max=common.draft_max, verbose=common.verbose)


class Runner(Session):
    """A Session built from the shared options, reporting on stderr; `command` names the subcommand
    for messages."""

    def __init__(self, common: Common, *, needs: set[str], command: str) -> None:
        self.common = common
        self.command = command

        def default_model() -> Path:
            from .models import default_or_offer

            return default_or_offer(quiet=common.quiet)  # or exit 4 with the command to run

        super().__init__(session_config(common), needs=needs, reporter=CliReporter(common),
                         default_model=default_model)

    def check_input_list(self, inputs: list[str]) -> None:
        if not inputs:
            raise UsageError("input", "no input given", f"pass a path, or - for stdin: gemmapipe {self.command} FILE")
        super().check_input_list(inputs)


def read_files_from(source: str | None) -> list[str]:
    """Inputs listed in a file (or - for stdin): NUL-separated if it contains a NUL, else one per line."""
    if source is None:
        return []
    try:
        if source == "-":
            stdin = getattr(sys.stdin, "buffer", None) if sys.stdin is not None else None
            if stdin is None or stdin.closed:
                raise UsageError("--files-from -", "standard input is closed",
                                 "pipe the list in (find . -print0 | gemmapipe ... --files-from -), or pass a file")
            data = stdin.read()
        else:
            data = Path(source).read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a closed file object
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"--files-from {source}", reason) from None
    sep = b"\0" if b"\0" in data else b"\n"
    names = [n.decode("utf-8", "surrogateescape") for n in data.split(sep)]
    return [n.rstrip("\r") if sep == b"\n" else n for n in names if n.strip()]


def read_stdin_text() -> str | None:
    """Piped text on stdin (like `llm`): None when stdin is a terminal or empty."""
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return None
        data = sys.stdin.read()
    except (OSError, ValueError):  # closed or unreadable stdin: nothing was piped
        return None
    return data if data.strip() else None
