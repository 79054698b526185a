"""gemmapipe transcribe INPUT...: speech to text."""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .completion import choices
from .options import (
    DRY_RUN,
    ERRORS_AS_RECORDS,
    FAIL_FAST,
    FILES_FROM,
    OUTPUT_DIR,
    OUTPUT_PANEL,
    SKIP_EXISTING,
    Common,
    input_args,
    with_common,
)
from .runner import Runner, read_files_from

FORMATS = ["txt", "srt", "vtt", "json", "jsonl", "tsv"]
VADS = ["silero", "energy"]  # core/tasks/segment.py VADS; the first is the default
VAD = typer.Option("--vad", help="Voice-activity detector: silero (a trained network: feeds speech, not music or "
                                 "noises) or energy (any sound over the background: studio recordings).")


def check_vad(vad: str) -> str:
    from gemmapipe.core.errors import UsageError

    if vad not in VADS:
        raise UsageError("--vad", f"unknown detector {vad!r}", f"choose one of {', '.join(VADS)}")
    return vad


def parse_language(ctx: typer.Context, param: Any, value: str | None) -> str | None:
    """-l/--language at parse time (flag or config file): an ISO 639-1 code or a name -> the English
    name the prompt needs; `auto` -> detect; anything else is a usage error with a hint."""
    from gemmapipe.core import languages

    if value is None or ctx.resilient_parsing or languages.is_auto(value):
        return None
    name = languages.language_name(value)
    if name is not None:
        return name
    from gemmapipe.core.errors import UsageError

    guess = languages.closest(value)
    hint = f"did you mean {guess} ({languages.code_of(guess)})?" if guess else \
        "give an ISO 639-1 code or an English name (en, English, de, German), or auto to detect"
    raise UsageError("--language", f"unknown language {value!r}", hint)


def complete_language(incomplete: str) -> list[tuple[str, str]]:
    from gemmapipe.core.languages import LANGUAGES

    return [*((name, code) for code, name in LANGUAGES.items()), *LANGUAGES.items(), ("auto", "detect")]


LANGUAGE_OPTION = {"metavar": "LANG", "callback": parse_language, "autocompletion": complete_language,
                   "show_default": False}


def run_segments(inputs: list[str], *, runner: Runner, fmt: str | None, formats: list[str], output_dir: Path | None,
                 fail_fast: bool, task: Callable[..., Any], meta: dict[str, Any], skip_existing: bool = False,
                 errors_as_records: bool = False, span: tuple[int | None, int | None] = (None, None)) -> int:
    """Shared by transcribe and diarize: one writer per stream (or per file with --output-dir)."""
    from gemmapipe.core.media.source import open_input
    from gemmapipe.core.writers import get_writer

    runner.check_inputs(inputs)  # a sole missing input is exit 3 before any model check
    fmt = runner.choose_format(fmt, formats, several=len(inputs) > 1, output_dir=output_dir)
    runner.plan_outputs(inputs, output_dir=output_dir, ext=fmt)  # before the model: nothing runs onto an input
    runner.model_pair()  # a missing or wrong model fails before any decoding (exit 4)

    def process(spec: str, writer: Any) -> None:
        # under -j, what an input writes is held until earlier inputs are written
        with open_input(spec, warn=runner.warn) as src, runner.ordered_output(writer) as out:
            info: dict[str, Any] = dict(meta)
            out.begin(src.name, info)
            first_s, total_s = progress_span(src, *span)
            with runner.progress(src.name, total_s) as advance:
                result = task(src, on_segment=out.segment, on_progress=lambda s: advance(s / 16000 - first_s))
            info.update(result.meta)
            info.update(src.meta())  # warnings, NaN samples replaced
            info.update(runner_meta(runner))
            out.end(src.name, info)

    try:
        return runner.write_batch(inputs, process, make_writer=lambda out, **kw: get_writer(fmt, out, **kw), ext=fmt,
                                  output_dir=output_dir, fail_fast=fail_fast, skip_existing=skip_existing,
                                  errors_as_records=errors_as_records)
    finally:
        runner.close()


def progress_span(src: Any, start_ms: int | None, end_ms: int | None) -> tuple[float, float | None]:
    """(first second, seconds to go through) of an input for its progress bar: from --start to --end
    or the end of the audio; the length is None when it is not known (a live pipe)."""
    info = getattr(src, "info", None)
    duration = (info.audio_duration_ms or info.duration_ms) if info is not None else None
    end = min(x for x in (end_ms, duration) if x) if (end_ms or duration) else None
    first = start_ms or 0
    return first / 1000, (max(1, end - first) / 1000 if end is not None else None)


def runner_meta(runner: Runner) -> dict[str, Any]:
    """Model file, sha256 prefix and parameters for json output (only once a model was loaded)."""
    return runner.meta()


@with_common
def command(
    inputs: Annotated[list[str] | None, input_args("Audio or video files, or - for stdin.")] = None,
    fmt: Annotated[str | None, typer.Option("-f", "--format", rich_help_panel=OUTPUT_PANEL,
                                            metavar="FORMAT", autocompletion=choices(FORMATS),
                                            help=f"Output format: {', '.join(FORMATS)} (default: txt; jsonl for "
                                                 "several inputs to one stream).", show_default=False)] = None,
    language: Annotated[str | None, typer.Option("-l", "--language", **LANGUAGE_OPTION,
                                                 help="Spoken language: an ISO 639-1 code or a name, e.g. de or "
                                                      "German (default: detect).")] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", show_default=False,
                                               help="Context or vocabulary to help the model.")] = None,
    start: Annotated[str | None, typer.Option("--start", show_default=False, metavar="TIME",
                                              help="Start at this time (90, 1:30).")]
    = None,
    end: Annotated[str | None, typer.Option("--end", show_default=False, metavar="TIME",
                                            help="Stop at this time.")] = None,
    output_dir: Annotated[Path | None, OUTPUT_DIR] = None,
    dry_run: Annotated[bool, DRY_RUN] = False,
    fail_fast: Annotated[bool, FAIL_FAST] = False,
    files_from: Annotated[str | None, FILES_FROM] = None,
    skip_existing: Annotated[bool, SKIP_EXISTING] = False,
    errors_as_records: Annotated[bool, ERRORS_AS_RECORDS] = False,
    vad: Annotated[str, VAD] = VADS[0],
    *,
    common: Common,
) -> int:
    from gemmapipe.core.errors import UsageError
    from gemmapipe.core.timefmt import parse_time_ms

    inputs = [*(inputs or []), *read_files_from(files_from)]
    if fmt is not None and fmt not in FORMATS:
        raise UsageError("--format", f"unknown format {fmt!r}", f"choose one of {', '.join(FORMATS)}")
    check_vad(vad)
    start_ms, end_ms = parse_time_ms(start, what="--start"), parse_time_ms(end, what="--end")
    runner = Runner(common, needs={"audio"}, command="transcribe")
    from gemmapipe.core.tasks.transcribe import TranscribeOptions, n_ctx_for, transcribe

    options = TranscribeOptions(language=language, prompt=prompt, start_ms=start_ms, end_ms=end_ms, vad=vad,
                                generate=runner.generate_options(320), jobs=runner.jobs)
    if dry_run:
        return runner.dry_run(inputs, n_ctx=n_ctx_for(options), want_audio=True, want_frames=False,
                              start_ms=start_ms, end_ms=end_ms, vad=vad, max_clip_s=options.max_clip_s)
    engine_for = lambda: runner.engine(n_ctx=n_ctx_for(options))  # noqa: E731
    def task(src: Any, **kw: Any) -> Any:
        return transcribe(src, engine_for, options, **kw)

    meta = {"task": "transcribe", "language": language}
    return run_segments(inputs, runner=runner, fmt=fmt, formats=FORMATS, output_dir=output_dir, fail_fast=fail_fast,
                        span=(start_ms, end_ms),
                        task=task, meta=meta, skip_existing=skip_existing, errors_as_records=errors_as_records)
