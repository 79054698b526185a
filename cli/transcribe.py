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


def _language(value: str, flag: str, *, auto: bool) -> str:
    """An ISO 639-1 code or a name -> the English name the prompt needs; anything else is a usage
    error with a hint."""
    from gemmapipe.core import languages

    name = languages.language_name(value)
    if name is not None:
        return name
    from gemmapipe.core.errors import UsageError

    guess = languages.closest(value)
    hint = f"did you mean {guess} ({languages.code_of(guess)})?" if guess else \
        "give an ISO 639-1 code or an English name (en, English, de, German)" + (", or auto to detect" if auto else "")
    raise UsageError(flag, f"unknown language {value!r}", hint)


def parse_language(ctx: typer.Context, param: Any, value: str | None) -> str | None:
    """-l/--language at parse time (flag or config file): a language -> its English name; `auto` -> detect."""
    from gemmapipe.core import languages

    if value is None or ctx.resilient_parsing or languages.is_auto(value):
        return None
    return _language(value, "--language", auto=True)


def parse_target(ctx: typer.Context, param: Any, value: str | None) -> str | None:
    """--translate at parse time: the language to translate into, as its English name (any of -l's)."""
    if value is None or ctx.resilient_parsing:
        return None
    return _language(value, "--translate", auto=False)


def complete_language(incomplete: str) -> list[tuple[str, str]]:
    from gemmapipe.core.languages import LANGUAGES

    return [*((name, code) for code, name in LANGUAGES.items()), *LANGUAGES.items(), ("auto", "detect")]


LANGUAGE_OPTION = {"metavar": "LANG", "callback": parse_language, "autocompletion": complete_language,
                   "show_default": False}


def complete_target(incomplete: str) -> list[tuple[str, str]]:
    return [pair for pair in complete_language(incomplete) if pair[0] != "auto"]


def run_segments(inputs: list[str], *, runner: Runner, fmt: str | None, formats: list[str], output_dir: Path | None,
                 fail_fast: bool, task: Callable[..., Any], meta: dict[str, Any], skip_existing: bool = False,
                 errors_as_records: bool = False, bilingual: bool = False) -> int:
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
            with runner.progress(src.name, None) as advance:
                result = task(src, on_segment=out.segment, on_progress=lambda s: advance(s / 16000))
            info.update(result.meta)
            info.update(src.meta())  # warnings, NaN samples replaced
            info.update(runner_meta(runner))
            out.end(src.name, info)

    try:
        return runner.write_batch(inputs, process, ext=fmt,
                                  make_writer=lambda out, **kw: get_writer(fmt, out, bilingual=bilingual, **kw),
                                  output_dir=output_dir, fail_fast=fail_fast, skip_existing=skip_existing,
                                  errors_as_records=errors_as_records)
    finally:
        runner.close()


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
    translate: Annotated[str | None, typer.Option(
        "--translate", metavar="LANG", callback=parse_target, autocompletion=complete_target, show_default=False,
        help="Also translate the speech into this language (a code or a name, as for -l): txt, srt, vtt and tsv "
             "show the translation, json and jsonl carry text and translation.")] = None,
    bilingual: Annotated[bool, typer.Option(
        "--bilingual", rich_help_panel=OUTPUT_PANEL,
        help="With --translate: txt, srt and vtt show the transcription and, below it, the translation.")] = False,
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
    if bilingual and not translate:
        raise UsageError("--bilingual", "needs --translate LANG", "e.g. --translate en --bilingual")
    start_ms, end_ms = parse_time_ms(start, what="--start"), parse_time_ms(end, what="--end")
    runner = Runner(common, needs={"audio"}, command="transcribe")
    from gemmapipe.core.tasks.transcribe import TRANSLATE_MAX_TOKENS, TranscribeOptions, n_ctx_for, transcribe

    options = TranscribeOptions(language=language, translate=translate, prompt=prompt, start_ms=start_ms,
                                end_ms=end_ms, vad=vad, jobs=runner.jobs,
                                generate=runner.generate_options(TRANSLATE_MAX_TOKENS if translate else 320))
    if dry_run:
        return runner.dry_run(inputs, n_ctx=n_ctx_for(options), want_audio=True, want_frames=False,
                              start_ms=start_ms, end_ms=end_ms, vad=vad, max_clip_s=options.max_clip_s)
    engine_for = lambda: runner.engine(n_ctx=n_ctx_for(options))  # noqa: E731
    def task(src: Any, **kw: Any) -> Any:
        def spoken(name: str | None) -> None:
            runner.info(f"{src.name}: spoken language: {name}" if name else
                        f"{src.name}: the model could not tell the spoken language")

        return transcribe(src, engine_for, options, on_language=spoken, **kw)

    meta: dict[str, Any] = {"task": "transcribe", "language": language}
    return run_segments(inputs, runner=runner, fmt=fmt, formats=FORMATS, output_dir=output_dir, fail_fast=fail_fast,
                        task=task, meta=meta, skip_existing=skip_existing, errors_as_records=errors_as_records,
                        bilingual=bilingual)
