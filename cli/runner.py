"""What every command does around its task: load the model once, report on stderr, run a batch,
keep going past a bad input, and pick the exit status."""

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from gemmapipe.core.errors import BatchFailed, ExitStatus, GemmapipeError, UsageError

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
        self._lock = threading.RLock()  # engine and model are shared by the -j workers
        self._turns: _Turns | None = None  # set while a batch runs concurrently
        self._tls = threading.local()  # .index: the input a worker thread is on

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
        return not (self.common.quiet or self.common.no_progress) and sys.stderr.isatty() and self._turns is None

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
        if self.common.server:
            return None  # the server has its own model: nothing to find or check here
        with self._lock:
            if self._pair is None:
                from gemmapipe.core.model import resolve

                model = self.common.model
                if model is None or str(model) == "":
                    from .models import default_or_offer

                    model = default_or_offer(quiet=self.common.quiet)  # or exit 4 with the command to run
                self._pair = resolve(model, self.common.mmproj, needs=self.needs)
            return self._pair

    @property
    def jobs(self) -> int:
        """Requests at once: -j with a server; a local model runs one request at a time."""
        if self.common.jobs > 1 and not self.common.server:
            if not getattr(self, "_warned_jobs", False):
                self._warned_jobs = True
                self.warn("-j/--jobs needs --server (a local model answers one request at a time); ignored")
            return 1
        return max(1, self.common.jobs)

    def remote_engine(self, n_ctx: int) -> Any:
        from gemmapipe.core.engine.remote import RemoteConfig, RemoteEngine

        c = self.common
        if c.no_template:
            raise UsageError("--no-template", "cannot be used with --server", "the server applies the chat template")
        config = RemoteConfig(url=c.server or "", api_key=c.api_key, model=c.server_model, timeout=c.timeout,
                              retries=c.retries, max_concurrency=self.jobs, verbose=c.verbose,
                              log=self.warn if not c.quiet else None)
        engine = RemoteEngine(config, n_ctx=n_ctx)
        self.info(f"server {engine.url}, model {engine.model or '(server default)'}")
        return engine

    def engine(self, *, n_ctx: int, image_tokens: tuple[int, int] | None = None, swa_full: bool = False) -> Any:
        """The engine, loaded once per invocation (reloaded only if a later input needs a bigger one)."""
        with self._lock:
            if self.common.server:  # one client for the whole run; the server sizes its own context
                if self._engine is None:
                    self._engine = self.remote_engine(self.common.ctx_size or n_ctx)
                return self._engine
            return self._local_engine(n_ctx=n_ctx, image_tokens=image_tokens, swa_full=swa_full)

    def _local_engine(self, *, n_ctx: int, image_tokens: tuple[int, int] | None, swa_full: bool) -> Any:
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
        self.check_memory(pair, ctx, swa_full=swa_full)
        if ENGINE_FACTORY is not None:
            self._engine = ENGINE_FACTORY(config, pair, n_ctx=ctx, max_image_tokens=hi)
        else:
            from gemmapipe.core.engine.local import LocalEngine

            self._engine = LocalEngine(config, pair, n_ctx=ctx, max_image_tokens=hi)
        self._engine_key = key
        return self._engine

    def check_memory(self, pair: Any, n_ctx: int, *, swa_full: bool = False) -> None:
        """On the CPU, weights and KV cache live in RAM: refuse, with numbers, before loading."""
        from gemmapipe.core import memory

        if self.common.gpu_layers != 0 and _gpu_offload():
            return  # device memory is not ours to read portably; llama.cpp reports failures itself
        est = memory.estimate(pair.model, pair.mmproj, n_ctx, cache_type=self.common.cache_type, swa_full=swa_full)
        memory.check_fits(est, memory.available_memory())

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
    def _check_input_list(self, inputs: list[str]) -> None:
        if not inputs:
            raise UsageError("input", "no input given", f"pass a path, or - for stdin: gemmapipe {self.command} FILE")
        if inputs.count("-") > 1:
            raise UsageError("input", "stdin (-) can be given only once")

    def check_inputs(self, inputs: list[str]) -> None:
        """Before the model is looked for (or a download offered): the input list is usable, and a
        sole input path exists and is readable (its own exit 3). In a batch a missing input stays
        one failure among the others, reported when its turn comes."""
        self._check_input_list(inputs)
        if len(inputs) == 1 and inputs[0] != "-":
            from gemmapipe.core.media.source import _bad_path

            bad = _bad_path(inputs[0])
            if bad is not None:
                raise bad

    def each_input(self, inputs: list[str], work: Callable[[str], None], *, fail_fast: bool = False,
                   on_error: Callable[[str, GemmapipeError], None] | None = None, jobs: int = 1) -> int:
        """Run `work` per input. One input: its error propagates (its own exit status). Several:
        a bad input is reported and the rest go on; model problems stop the batch. `jobs` > 1 (pass
        `self.jobs`; only for work that writes through `ordered_output`): that many inputs at once."""
        self._check_input_list(inputs)
        if len(inputs) == 1:
            work(inputs[0])
            self.succeeded += 1
            return ExitStatus.OK
        if jobs > 1:
            return self._each_concurrently(inputs, work, jobs, fail_fast=fail_fast, on_error=on_error)
        for spec in inputs:
            try:
                work(spec)
                self.succeeded += 1
            except GemmapipeError as exc:
                if exc.exit_status in (ExitStatus.MODEL, ExitStatus.USAGE) or getattr(exc, "batch_fatal", False):
                    raise
                self.failed += 1
                self.error(exc)
                if on_error is not None:
                    on_error(spec, exc)
                if fail_fast:
                    break
        if self.failed:
            raise BatchFailed("batch", f"{self.failed} of {len(inputs)} inputs failed",
                              None if not fail_fast else "stopped at the first failure (--fail-fast)")
        return ExitStatus.OK

    def _each_concurrently(self, inputs: list[str], work: Callable[[str], None], jobs: int, *, fail_fast: bool,
                           on_error: Callable[[str, GemmapipeError], None] | None) -> int:
        """each_input with -j N: N worker threads take the inputs in order; what each writes inside
        `ordered_output` is held back until every earlier input is written (or has failed), and errors
        are reported here, in input order, exactly as the sequential loop does."""
        turns = _Turns(len(inputs))
        self._turns = turns

        def worker() -> None:
            while (i := turns.take()) is not None:
                self._tls.index = i
                try:
                    work(inputs[i])
                except BaseException as exc:  # handed to the main thread, which decides
                    turns.outcome[i] = exc
                finally:
                    self._tls.index = None
                    turns.done[i].set()

        threads = [threading.Thread(target=worker, name=f"gemmapipe-input-{n}", daemon=True)
                   for n in range(min(jobs, len(inputs)))]
        for t in threads:
            t.start()
        interrupted = False
        try:
            for i, spec in enumerate(inputs):
                turns.grant(i)
                while not turns.done[i].wait(0.5):  # a timeout keeps Ctrl-C responsive
                    pass
                exc = turns.outcome[i]
                if exc is None:
                    self.succeeded += 1
                    continue
                if not isinstance(exc, GemmapipeError) or exc.exit_status in (ExitStatus.MODEL, ExitStatus.USAGE) \
                        or getattr(exc, "batch_fatal", False):
                    raise exc
                self.failed += 1
                self.error(exc)
                if on_error is not None:
                    on_error(spec, exc)
                if fail_fast:
                    break
        except KeyboardInterrupt:
            interrupted = True  # leave the (daemon) workers behind: the process is ending
            raise
        finally:
            turns.stop()  # unblock workers waiting for a turn; unstarted inputs are skipped
            if not interrupted:
                for t in threads:  # inputs already started finish (their output is dropped)
                    t.join()
            self._turns = None
        if self.failed:
            raise BatchFailed("batch", f"{self.failed} of {len(inputs)} inputs failed",
                              None if not fail_fast else "stopped at the first failure (--fail-fast)")
        return ExitStatus.OK

    def write_batch(self, inputs: list[str], work: Callable[[str, Any], None], *, make_writer: Callable[..., Any],
                    ext: str, output_dir: Path | None, fail_fast: bool = False, skip_existing: bool = False,
                    errors_as_records: bool = False) -> int:
        """Route each input's result: one stream (stdout or -o) through one writer, or with
        --output-dir one atomically written <stem>.<ext> file per input. `work(spec, writer)`."""
        from gemmapipe.core.sink import open_sink

        if output_dir is not None:
            ensure_output_dir(output_dir)

            def to_file(spec: str) -> None:
                target = output_path_for(output_dir, spec, ext)
                if skip_existing and target.exists():
                    self.info(f"{target} exists: skipped")
                    return
                with open_sink(target) as out:
                    writer = make_writer(out)
                    work(spec, writer)
                    writer.close()

            return self.each_input(inputs, to_file, fail_fast=fail_fast, jobs=self.jobs)
        with open_sink(self.common.output) as out:
            writer = make_writer(out, with_file=len(inputs) > 1)
            on_error = (lambda spec, exc: writer.error(spec, exc.reason)) if errors_as_records else None
            try:
                return self.each_input(inputs, lambda spec: work(spec, writer), fail_fast=fail_fast,
                                       on_error=on_error, jobs=self.jobs)
            finally:
                writer.close()

    @contextlib.contextmanager
    def ordered_output(self, writer: T) -> Iterator[T]:
        """Wrap the writes of one input. Sequential runs write through. Under -j the calls are
        recorded and replayed into `writer` once this input's turn comes, so the output is in input
        order and an input that fails writes nothing."""
        turns, index = self._turns, getattr(self._tls, "index", None)
        if turns is None or index is None:
            yield writer
            return
        recorder = _Recorder()
        yield recorder  # type: ignore[misc]
        turns.wait_turn(index)
        recorder.replay(writer)


class _Turns:
    """Bookkeeping of a concurrent batch: which input is next to start, whose turn it is to write."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.next = 0
        self.turn = -1
        self.stopped = False
        self.cond = threading.Condition()
        self.done = [threading.Event() for _ in range(n)]
        self.outcome: list[BaseException | None] = [None] * n

    def take(self) -> int | None:
        with self.cond:
            if self.stopped or self.next >= self.n:
                return None
            self.next += 1
            return self.next - 1

    def grant(self, i: int) -> None:
        with self.cond:
            self.turn = i
            self.cond.notify_all()

    def wait_turn(self, i: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == i or self.stopped)
            if self.turn != i:
                raise _Cancelled()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class _Cancelled(Exception):
    """The batch ended (an error, --fail-fast, Ctrl-C) before this input's turn to write."""


class _Recorder:
    """Stands in for a writer: records method calls to replay them later, in order."""

    def __init__(self) -> None:
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__"):
            raise AttributeError(name)

        def record(*args: Any, **kwargs: Any) -> None:
            self._calls.append((name, args, kwargs))

        return record

    def replay(self, writer: Any) -> None:
        for name, args, kwargs in self._calls:
            getattr(writer, name)(*args, **kwargs)


def _gpu_offload() -> bool:
    from gemmapipe.core.engine.native import bindings

    llama, _ = bindings()
    return bool(llama.llama_supports_gpu_offload())


def read_files_from(source: str | None) -> list[str]:
    """Inputs listed in a file (or - for stdin): NUL-separated if it contains a NUL, else one per line."""
    if source is None:
        return []
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"--files-from {source}", exc.strerror or str(exc)) from None
    sep = b"\0" if b"\0" in data else b"\n"
    names = [n.decode("utf-8", "surrogateescape") for n in data.split(sep)]
    return [n.rstrip("\r") if sep == b"\n" else n for n in names if n.strip()]


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
