"""What every command does around its task: load the model once, report on stderr, run a batch,
keep going past a bad input, and pick the exit status."""

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from gemmapipe.core.errors import BadInput, BatchFailed, ExitStatus, GemmapipeError, UsageError

from .options import Common

T = TypeVar("T")

# Tests replace this with a fake engine factory (see tests/fake_engine.py), as llm does with its mock model.
ENGINE_FACTORY: Callable[..., Any] | None = None


class Runner:
    def __init__(self, common: Common, *, needs: set[str], command: str) -> None:
        self.common = common
        self.needs = needs
        self.command = command
        self._engine: Any = None
        self._engine_key: tuple[int, int, int] | None = None
        self._pair: Any = None
        self.failed = 0
        self.succeeded = 0

    # --- stderr reporting -------------------------------------------------------------------------
    def info(self, message: str) -> None:
        if self.common.verbose:
            sys.stderr.write(f"gemmapipe: {message}\n")

    def warn(self, message: str) -> None:
        if not self.common.quiet:
            sys.stderr.write(f"gemmapipe: warning: {message}\n")

    def error(self, exc: GemmapipeError) -> None:
        sys.stderr.write(f"gemmapipe: error: {exc.subject}: {exc.reason}\n")
        if exc.hint:
            sys.stderr.write(f"gemmapipe: hint: {exc.hint}\n")

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

    # --- model --------------------------------------------------------------------------------------
    def model_pair(self) -> Any:
        if self._pair is None:
            from gemmapipe.core.model import resolve

            self._pair = resolve(self.common.model, self.common.mmproj, needs=self.needs)
        return self._pair

    def engine(self, *, n_ctx: int, image_tokens: tuple[int, int] | None = None, swa_full: bool = False) -> Any:
        """The engine, loaded once per invocation (reloaded only if a later input needs a bigger one)."""
        lo, hi = image_tokens or (0, 0)
        ctx = self.common.ctx_size or n_ctx
        key = (ctx, lo, hi)
        if self._engine is not None and self._engine_key is not None:
            old_ctx, old_lo, old_hi = self._engine_key
            if old_ctx >= ctx and (lo, hi) in ((old_lo, old_hi), (0, 0)):
                return self._engine
            self._engine.close()
            self._engine = None
        from gemmapipe.core.engine.base import EngineConfig

        pair = self.model_pair()
        c = self.common
        config = EngineConfig(model=Path(pair.model.path), mmproj=pair.mmproj.path if pair.mmproj else None,
                              threads=c.threads, gpu_layers=c.gpu_layers, ctx_size=ctx,
                              image_min_tokens=lo or None, image_max_tokens=hi or None,
                              flash_attn=c.flash_attn, cache_type=c.cache_type, no_template=c.no_template,
                              swa_full=swa_full, verbose=c.verbose)
        self.info(f"loading {config.model.name} (n_ctx {ctx})")
        if ENGINE_FACTORY is not None:
            self._engine = ENGINE_FACTORY(config, pair, n_ctx=ctx, max_image_tokens=hi)
        else:
            from gemmapipe.core.engine.local import LocalEngine

            self._engine = LocalEngine(config, pair, n_ctx=ctx, max_image_tokens=hi)
        self._engine_key = key
        return self._engine

    def generate_options(self, default_max_tokens: int, **overrides: Any) -> Any:
        from gemmapipe.core.engine.base import GenerateOptions

        c = self.common
        opts = GenerateOptions(max_tokens=c.max_tokens or default_max_tokens, temperature=c.temperature,
                               seed=c.seed)
        for k, v in overrides.items():
            setattr(opts, k, v)
        return opts

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # --- batches ------------------------------------------------------------------------------------
    def each_input(self, inputs: list[str], work: Callable[[str], None], *, fail_fast: bool = False) -> int:
        """Run `work` per input. One input: its error propagates (its own exit status). Several:
        a bad input is reported and the rest go on; model problems stop the batch."""
        if not inputs:
            raise UsageError("input", "no input given", f"pass a path, or - for stdin: gemmapipe {self.command} FILE")
        if inputs.count("-") > 1:
            raise UsageError("input", "stdin (-) can be given only once")
        if len(inputs) == 1:
            work(inputs[0])
            self.succeeded += 1
            return ExitStatus.OK
        for spec in inputs:
            try:
                work(spec)
                self.succeeded += 1
            except (BadInput, GemmapipeError) as exc:
                if exc.exit_status in (ExitStatus.MODEL, ExitStatus.USAGE):
                    raise
                self.failed += 1
                self.error(exc)
                if fail_fast:
                    break
        if self.failed:
            raise BatchFailed("batch", f"{self.failed} of {len(inputs)} inputs failed",
                              None if not fail_fast else "stopped at the first failure (--fail-fast)")
        return ExitStatus.OK


def output_path_for(output_dir: Path, spec: str, ext: str) -> Path:
    stem = "stdin" if spec == "-" else Path(spec).stem
    return output_dir / f"{stem}.{ext}"


def ensure_output_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GemmapipeError(f"output directory {path}", exc.strerror or str(exc)) from None
    if not os.access(path, os.W_OK):
        raise GemmapipeError(f"output directory {path}", "not writable")


def read_stdin_text() -> str | None:
    """Piped text on stdin (like `llm`): None when stdin is a terminal or empty."""
    try:
        if sys.stdin is None or sys.stdin.isatty():
            return None
        data = sys.stdin.read()
    except (OSError, ValueError):  # closed or unreadable stdin: nothing was piped
        return None
    return data if data.strip() else None
