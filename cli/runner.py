"""The command line's side of a run: a Reporter on stderr (a Rich bar on a terminal) and the shared
options turned into a core Session. The application itself lives in gemmapipe.core.session."""

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gemmapipe.core.engine.base import LoraAdapter
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
        if self.show_progress():
            install_terminal_stdout()

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
        """Yield an `advance_to(done)` callback: a Rich bar on stderr when it is a TTY, else nothing.
        With a known total it shows the percentage and the time left, else a pulse and the time spent.
        When stdout is the same terminal, what is written to stdout meanwhile is printed above the bar
        (whole lines, through the bar's console), so the bar never leaves debris among them."""
        if not self.show_progress():
            yield lambda done: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from gemmapipe.core.errors import printable

        columns = [TextColumn("{task.description}"), BarColumn()]
        columns += [TaskProgressColumn(), TimeRemainingColumn()] if total else [TimeElapsedColumn()]
        console = Console(stderr=True)
        with Progress(*columns, console=console, transient=True, redirect_stdout=False,
                      redirect_stderr=False) as bar:
            task = bar.add_task(printable(description), total=total or None)
            with _stdout_above(console):
                yield lambda done: bar.update(task, completed=min(done, total) if total else done)


class _TerminalStdout:
    """sys.stdout while a progress bar may show on the same terminal: writes go through to the real
    stream, except while a bar is live, when whole lines are printed above it by its console."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self._console: Any = None
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if self._console is None:
                return int(self._real.write(text))
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            for line in lines:
                self._console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
            return len(text)

    def flush(self) -> None:
        self._real.flush()

    def route(self, console: Any) -> None:
        with self._lock:
            if console is None and self._pending:
                self._real.write(self._pending)
                self._pending = ""
            self._console = console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _same_terminal() -> bool:
    try:
        return sys.stdout.isatty() and os.path.samestat(os.fstat(sys.stdout.fileno()), os.fstat(2))
    except (AttributeError, OSError, ValueError):
        return False


def install_terminal_stdout() -> None:
    """Make sys.stdout a _TerminalStdout when it is the terminal stderr is on (before any sink holds
    it), so progress bars can keep what stdout prints intact."""
    if not isinstance(sys.stdout, _TerminalStdout) and _same_terminal():
        sys.stdout = _TerminalStdout(sys.stdout)


@contextlib.contextmanager
def _stdout_above(console: Any) -> Iterator[None]:
    out = sys.stdout
    if not isinstance(out, _TerminalStdout):
        yield
        return
    out.flush()
    out.route(console)
    try:
        yield
    finally:
        out.route(None)


def session_config(common: Common) -> SessionConfig:
    return SessionConfig(model=common.model, mmproj=common.mmproj, threads=common.threads,
                         gpu_layers=common.gpu_layers, ctx_size=common.ctx_size, seed=common.seed,
                         temperature=common.temperature, max_tokens=common.max_tokens,
                         no_template=common.no_template, flash_attn=common.flash_attn, cache_type=common.cache_type,
                         output=common.output, server=common.server, api_key=common.api_key,
                         server_model=common.server_model, timeout=common.timeout, retries=common.retries,
                         jobs=common.jobs, draft=common.draft, draft_max=common.draft_max,
                         verbose=common.verbose, lora=lora_adapters(common.lora))


def lora_adapters(specs: list[str] | None) -> tuple[LoraAdapter, ...]:
    from gemmapipe.core.lora import parse_lora

    return tuple(parse_lora(spec) for spec in specs or ())


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

    def close(self) -> None:
        """Unload the engine; with -v, first the run's timing summary (as whisper.cpp and
        `ollama --verbose` print one)."""
        timings = self.timings() if self.common.verbose else None
        super().close()
        if timings is not None:
            for line in timing_summary(timings):
                self.info(line)

    def check_input_list(self, inputs: list[str]) -> None:
        if not inputs:
            raise UsageError("input", "no input given", f"pass a path, or - for stdin: gemmapipe {self.command} FILE")
        super().check_input_list(inputs)
        if "-" in inputs and not getattr(self, "_stdin_hinted", False):
            self._stdin_hinted = True
            stdin_hint(self.common.quiet)


def stdin_hint(quiet: bool) -> None:
    """`-` with a terminal on stdin: say what it waits for (as `cat` reads on, but not silently)."""
    try:
        tty = sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty and not quiet:
        sys.stderr.write("gemmapipe: reading the input from standard input, a terminal: pipe or redirect a file "
                         "in (- < FILE), or press Ctrl-D to end\n")
        sys.stderr.flush()


def _rate(tokens: float, seconds: float) -> str:
    return f", {tokens / seconds:.1f} tokens/s" if tokens and seconds > 0 else ""


def timing_summary(t: dict[str, float]) -> list[str]:
    """`load 1.20 s`, `prompt 812 tokens (540 evaluated, 272 from the KV cache) in 0.41 s, 1317.1
    tokens/s`, `generated 64 tokens in 1.02 s, 62.7 tokens/s`."""
    cached = int(t["prompt_tokens"] - t["prompt_evaluated"])
    reuse = f" ({int(t['prompt_evaluated'])} evaluated, {cached} from the KV cache)" if cached > 0 else ""
    return [*([f"load {t['load_s']:.2f} s"] if t["load_s"] > 0 else []),
            f"prompt {int(t['prompt_tokens'])} tokens{reuse} in {t['prefill_s']:.2f} s"
            f"{_rate(t['prompt_evaluated'], t['prefill_s'])}",
            f"generated {int(t['generated'])} tokens in {t['decode_s']:.2f} s{_rate(t['generated'], t['decode_s'])}"]


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
