"""gemmapipe transcribe INPUT...: speech to text."""

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

FORMAT_SEVERAL = "several from one pass: srt,vtt,json or all, with --output-dir"
MAX_LINE_WIDTH = typer.Option("--max-line-width", min=1, max=1000, metavar="N", rich_help_panel=OUTPUT_PANEL,
                              show_default=False, help="srt, vtt: at most N characters a line (default: 42).")
MAX_LINE_COUNT = typer.Option("--max-line-count", min=1, max=100, metavar="N", rich_help_panel=OUTPUT_PANEL,
                              show_default=False, help="srt, vtt: at most N lines a cue (default: 2).")


def parse_formats(value: str | None, formats: list[str]) -> list[str] | None:
    """-f/--format: one format, several separated by commas (`srt,vtt,json`: one pass writes them
    all), or `all`; None when not given. An unknown one is a usage error naming it."""
    from gemmapipe.core.errors import UsageError

    if value is None:
        return None
    wanted: list[str] = []
    for part in value.split(","):
        name = part.strip()
        if name == "all":
            wanted += formats
        elif name in formats:
            wanted.append(name)
        else:
            raise UsageError("--format", f"unknown format {name!r}",
                             f"choose one of {', '.join(formats)}; several separated by commas, or all")
    return list(dict.fromkeys(wanted))


def plan_formats(runner: Runner, fmt: str | None, formats: list[str], inputs: list[str], *,
                 output_dir: Path | None, dry_run: bool) -> list[str]:
    """The formats this run writes (one pass for all), checked against where they go; before the
    model. A sole missing input is reported first (exit 3), as the run would."""
    requested = parse_formats(fmt, formats)
    if dry_run:  # the plan is written instead; the formats only shape the clips it plans
        return runner.choose_formats(requested, formats, several=len(inputs) > 1, output_dir=output_dir,
                                     check=False)
    runner.check_inputs(inputs)
    return runner.choose_formats(requested, formats, several=len(inputs) > 1, output_dir=output_dir)


def cue_rules(runner: Runner, fmts: list[str], max_line_width: int | None, max_line_count: int | None) -> Any:
    """CueRules for srt and vtt (their defaults, or the line options); a warning when the options
    were given for formats that have no cues."""
    from gemmapipe.core.writers import SUBTITLE_FORMATS, CueRules

    given = {k: v for k, v in (("max_line_width", max_line_width), ("max_line_count", max_line_count))
             if v is not None}
    if given and not SUBTITLE_FORMATS.intersection(fmts):
        names = " and ".join("{" + k + "}" for k in given)
        runner.warn(f"{names} {'shape' if len(given) > 1 else 'shapes'} srt and vtt cues; "
                    f"ignored for {', '.join(fmts)}")
    return CueRules(**given)


def wants_cues(fmts: list[str]) -> bool:
    from gemmapipe.core.writers import SUBTITLE_FORMATS

    return bool(SUBTITLE_FORMATS.intersection(fmts))


def complete_target(incomplete: str) -> list[tuple[str, str]]:
    return [pair for pair in complete_language(incomplete) if pair[0] != "auto"]


def run_segments(inputs: list[str], *, runner: Runner, **kw: Any) -> int:
    """Shared by transcribe and diarize (see Session.run_transcripts); the session is closed after."""
    try:
        return runner.run_transcripts(inputs, **kw)
    finally:
        runner.close()


@with_common
def command(
    inputs: Annotated[list[str] | None, input_args("Audio or video files, or - for stdin.")] = None,
    fmt: Annotated[str | None, typer.Option("-f", "--format", rich_help_panel=OUTPUT_PANEL,
                                            metavar="FORMAT", autocompletion=choices([*FORMATS, "all"]),
                                            help=f"Output format: {', '.join(FORMATS)} (default: txt; jsonl for "
                                                 f"several inputs to one stream); {FORMAT_SEVERAL}.",
                                            show_default=False)] = None,
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
    max_line_width: Annotated[int | None, MAX_LINE_WIDTH] = None,
    max_line_count: Annotated[int | None, MAX_LINE_COUNT] = None,
    *,
    common: Common,
) -> int:
    from gemmapipe.core.errors import UsageError
    from gemmapipe.core.timefmt import parse_time_ms

    inputs = [*(inputs or []), *read_files_from(files_from)]
    parse_formats(fmt, FORMATS)
    check_vad(vad)
    if bilingual and not translate:
        raise UsageError("--bilingual", "needs --translate LANG", "e.g. --translate en --bilingual")
    start_ms, end_ms = parse_time_ms(start, what="--start"), parse_time_ms(end, what="--end")
    runner = Runner(common, needs={"audio"}, command="transcribe")
    from gemmapipe.core.tasks.segment import CUE_MAX_CLIP_S, CUE_MIN_SILENCE_MS
    from gemmapipe.core.tasks.transcribe import TRANSLATE_MAX_TOKENS, TranscribeOptions, n_ctx_for, transcribe

    fmts = plan_formats(runner, fmt, FORMATS, inputs, output_dir=output_dir, dry_run=dry_run)
    options = TranscribeOptions(language=language, translate=translate, prompt=prompt, start_ms=start_ms,
                                end_ms=end_ms, vad=vad, jobs=runner.jobs,
                                generate=runner.generate_options(TRANSLATE_MAX_TOKENS if translate else 320))
    if wants_cues(fmts):  # clips cut at shorter pauses: each a natural cue or two, times from the audio
        options.max_clip_s, options.min_silence_ms = CUE_MAX_CLIP_S, CUE_MIN_SILENCE_MS
    if dry_run:
        return runner.dry_run(inputs, n_ctx=n_ctx_for(options), want_audio=True, want_frames=False,
                              start_ms=start_ms, end_ms=end_ms, vad=vad, max_clip_s=options.max_clip_s,
                              min_silence_ms=options.min_silence_ms)
    rules = cue_rules(runner, fmts, max_line_width, max_line_count)
    engine_for = lambda: runner.engine(n_ctx=n_ctx_for(options))  # noqa: E731
    def task(src: Any, **kw: Any) -> Any:
        def spoken(name: str | None) -> None:
            runner.info(f"{src.name}: spoken language: {name}" if name else
                        f"{src.name}: the model could not tell the spoken language")

        return transcribe(src, engine_for, options, on_language=spoken, **kw)

    meta: dict[str, Any] = {"task": "transcribe", "language": language}
    return run_segments(inputs, runner=runner, fmts=fmts, rules=rules, output_dir=output_dir, fail_fast=fail_fast,
                        span=(start_ms, end_ms), bilingual=bilingual,
                        task=task, meta=meta, skip_existing=skip_existing, errors_as_records=errors_as_records)
