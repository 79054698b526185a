"""Options every subcommand shares, declared once and injected into each command's signature."""

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from typer._click import types as click_types  # Typer's vendored Click (typer>=0.26)

from .completion import choices

# Bounds of the shared numeric options, checked when the command line (or the config file) is parsed.
MAX_THREADS = 512  # llama.cpp's GGML_MAX_N_THREADS; beyond it ggml and libgomp fail (or crash)
MAX_TOKENS = 1 << 20  # context and answer lengths: past any model's context, inside llama.cpp's int32
MAX_TIMEOUT_S = 86400.0  # a day of silence
MAX_RETRIES = 100
MAX_JOBS = 256
MAX_DRAFT = 16  # drafted tokens per step; past this a verify batch costs more than it can win


class FiniteFloat(click_types.FloatRange):
    """A float option that refuses nan and inf (which no range check catches: nan compares false)."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        number = click_types.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


def _check_lora(ctx: typer.Context, param: Any, value: list[str] | None) -> list[str] | None:
    """--lora FILE[:SCALE] at parse time (flag or config file): a scale that is not a finite number
    is a usage error before anything runs."""
    if value and not ctx.resilient_parsing:
        from gemmapipe.core.lora import parse_lora

        for spec in value:
            parse_lora(spec)
    return value


def _check_draft(ctx: typer.Context, param: Any, value: str | None) -> str | None:
    """--draft at parse time (flag or config file): empty is a usage error, ngram/mtp in any case."""
    if value is None or ctx.resilient_parsing:
        return value
    from gemmapipe.core.engine.speculative import parse_draft

    return parse_draft(value)


MODEL_PANEL = "Model"
OUTPUT_PANEL = "Output"
SERVER_PANEL = "Server"


@dataclass
class Common:
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
    lora: list[str] | None = None
    output: str = "-"
    quiet: bool = False
    verbose: int = 0  # -v: gemmapipe's account; -vv: llama.cpp's log too
    no_progress: bool = False
    traceback: bool = False
    server: str | None = None
    api_key: str | None = None
    server_model: str | None = None
    timeout: float = 600.0
    retries: int = 4
    jobs: int = 1
    draft: str | None = None
    draft_max: int = 2


# name -> (annotation, default); the annotation carries the typer.Option.
_SPEC: dict[str, tuple[Any, Any]] = {
    "model": (Annotated[Path | None, typer.Option(
        "-m", "--model", envvar="GEMMAPIPE_MODEL", rich_help_panel=MODEL_PANEL, show_default=False, metavar="FILE",
        help="Model GGUF (e.g. gemma-4-12B-it-Q4_K_M.gguf).")], None),
    "mmproj": (Annotated[Path | None, typer.Option(
        "--mmproj", envvar="GEMMAPIPE_MMPROJ", rich_help_panel=MODEL_PANEL, show_default=False, metavar="FILE",
        help="Projector GGUF; default: the single mmproj*.gguf beside the model.")], None),
    "threads": (Annotated[int | None, typer.Option(
        "-t", "--threads", min=1, max=MAX_THREADS, rich_help_panel=MODEL_PANEL, show_default=False,
        help=f"CPU threads, 1-{MAX_THREADS} (default: available cores, at most 16).")], None),
    "gpu_layers": (Annotated[int, typer.Option(
        "--gpu-layers", min=-1, rich_help_panel=MODEL_PANEL,
        help="Layers to offload to the GPU; -1 = all when the build supports offload, 0 = CPU only.")], -1),
    "ctx_size": (Annotated[int | None, typer.Option(
        "-c", "--ctx-size", min=256, max=MAX_TOKENS, rich_help_panel=MODEL_PANEL, show_default=False,
        help="Context size in tokens (default: sized to the job).")], None),
    "seed": (Annotated[int | None, typer.Option(
        "--seed", min=0, max=2**32 - 1, rich_help_panel=MODEL_PANEL, show_default=False,
        help="Sampling seed (default: random; irrelevant when greedy).")], None),
    "temperature": (Annotated[float, typer.Option(
        "--temperature", click_type=FiniteFloat(min=0.0), rich_help_panel=MODEL_PANEL,
        help="Sampling temperature; 0 = greedy.")], 0.0),
    "max_tokens": (Annotated[int | None, typer.Option(
        "--max-tokens", min=1, max=MAX_TOKENS, rich_help_panel=MODEL_PANEL, show_default=False,
        help="Most tokens to generate per answer (default depends on the command).")], None),
    "no_template": (Annotated[bool, typer.Option(
        "--no-template", rich_help_panel=MODEL_PANEL,
        help="Ignore the GGUF's chat template: plain completion.")], False),
    "flash_attn": (Annotated[Literal["auto", "on", "off"], typer.Option(
        "--flash-attn", rich_help_panel=MODEL_PANEL, metavar="WHEN", autocompletion=choices(["auto", "on", "off"]),
        help="Flash attention: auto, on or off.")], "auto"),
    "cache_type": (Annotated[Literal["f16", "q8_0", "q4_0", "f32"], typer.Option(
        "--cache-type", rich_help_panel=MODEL_PANEL, metavar="TYPE",
        autocompletion=choices(["f16", "q8_0", "q4_0", "f32"]), help="KV cache type: f16, q8_0, q4_0 or f32.")], "f16"),
    "lora": (Annotated[list[str] | None, typer.Option(
        "--lora", rich_help_panel=MODEL_PANEL, metavar="FILE[:SCALE]", show_default=False, callback=_check_lora,
        help="Apply a LoRA adapter GGUF to the text decoder, scaled (default 1); repeatable.")], None),
    "output": (Annotated[str, typer.Option(
        "-o", "--output", rich_help_panel=OUTPUT_PANEL, metavar="FILE",
        help="Write here ('-' = stdout). Files are written whole or not at all.")], "-"),
    "quiet": (Annotated[bool, typer.Option(
        "-q", "--quiet", rich_help_panel=OUTPUT_PANEL, help="Only errors on stderr.")], False),
    "verbose": (Annotated[int, typer.Option(
        "-v", "--verbose", count=True, rich_help_panel=OUTPUT_PANEL,
        help="Say what gemmapipe does on stderr (model, context, cache reuse, timings at the end); "
             "-vv adds llama.cpp's own log.")], 0),
    "no_progress": (Annotated[bool, typer.Option(
        "--no-progress", rich_help_panel=OUTPUT_PANEL, help="No progress bar (there is none unless stderr is a TTY).")],
        False),
    "traceback": (Annotated[bool, typer.Option(
        "--traceback", rich_help_panel=OUTPUT_PANEL,
        help="Show a traceback on errors (or set GEMMAPIPE_TRACEBACK=1).")], False),
    "server": (Annotated[str | None, typer.Option(
        "--server", envvar="GEMMAPIPE_SERVER", rich_help_panel=SERVER_PANEL, show_default=False, metavar="URL",
        help="Send requests to this OpenAI-compatible server (llama-server, vLLM, SGLang, litert-lm serve) "
             "instead of loading a GGUF.")], None),
    "api_key": (Annotated[str | None, typer.Option(
        "--api-key", envvar="GEMMAPIPE_API_KEY", rich_help_panel=SERVER_PANEL, show_default=False, metavar="TOKEN",
        help="Bearer token for --server.")], None),
    "server_model": (Annotated[str | None, typer.Option(
        "--server-model", envvar="GEMMAPIPE_SERVER_MODEL", rich_help_panel=SERVER_PANEL, show_default=False,
        metavar="NAME", help="Model name to ask --server for (default: the first it lists).")], None),
    "timeout": (Annotated[float, typer.Option(
        "--timeout", click_type=FiniteFloat(min=1.0, max=MAX_TIMEOUT_S), rich_help_panel=SERVER_PANEL,
        metavar="SECONDS",
        help="Give up when --server stays silent this long.")], 600.0),
    "retries": (Annotated[int, typer.Option(
        "--retries", min=0, max=MAX_RETRIES, rich_help_panel=SERVER_PANEL,
        help="Retries (with backoff) when --server is unreachable or answers 429/5xx.")], 4),
    "jobs": (Annotated[int, typer.Option(
        "-j", "--jobs", min=1, max=MAX_JOBS, rich_help_panel=SERVER_PANEL,
        help="Requests at once: inputs of a batch, clips of a transcript, windows of a video; to --server "
             "in flight, locally decoded together in one context (N times the KV cache). Output order "
             "is kept.")], 1),
    "draft": (Annotated[str | None, typer.Option(
        "--draft", rich_help_panel=MODEL_PANEL, show_default=False, metavar="ngram|mtp|FILE", callback=_check_draft,
        help="Speculative decoding: 'ngram' (prompt lookup), 'mtp' (the Gemma 4 assistant GGUF beside "
             "the model) or a draft model GGUF with the same vocabulary (an assistant too); greedy and "
             "seeded output stay the model's own.")], None),
    "draft_max": (Annotated[int, typer.Option(
        "--draft-max", min=1, max=MAX_DRAFT, rich_help_panel=MODEL_PANEL,
        help="Tokens drafted per step (above 2, CPU output may differ from the undrafted at near-ties).")], 2),
}
assert set(_SPEC) == {f.name for f in fields(Common)}


F = TypeVar("F", bound=Callable[..., Any])


def with_common(func: F) -> F:
    """Append the shared options to `func`'s signature; `func` receives them as `common: Common`."""
    sig = inspect.signature(func)
    own = [p for name, p in sig.parameters.items() if name != "common"]
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, (annotation, default) in _SPEC.items()]

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        from .configfile import raise_config_error

        raise_config_error()  # a broken config file stops the command, not --help
        common = Common(**{name: kwargs.pop(name) for name in _SPEC})
        try:
            return func(common=common, **kwargs)
        except BrokenPipeError:
            # `gemmapipe ... | head -1`: the reader left; stop quietly, as a filter killed by SIGPIPE.
            # (here, before Click's own EPIPE handling turns it into exit 1)
            from .errors import broken_pipe

            raise typer.Exit(broken_pipe()) from None

    own_hints = {k: v for k, v in func.__annotations__.items() if k != "common"}
    wrapper.__signature__ = sig.replace(parameters=own + extra)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**own_hints, **{name: ann for name, (ann, _) in _SPEC.items()}}
    return wrapper  # type: ignore[return-value]


def input_args(help_text: str) -> Any:
    return typer.Argument(help=help_text, show_default=False, metavar="INPUT...")


DRY_RUN = typer.Option("--dry-run", help="Print the plan (tokens, frames, memory) as JSON and load no model.")
OUTPUT_DIR = typer.Option("--output-dir", rich_help_panel=OUTPUT_PANEL, show_default=False, metavar="DIR",
                          help="Write <stem>.<ext> per input into this directory.")
FAIL_FAST = typer.Option("--fail-fast", help="Stop at the first input that fails.")
FILES_FROM = typer.Option("--files-from", show_default=False, metavar="FILE",
                          help="Read more inputs from FILE (- = stdin), one per line or NUL-separated.")
SKIP_EXISTING = typer.Option("--skip-existing", rich_help_panel=OUTPUT_PANEL,
                             help="With --output-dir: skip inputs whose output file exists (re-runnable).")
ERRORS_AS_RECORDS = typer.Option("--errors-as-records", rich_help_panel=OUTPUT_PANEL,
                                 help='With jsonl: write {"file": ..., "error": ...} for failed inputs.')
