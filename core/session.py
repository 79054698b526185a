"""The application: what every command does around its task, without a terminal.

A `Session` resolves the model, owns the engine's lifetime (loaded once, reused, reloaded only when
a later input needs a bigger context), checks memory before loading, runs a batch in input order
with per-input isolation and `jobs` at once, and routes results to sinks. It reports through a
`Reporter` (info, warn, error, progress): the command line implements one with Rich on stderr; a
Python caller may pass its own or none.

Engines are built by the registered factory (`register_engine_factory`), as simonw/llm registers
models: tests register a fake engine there, and everything else, the cache included, runs as usual.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .engine.base import Engine, EngineConfig, GenerateOptions, LoraAdapter
from .errors import BatchFailed, ExitStatus, GemmapipeError, UsageError
from .model import ASSISTANT_ARCH

if TYPE_CHECKING:
    from .engine.remote import RemoteEngine
    from .gguf_meta import GGUFInfo
    from .model import ModelPair

T = TypeVar("T")
# Formats whose documents do not concatenate: two SRT files back to back are not one valid SRT file.
ONE_DOCUMENT_FORMATS = frozenset({"json", "srt", "vtt"})


class Reporter(Protocol):
    """Where a session's messages go (the CLI: stderr, with a Rich progress bar on a terminal)."""

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def error(self, exc: GemmapipeError) -> None: ...

    def progress(self, description: str, total: float | None) -> contextlib.AbstractContextManager[
            Callable[[float], None]]: ...


class NullReporter:
    """Says nothing (the default for Python callers)."""

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def error(self, exc: GemmapipeError) -> None:
        pass

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None) -> Iterator[Callable[[float], None]]:
        yield lambda done: None


@dataclass
class SessionConfig:
    """What a run needs to know about the model and the engine: parameters, never flag names."""

    model: Path | None = None
    mmproj: Path | None = None
    threads: int | None = None
    gpu_layers: int = -1
    ctx_size: int | None = None
    seed: int | None = None
    temperature: float = 0.0
    max_tokens: int | None = None
    no_template: bool = False
    flash_attn: str = "auto"
    cache_type: str = "f16"
    output: str = "-"
    server: str | None = None
    api_key: str | None = None
    server_model: str | None = None
    timeout: float = 600.0
    retries: int = 4
    jobs: int = 1
    draft: str | None = None  # "ngram", "mtp" (the Gemma 4 assistant beside the model) or a GGUF (local only)
    draft_max: int = 2
    verbose: int = 0  # 1: the session's own account (info); 2: the engine's native log too
    lora: tuple[LoraAdapter, ...] = ()  # LoRA adapters for the local engine, in order


EngineFactory = Callable[..., Engine]
"""`factory(config: EngineConfig, pair: ModelPair, *, n_ctx: int, max_image_tokens: int) -> Engine`."""

_ENGINE_FACTORY: EngineFactory | None = None


def register_engine_factory(factory: EngineFactory | None) -> EngineFactory | None:
    """Build local engines with `factory` from now on (None: llama.cpp's LocalEngine); returns the
    previous one, so a test can put it back."""
    global _ENGINE_FACTORY
    previous, _ENGINE_FACTORY = _ENGINE_FACTORY, factory
    return previous


def _default_model() -> Path:
    from .errors import ModelError

    raise ModelError("model", "no model given")


class Session:
    """One run: a model, an engine, a batch. Not tied to any terminal; see the module docstring."""

    def __init__(self, config: SessionConfig, *, needs: set[str], reporter: Reporter | None = None,
                 default_model: Callable[[], Path] = _default_model) -> None:
        self.config = config
        self.needs = needs
        self.reporter: Reporter = reporter or NullReporter()
        self.default_model = default_model
        self._engine: Engine | None = None
        self._engine_key: tuple[int, int, int] | None = None
        self._pair: ModelPair | None = None
        self._draft_file: str | None = None
        self._draft_gguf: GGUFInfo | None = None
        self.failed = 0
        self.succeeded = 0
        self._lock = threading.RLock()  # engine and model are shared by the -j workers
        self._turns: _Turns | None = None  # set while a batch runs concurrently
        self.load_s = 0.0  # seconds spent loading engines (for the timing summary)
        self._tls = threading.local()  # .index: the input a worker thread is on

    # --- reporting ------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        self.reporter.info(message)

    def warn(self, message: str) -> None:
        self.reporter.warn(message)

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None) -> Iterator[Callable[[float], None]]:
        """An `advance_to(done)` callback; none while a concurrent batch runs (bars would interleave)."""
        if self._turns is not None:
            yield lambda done: None
            return
        with self.reporter.progress(description, total) as advance:
            yield advance

    # --- model and engine -----------------------------------------------------------------------
    @property
    def engine_loaded(self) -> Engine | None:
        return self._engine

    def model_pair(self) -> ModelPair | None:
        """The checked model and projector, and the LoRA adapters checked against the model (None
        with a server: it has its own model, and its own adapters)."""
        if self.config.server:
            if self.config.lora:
                raise UsageError(None, "cannot be used with {server}: the server applies its own adapters",
                                 "start the server with them: llama-server --lora FILE (--lora-scaled FILE SCALE)",
                                 parameter="lora")
            return None
        with self._lock:
            if self._pair is None:
                from .model import resolve

                model = self.config.model
                if model is None or str(model) == "":
                    model = self.default_model()
                pair = resolve(model, self.config.mmproj, needs=self.needs)
                if self.config.lora:
                    from .lora import check_adapter

                    for adapter in self.config.lora:
                        check_adapter(adapter.path, pair.model)
                self._pair = pair
            return self._pair

    @property
    def jobs(self) -> int:
        """Requests at once: in flight to a server, or sequences a local engine decodes together."""
        return max(1, self.config.jobs)

    @property
    def sequences(self) -> int:
        """Sequences the local context is planned for (each with a context of `context_size`)."""
        return 1 if self.config.server else self.jobs

    def remote_engine(self, n_ctx: int) -> RemoteEngine:
        from .engine.remote import RemoteConfig, RemoteEngine

        c = self.config
        if c.no_template:
            raise UsageError(None, "cannot be used with {server}", "the server applies the chat template",
                             parameter="no_template")
        if c.draft:
            raise UsageError(None, "cannot be used with {server}", "the server decodes with its own settings",
                             parameter="draft")
        config = RemoteConfig(url=c.server or "", api_key=c.api_key, model=c.server_model, timeout=c.timeout,
                              retries=c.retries, max_concurrency=self.jobs, verbose=c.verbose >= 2, log=self.warn)
        engine = RemoteEngine(config, n_ctx=n_ctx)
        self.info(f"server {engine.url}, model {engine.model or '(server default)'}")
        return engine

    def engine(self, *, n_ctx: int, image_tokens: tuple[int, int] | None = None, swa_full: bool = False) -> Engine:
        """The engine, loaded once per session (reloaded only if a later input needs a bigger one)."""
        with self._lock:
            if self.config.server:  # one client for the whole run; the server sizes its own context
                if self._engine is None:
                    self._engine = self.remote_engine(self.config.ctx_size or n_ctx)
                return self._engine
            return self._local_engine(n_ctx=n_ctx, image_tokens=image_tokens, swa_full=swa_full)

    def image_floor_tokens(self) -> int:
        """The fewest tokens the engine keeps an image at: 0 for a local engine (configured to keep
        any size), the server's assumed minimum otherwise (an image under it is raised there)."""
        if not self.config.server:
            return 0
        from .engine.remote import SERVER_IMAGE_TOKENS

        return SERVER_IMAGE_TOKENS[0]

    def context_size(self, n_ctx: int) -> int:
        """The context a local engine is loaded with for a task that asks for `n_ctx`: the configured
        size if any, else `n_ctx`, within what the model was trained for. The run and its dry run
        both ask here, so the plan is the run."""
        ctx = self.config.ctx_size or n_ctx
        pair = self.model_pair() if not self.config.server else None
        if pair is not None:
            train = pair.model.get(f"{pair.model.architecture}.context_length")
            if isinstance(train, int) and train > 0:
                ctx = max(256, min(ctx, train))
        if self.sequences > 1:  # llama.cpp pads each sequence's share of the context to 256 cells
            ctx = -(-ctx // 256) * 256
        return ctx

    def _local_engine(self, *, n_ctx: int, image_tokens: tuple[int, int] | None, swa_full: bool) -> Engine:
        lo, hi = image_tokens or (0, 0)
        ctx = self.context_size(n_ctx)
        key = (ctx, lo, hi)
        if self._engine is not None and self._engine_key is not None:
            old_ctx, old_lo, old_hi = self._engine_key
            if old_ctx >= ctx and (lo, hi) in ((old_lo, old_hi), (0, 0)):
                return self._engine
            self._engine.close()
            self._engine = None
        pair = self.model_pair()
        assert pair is not None
        c = self.config
        config = EngineConfig(model=Path(pair.model.path), mmproj=pair.mmproj.path if pair.mmproj else None,
                              threads=c.threads, gpu_layers=c.gpu_layers, ctx_size=ctx,
                              image_min_tokens=lo or None, image_max_tokens=hi or None,
                              flash_attn=c.flash_attn, cache_type=c.cache_type, no_template=c.no_template,
                              swa_full=swa_full, verbose=c.verbose >= 2, lora=c.lora, parallel=self.sequences,
                              draft=self.draft_file(), draft_max=c.draft_max)
        n_seq = self.sequences
        proj = f" + {config.mmproj.name}" if config.mmproj else ""
        self.info(f"loading {config.model.name}{proj} (n_ctx {ctx}" + (f" x {n_seq} sequences)" if n_seq > 1 else ")"))
        for adapter in c.lora:
            self.info(f"LoRA adapter {adapter.path.name}, scale {adapter.scale:g}")
        self.check_memory(pair, ctx, swa_full=swa_full)
        t0 = time.perf_counter()
        if _ENGINE_FACTORY is not None:
            self._engine = _ENGINE_FACTORY(config, pair, n_ctx=ctx, max_image_tokens=hi)
        else:
            from .engine.local import LocalEngine

            self._engine = LocalEngine(config, pair, n_ctx=ctx, max_image_tokens=hi)
        self.load_s += time.perf_counter() - t0
        self._engine_key = key
        info = self._engine.describe()
        extra = "".join(f", {k} {v}" for k, v in (("threads", info.threads), ("batch", info.n_batch)) if v)
        self.info(f"loaded in {time.perf_counter() - t0:.2f} s: context {info.n_ctx} tokens{extra}")
        return self._engine

    def timings(self) -> dict[str, float] | None:
        """What the engine did over the run (None before one was loaded): load seconds, prompt tokens
        (and how many were evaluated; the rest came from the KV cache), generated tokens, seconds."""
        engine = self._engine
        if engine is None:
            return None
        s = engine.stats
        return {"load_s": self.load_s, "prompt_tokens": s.total_prompt_tokens,
                "prompt_evaluated": s.total_prompt_evaluated, "prefill_s": s.total_prefill_s,
                "generated": s.total_generated, "decode_s": s.total_decode_s}

    def check_memory(self, pair: ModelPair, n_ctx: int, *, swa_full: bool = False) -> None:
        """On the CPU, weights and KV cache live in RAM: refuse, with numbers, before loading."""
        from . import memory

        if self.config.gpu_layers != 0 and _gpu_offload():
            return  # device memory is not ours to read portably; llama.cpp reports failures itself
        est = memory.estimate(pair.model, pair.mmproj, n_ctx, cache_type=self.config.cache_type, swa_full=swa_full,
                              n_seq=self.sequences)
        memory.check_fits(self._add_draft_model(est, n_ctx), memory.available_memory())

    def _add_draft_model(self, est: dict[str, Any], n_ctx: int) -> dict[str, Any]:
        """A draft model's weights and KV cache (one sequence per sequence, sliding window kept
        full, as the local engine makes it) added to a memory estimate."""
        from . import memory

        info = self._draft_info()
        if info is None:
            return est
        weights = info.path.stat().st_size
        kv = 0  # a Gemma 4 assistant reads the model's own KV cache
        if info.architecture != ASSISTANT_ARCH:
            kv = max(1, self.sequences) * memory.kv_bytes(info, n_ctx, cache_type=self.config.cache_type,
                                                          swa_full=True)
        est = dict(est)
        est["draft_bytes"] = weights + kv
        est["weights_bytes"] += weights
        est["kv_bytes"] += kv
        est["total_bytes"] += weights + kv
        return est

    def generate_options(self, default_max_tokens: int, **overrides: Any) -> GenerateOptions:
        c = self.config
        opts = GenerateOptions(max_tokens=c.max_tokens or default_max_tokens, temperature=c.temperature,
                               seed=c.seed)
        for k, v in overrides.items():
            setattr(opts, k, v)
        return opts

    def close(self) -> None:
        if self._engine is not None:
            draft = self.draft_summary()
            if draft:
                self.info(f"draft: {draft['drafted']} tokens drafted, {draft['accepted']} accepted "
                          f"({draft['acceptance']:.0%})")
            self._engine.close()
            self._engine = None

    def draft_file(self) -> str | None:
        """What the engine drafts with: None, "ngram", or a draft model's path ("mtp" resolved to the
        Gemma 4 assistant beside the model, found as the projector is)."""
        draft = self.config.draft
        if not draft or draft == "ngram":
            return draft
        if draft != "mtp":
            return str(Path(draft).expanduser())  # a config file's ~/models/x.gguf
        if self._draft_file is None:
            from .model import find_assistant

            pair = self.model_pair()
            assert pair is not None
            self._draft_file = str(find_assistant(Path(pair.model.path)))
        return self._draft_file

    def _draft_info(self) -> GGUFInfo | None:
        """The draft model's checked GGUF header (read once), None without a draft model."""
        draft = self.draft_file()
        if not draft or draft == "ngram":
            return None
        if self._draft_gguf is None:
            from .engine.speculative import check_draft_file
            from .gguf_meta import read_gguf

            check_draft_file(draft)
            self._draft_gguf = read_gguf(Path(draft), role="draft model")
        return self._draft_gguf

    def draft_method(self) -> str | None:
        """"ngram", "mtp" (a Gemma 4 assistant) or "model" (a draft model); None without drafting."""
        info = self._draft_info()
        if info is None:
            return self.draft_file()
        return "mtp" if info.architecture == ASSISTANT_ARCH else "model"

    def draft_summary(self) -> dict[str, Any] | None:
        """Speculative decoding over the run so far: tokens drafted, accepted, the acceptance rate."""
        if not self.config.draft or self._engine is None:
            return None
        stats = self._engine.stats
        drafted, accepted = stats.total_drafted, stats.total_accepted
        return {"method": self.draft_method(), "drafted": drafted,
                "accepted": accepted, "acceptance": round(accepted / drafted, 4) if drafted else 0.0}

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plans ----------------------------------------------------------------------------------
    def dry_run(self, inputs: list[str], *, n_ctx: int, **plan_kw: Any) -> int:
        """Write the plan of each input as JSON (one object per line) and load no model: what will be
        fed (the same functions the run uses) and, with a local model configured, the memory for the
        context the run would load (`context_size(n_ctx)`)."""
        from .media.source import open_input
        from .plan import plan_input
        from .sink import open_sink
        from .writers.base import dumps

        def one(spec: str, out: Any) -> None:
            with open_input(spec, warn=self.warn) as src:
                plan = plan_input(src, **plan_kw)
            memory = self.plan_memory(n_ctx)
            if memory:
                plan["memory"] = memory
            out.write(dumps(plan) + "\n")

        self.plan_outputs(inputs)
        with open_sink(self.config.output) as out:
            return self.each_input(inputs, lambda spec: one(spec, out))

    def plan_memory(self, n_ctx: int) -> dict[str, Any] | None:
        """Weights and KV cache for the context the run would load, when a model is configured (read
        from the GGUF headers only); None with a server or no model."""
        from . import memory

        if self.config.model is None or self.config.server:
            return None
        try:
            pair = self.model_pair()
            ctx = self.context_size(n_ctx)
        except GemmapipeError as exc:
            return {"error": f"{exc.subject}: {exc.reason}"}
        assert pair is not None
        est: dict[str, Any] = dict(memory.estimate(pair.model, pair.mmproj, ctx, cache_type=self.config.cache_type,
                                                   n_seq=self.sequences))
        try:
            est = self._add_draft_model(est, ctx)
        except GemmapipeError as exc:
            est["error"] = f"{exc.subject}: {exc.reason}"
        est["available_bytes"] = memory.available_memory()
        return est

    # --- outputs --------------------------------------------------------------------------------
    def choose_format(self, fmt: str | None, formats: list[str], *, several: bool, output_dir: Path | None) -> str:
        """`fmt`, else the extension of the output when it names a format (as ffmpeg and whisper do),
        else txt (jsonl for several inputs to one stream)."""
        fmt = self._resolve_format(fmt, formats, several=several, output_dir=output_dir)
        self._check_stream_format(fmt, several=several, output_dir=output_dir)
        return fmt

    def choose_formats(self, requested: list[str] | None, formats: list[str], *, several: bool,
                       output_dir: Path | None, check: bool = True) -> list[str]:
        """The formats of a transcript run, written from one pass: `requested` (in order, without
        repeats), else what `choose_format` picks. Several formats need `output_dir` (one file per
        input and format); a stream or one output file holds one. `check=False` (a dry run, which
        writes its plan instead) only resolves them."""
        wanted = list(dict.fromkeys(requested or []))
        if len(wanted) <= 1:
            fmt = self._resolve_format(wanted[0] if wanted else None, formats, several=several, output_dir=output_dir)
            if check:
                self._check_stream_format(fmt, several=several, output_dir=output_dir)
            return [fmt]
        if check and output_dir is None:
            from .sink import is_stdout

            names = ", ".join(wanted)
            if is_stdout(self.config.output):
                raise UsageError(None, f"{len(wanted)} formats ({names}) cannot share one stream",
                                 "write one <stem>.<ext> file per format with {output_dir} DIR", parameter="format")
            raise UsageError(None, f"writes one file, and {len(wanted)} formats were asked for ({names})",
                             "write one <stem>.<ext> file per format with {output_dir} DIR", parameter="output")
        return wanted

    def _resolve_format(self, fmt: str | None, formats: list[str], *, several: bool, output_dir: Path | None) -> str:
        from .sink import is_stdout

        output = self.config.output
        if fmt is None and output_dir is None and not is_stdout(output):
            ext = Path(output).suffix.lstrip(".").lower()
            fmt = ext if ext in formats else None
        if fmt is None:
            return "jsonl" if several and output_dir is None else "txt"
        return fmt

    def _check_stream_format(self, fmt: str, *, several: bool, output_dir: Path | None) -> None:
        if several and output_dir is None and fmt in ONE_DOCUMENT_FORMATS:
            raise UsageError(None, f"a {fmt} document holds one input, and several would go to one stream",
                             "write one file per input with {output_dir} DIR, or use {format} jsonl",
                             parameter="format")

    def plan_outputs(self, inputs: list[str], *, output_dir: Path | None = None,
                     ext: str | list[str] | None = None) -> None:
        """Before anything runs: refuse an output that is one of the inputs, or two inputs that would
        write one file (exit 2, naming them). `ext`: the extension of each input's file in
        `output_dir`, or several (one file per input and format)."""
        from .sink import check_outputs, is_stdout

        if output_dir is not None:
            if not is_stdout(self.config.output):
                raise UsageError(None, "cannot be used with {output_dir}",
                                 "{output_dir} writes one file per input; give one of the two", parameter="output")
            exts = [ext or "txt"] if not isinstance(ext, list) else ext
            targets = [(output_path_for(output_dir, spec, e), spec) for spec in inputs for e in exts]
            check_outputs(targets, inputs, parameter="output_dir")
        else:
            out = self.config.output
            if out == "":
                raise UsageError(None, "is empty", "give a file name, or - for stdout", parameter="output")
            if not is_stdout(out) and (out.endswith("/") or os.path.isdir(out)):
                raise UsageError(None, f"{out} is a directory",
                                 "give a file name; {output_dir} DIR writes one file per input there",
                                 parameter="output")
            check_outputs([(out, "")], inputs, parameter="output")

    # --- batches --------------------------------------------------------------------------------
    def check_input_list(self, inputs: list[str]) -> None:
        if not inputs:
            raise UsageError("input", "no input given", "pass a path, or - for stdin")
        if inputs.count("-") > 1:
            raise UsageError("input", "stdin (-) can be given only once")

    def check_inputs(self, inputs: list[str]) -> None:
        """Before the model is looked for (or a download offered): the input list is usable, and a
        sole input path exists and is readable (its own exit 3). In a batch a missing input stays
        one failure among the others, reported when its turn comes."""
        self.check_input_list(inputs)
        from .media.source import check_path, check_stdin

        if len(inputs) == 1:
            bad = check_stdin() if inputs[0] == "-" else check_path(inputs[0])
            if bad is not None:
                raise bad

    def each_input(self, inputs: list[str], work: Callable[[str], None], *, fail_fast: bool = False,
                   on_error: Callable[[str, GemmapipeError], None] | None = None, jobs: int = 1) -> int:
        """Run `work` per input. One input: its error propagates (its own exit status). Several:
        a bad input is reported and the rest go on; model problems stop the batch. `jobs` > 1 (pass
        `self.jobs`; only for work that writes through `ordered_output`): that many inputs at once."""
        self.check_input_list(inputs)
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
                if _stops_batch(exc):
                    raise
                self._failed(spec, exc, on_error)
                if fail_fast:
                    break
        return self._batch_status(len(inputs), fail_fast)

    def _failed(self, spec: str, exc: GemmapipeError,
                on_error: Callable[[str, GemmapipeError], None] | None) -> None:
        self.failed += 1
        self.reporter.error(exc)
        if on_error is not None:
            on_error(spec, exc)

    def _batch_status(self, n: int, fail_fast: bool) -> int:
        if self.failed:
            raise BatchFailed("batch", f"{self.failed} of {n} inputs failed",
                              None if not fail_fast else "stopped at the first failure ({fail_fast})")
        return ExitStatus.OK

    def _each_concurrently(self, inputs: list[str], work: Callable[[str], None], jobs: int, *, fail_fast: bool,
                           on_error: Callable[[str, GemmapipeError], None] | None) -> int:
        """each_input with jobs > 1: N worker threads take the inputs in order; what each writes inside
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
                if not isinstance(exc, GemmapipeError) or _stops_batch(exc):
                    raise exc
                self._failed(spec, exc, on_error)
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
        return self._batch_status(len(inputs), fail_fast)

    def write_batch(self, inputs: list[str], work: Callable[[str, Any], None], *, make_writer: Callable[..., Any],
                    ext: str | list[str], output_dir: Path | None, fail_fast: bool = False,
                    skip_existing: bool = False, errors_as_records: bool = False) -> int:
        """Route each input's result: one stream (stdout or the output file) through one writer, or
        with `output_dir` one atomically written <stem>.<ext> file per input. `work(spec, writer)`.
        A stream keeps the good results of a batch where some inputs fail (exit 5), as stdout would.

        `ext` a list (several formats from one pass; `output_dir` only): each input writes one file
        per format, `make_writer(out, fmt=ext)` for each, all fed by one FanoutWriter; the files of
        an input are renamed into place together once it has finished, and none is left if it fails.
        `skip_existing` then skips an input whose files all exist."""
        from .sink import open_sink

        self.plan_outputs(inputs, output_dir=output_dir, ext=ext)
        if output_dir is not None:
            ensure_output_dir(output_dir)
            exts = ext if isinstance(ext, list) else None

            def to_file(spec: str) -> None:
                if exts is not None:
                    to_files(spec, exts)
                    return
                assert isinstance(ext, str)
                target = output_path_for(output_dir, spec, ext)
                if skip_existing and target.exists():
                    self.info(f"{target} exists: skipped")
                    return
                with open_sink(target) as out:
                    writer = make_writer(out)
                    work(spec, writer)
                    writer.close()

            def to_files(spec: str, exts: list[str]) -> None:
                from .writers.base import FanoutWriter

                targets = [output_path_for(output_dir, spec, e) for e in exts]
                if skip_existing and all(t.exists() for t in targets):
                    self.info(f"{', '.join(map(str, targets))} exist: skipped")
                    return
                with contextlib.ExitStack() as stack:
                    outs = [stack.enter_context(open_sink(t)) for t in targets]
                    writer = FanoutWriter([make_writer(out, fmt=e) for out, e in zip(outs, exts, strict=True)])
                    work(spec, writer)
                    writer.close()

            return self.each_input(inputs, to_file, fail_fast=fail_fast, jobs=self.jobs)
        if isinstance(ext, list) and len(ext) > 1:
            raise UsageError(None, "several formats need one file each",
                             "write one <stem>.<ext> file per format with {output_dir} DIR", parameter="format")
        pending: BaseException | None = None
        status: int = ExitStatus.OK
        with open_sink(self.config.output) as out:
            writer = make_writer(out, with_file=len(inputs) > 1)
            on_error = (lambda spec, exc: writer.error(spec, exc.reason)) if errors_as_records else None
            try:
                status = self.each_input(inputs, lambda spec: work(spec, writer), fail_fast=fail_fast,
                                         on_error=on_error, jobs=self.jobs)
            except BatchFailed as exc:
                pending = exc  # the good records are kept: commit the stream, then report
            except (GemmapipeError, KeyboardInterrupt) as exc:
                if not self.succeeded or len(inputs) == 1:
                    raise
                pending = exc  # a batch stopped midway keeps what finished, whole records only
            finally:
                writer.close()
        if pending is not None:
            raise pending
        return status

    def run_transcripts(self, inputs: list[str], *, fmts: list[str], task: Callable[..., Any],
                        meta: dict[str, Any], rules: Any = None, output_dir: Path | None = None,
                        fail_fast: bool = False, skip_existing: bool = False, errors_as_records: bool = False,
                        span: tuple[int | None, int | None] = (None, None), bilingual: bool = False) -> int:
        """transcribe and diarize: each input's segments, as `task(source, on_segment=, on_progress=)`
        produces them, to one writer per stream (or per file with `output_dir`); with several formats
        one file per input and format, all written from the same segments. `span`: the start and end
        (ms) the task reads, for the progress bar."""
        from .audio_format import SAMPLE_RATE
        from .media.source import open_input
        from .writers import get_writer

        ext: str | list[str] = fmts if len(fmts) > 1 else fmts[0]
        self.plan_outputs(inputs, output_dir=output_dir, ext=ext)  # before the model: nothing runs onto an input
        self.model_pair()  # a missing or wrong model fails before any decoding (exit 4)

        def process(spec: str, writer: Any) -> None:
            # under jobs > 1, what an input writes is held until earlier inputs are written
            with open_input(spec, warn=self.warn) as src, self.ordered_output(writer) as out:
                info: dict[str, Any] = dict(meta)
                out.begin(src.name, info)
                first_s, total_s = progress_span(src, *span)
                with self.progress(src.name, total_s) as advance:
                    result = task(src, on_segment=out.segment,
                                  on_progress=lambda s: advance(s / SAMPLE_RATE - first_s))
                info.update(result.meta)
                info.update(src.meta())  # warnings, NaN samples replaced
                info.update(self.meta())
                out.end(src.name, info)

        def make_writer(out: Any, *, fmt: str = fmts[0], **kw: Any) -> Any:
            return get_writer(fmt, out, rules=rules, bilingual=bilingual, **kw)

        return self.write_batch(inputs, process, make_writer=make_writer, ext=ext, output_dir=output_dir,
                                fail_fast=fail_fast, skip_existing=skip_existing,
                                errors_as_records=errors_as_records)

    @contextlib.contextmanager
    def ordered_output(self, writer: T) -> Iterator[T]:
        """Wrap the writes of one input. Sequential runs write through. Under jobs > 1 the calls are
        recorded and replayed into `writer` once this input's turn comes, so the output is in input
        order and an input that fails writes nothing."""
        turns, index = self._turns, getattr(self._tls, "index", None)
        if turns is None or index is None:
            yield writer
            return
        recorder = _Recorder()
        yield recorder  # type: ignore[misc]  # stands in for any writer
        turns.wait_turn(index)
        recorder.replay(writer)

    def meta(self) -> dict[str, Any]:
        """Model file, sha256 prefix and parameters for json output (only once a model was loaded)."""
        engine = self._engine
        if engine is None:
            return {}
        from .hashing import file_sha256

        info = engine.describe()
        desc: dict[str, Any] = dict(info.as_dict())
        if info.server is None:  # a server's model is not a file here
            desc["model_sha256"] = file_sha256(Path(info.model))[:16]
        c = self.config
        desc["parameters"] = {"temperature": c.temperature, "seed": c.seed, "max_tokens": c.max_tokens}
        if c.lora and info.server is None:
            desc["lora"] = [{"path": str(a.path), "scale": a.scale} for a in c.lora]
        if info.server is None and self.sequences > 1:
            desc["parameters"]["sequences"] = self.sequences
        out: dict[str, Any] = {"model": desc}
        draft = self.draft_summary()
        if draft:
            out["draft"] = draft
        return out


def progress_span(src: Any, start_ms: int | None, end_ms: int | None) -> tuple[float, float | None]:
    """(first second, seconds to go through) of an input for its progress bar: from the start to the
    end asked for, or the end of the audio; the length is None when it is not known (a live pipe)."""
    info = getattr(src, "info", None)
    duration = (info.audio_duration_ms or info.duration_ms) if info is not None else None
    end = min(x for x in (end_ms, duration) if x) if (end_ms or duration) else None
    first = start_ms or 0
    return first / 1000, (max(1, end - first) / 1000 if end is not None else None)


def _stops_batch(exc: GemmapipeError) -> bool:
    """Model and usage problems (and a server that is gone) end a batch: every later input would fail."""
    return exc.exit_status in (ExitStatus.MODEL, ExitStatus.USAGE) or bool(getattr(exc, "batch_fatal", False))


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
    """The batch ended (an error, fail-fast, Ctrl-C) before this input's turn to write."""


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
    from .engine.native import bindings

    llama, _ = bindings()
    return bool(llama.llama_supports_gpu_offload())


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
