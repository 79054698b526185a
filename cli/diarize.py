"""gemmapipe diarize INPUT...: who spoke when (and what)."""

import sys
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
from .transcribe import (
    FORMAT_SEVERAL,
    LANGUAGE_OPTION,
    MAX_LINE_COUNT,
    MAX_LINE_WIDTH,
    VAD,
    VADS,
    check_vad,
    cue_rules,
    parse_formats,
    plan_formats,
    run_segments,
    wants_cues,
)

FORMATS = ["txt", "rttm", "srt", "vtt", "json", "jsonl"]


@with_common
def command(
    inputs: Annotated[list[str] | None, input_args("Audio or video files, or - for stdin.")] = None,
    fmt: Annotated[str | None, typer.Option("-f", "--format", rich_help_panel=OUTPUT_PANEL, show_default=False,
                                            metavar="FORMAT", autocompletion=choices([*FORMATS, "all"]),
                                            help=f"Output format: {', '.join(FORMATS)} (default: txt); "
                                                 f"{FORMAT_SEVERAL}.")] = None,
    speakers: Annotated[int | None, typer.Option("--speakers", min=1, show_default=False,
                                                 help="Exact number of speakers, if known.")] = None,
    min_speakers: Annotated[int, typer.Option("--min-speakers", min=1, help="At least this many speakers.")] = 1,
    max_speakers: Annotated[int, typer.Option("--max-speakers", min=1, help="At most this many speakers.")] = 8,
    names: Annotated[str | None, typer.Option("--names", show_default=False, metavar="NAME,...",
                                              help="Comma-separated names, in order of first appearance.")] = None,
    language: Annotated[str | None, typer.Option("-l", "--language", **LANGUAGE_OPTION,
                                                 help="Spoken language: an ISO 639-1 code or a name, e.g. de or "
                                                      "German (default: detect).")] = None,
    score: Annotated[Path | None, typer.Option("--score", show_default=False, metavar="RTTM",
                                               help="Reference RTTM: print DER to stderr (needs gemmapipe[score]).")]
    = None,
    start: Annotated[str | None, typer.Option("--start", show_default=False, metavar="TIME",
                                              help="Start at this time.")] = None,
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
    from gemmapipe.core.timefmt import parse_time_ms

    inputs = [*(inputs or []), *read_files_from(files_from)]
    parse_formats(fmt, FORMATS)
    check_vad(vad)
    start_ms, end_ms = parse_time_ms(start, what="--start"), parse_time_ms(end, what="--end")
    runner = Runner(common, needs={"audio"}, command="diarize")
    from gemmapipe.core.tasks.diarize import (
        DiarizeOptions,
        diarize,
        n_ctx_for,
        read_rttm,
        require_scoring,
        score_der,
    )

    lo, hi = (speakers, speakers) if speakers else (min_speakers, max_speakers)
    options = DiarizeOptions(min_speakers=lo, max_speakers=hi, language=language, start_ms=start_ms, end_ms=end_ms,
                             vad=vad,
                             names=[n.strip() for n in names.split(",") if n.strip()] if names else [],
                             generate=runner.generate_options(320))
    options.validate()
    fmts = plan_formats(runner, fmt, FORMATS, inputs, output_dir=output_dir, dry_run=dry_run)
    if wants_cues(fmts):  # clips cut at shorter pauses: each a natural cue or two, times from the audio
        from gemmapipe.core.tasks.segment import CUE_MAX_CLIP_S, CUE_MIN_SILENCE_MS

        options.max_clip_s, options.min_silence_ms = CUE_MAX_CLIP_S, CUE_MIN_SILENCE_MS
    if dry_run:  # diarize's clips are shorter (DiarizeOptions.max_clip_s): room for the exemplars
        return runner.dry_run(inputs, n_ctx=n_ctx_for(options), want_audio=True, want_frames=False,
                              start_ms=start_ms, end_ms=end_ms, vad=vad, max_clip_s=options.max_clip_s,
                              min_silence_ms=options.min_silence_ms)
    rules = cue_rules(runner, fmts, max_line_width, max_line_count)
    reference = None
    if score is not None:  # before any work (the model included): exit 2 naming the extra or the file
        require_scoring()
        reference = read_rttm(str(score))
    engine_for = lambda: runner.engine(n_ctx=n_ctx_for(options))  # noqa: E731

    def task(src: Any, **kw: Any) -> Any:
        result = diarize(src, engine_for, options, **kw)
        if reference is not None:
            der = score_der(reference, result.segments, Path(src.name).stem)
            result.meta["der"] = der
            sys.stderr.write("gemmapipe: DER {:.2%} (missed {:.2f}s, false alarm {:.2f}s, confusion {:.2f}s)\n".format(
                der.get("diarization error rate", 0.0), der.get("missed detection", 0.0),
                der.get("false alarm", 0.0), der.get("confusion", 0.0)))
        return result

    return run_segments(inputs, runner=runner, fmts=fmts, rules=rules, output_dir=output_dir, fail_fast=fail_fast,
                        span=(start_ms, end_ms),
                        task=task, meta={"task": "diarize"}, skip_existing=skip_existing,
                        errors_as_records=errors_as_records)
