"""gemmapipe video INPUT: frames at 1 FPS plus the audio track, in one model call."""


from typing import Annotated

import typer

from .completion import choices
from .options import DRY_RUN, OUTPUT_PANEL, Common, with_common
from .runner import Runner

FORMATS = ["txt", "md", "json"]


@with_common
def command(
    input: Annotated[str | None, typer.Argument(help="A video file, or - for stdin.", show_default=False,
                                                metavar="INPUT")] = None,
    prompt: Annotated[str | None, typer.Option("-p", "--prompt", show_default=False,
                                               help="What to ask about the video.")] = None,
    fps: Annotated[float, typer.Option("--fps", min=0.05, max=10.0, help="Frames per second to show the model.")]
    = 1.0,
    frame_tokens: Annotated[int, typer.Option("--frame-tokens", min=70, max=1120, help="Token budget per frame.")]
    = 70,
    start: Annotated[str | None, typer.Option("--start", show_default=False, metavar="TIME",
                                              help="Start at this time.")] = None,
    end: Annotated[str | None, typer.Option("--end", show_default=False, metavar="TIME",
                                            help="Stop at this time.")] = None,
    max_frames: Annotated[int | None, typer.Option("--max-frames", min=1, show_default=False,
                                                   help="At most this many frames.")] = None,
    no_audio: Annotated[bool, typer.Option("--no-audio", help="Frames only.")] = False,
    no_dedupe: Annotated[bool, typer.Option("--no-dedupe", help="Keep repeated frames and silent seconds.")]
    = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not reuse or save the prefilled state.")] = False,
    fmt: Annotated[str | None, typer.Option("-f", "--format", rich_help_panel=OUTPUT_PANEL, show_default=False,
                                            metavar="FORMAT", autocompletion=choices(FORMATS),
                                            help="Output format: txt, md, json (default: txt, or what -o's "
                                                 "extension names).")] = None,
    dry_run: Annotated[bool, DRY_RUN] = False,
    *,
    common: Common,
) -> int:
    from gemmapipe.core.errors import UsageError
    from gemmapipe.core.timefmt import parse_time_ms

    if input is None:  # as transcribe, describe and diarize say it
        raise UsageError("input", "no input given", "pass a path, or - for stdin: gemmapipe video FILE")
    if fmt is not None and fmt not in FORMATS:
        raise UsageError("--format", f"unknown format {fmt!r}", f"choose one of {', '.join(FORMATS)}")
    start_ms, end_ms = parse_time_ms(start, what="--start"), parse_time_ms(end, what="--end")
    needs = {"vision"} if no_audio else {"vision", "audio"}
    runner = Runner(common, needs=needs, command="video")
    from gemmapipe.core.tasks.video import VIDEO_CTX

    if dry_run:
        return runner.dry_run([input], n_ctx=VIDEO_CTX, want_audio=not no_audio, want_frames=True, fps=fps,
                              frame_tokens=frame_tokens, start_ms=start_ms, end_ms=end_ms, max_frames=max_frames,
                              frame_floor_tokens=runner.image_floor_tokens())

    from gemmapipe.core.config import xdg_dir
    from gemmapipe.core.engine.base import Engine
    from gemmapipe.core.media.source import open_input
    from gemmapipe.core.sink import open_sink
    from gemmapipe.core.statecache import StateCache
    from gemmapipe.core.tasks.video import DEFAULT_PROMPT, VideoOptions, video
    from gemmapipe.core.writers import get_description_writer

    runner.check_inputs([input])  # a missing input is exit 3 before any model check
    fmt = runner.choose_format(fmt, FORMATS, several=False, output_dir=None)
    runner.plan_outputs([input])  # before the model: nothing runs onto an input
    runner.model_pair()  # a missing or wrong model fails before any decoding (exit 4)
    options = VideoOptions(prompt=prompt or DEFAULT_PROMPT, fps=fps, frame_tokens=frame_tokens, start_ms=start_ms,
                           end_ms=end_ms, max_frames=max_frames, audio=not no_audio, dedupe=not no_dedupe,
                           cache=None if no_cache else StateCache(xdg_dir("cache") / "states", warn=runner.warn),
                           frame_floor_tokens=runner.image_floor_tokens(),
                           generate=runner.generate_options(768), jobs=runner.jobs)
    n_ctx = runner.context_size(VIDEO_CTX)

    def engine_for(ctx: int) -> Engine:
        # min 1: the media layer already sized each frame for mtmd to keep as is
        return runner.engine(n_ctx=ctx, image_tokens=(1, frame_tokens))

    try:
        with open_input(input, warn=runner.warn) as src:
            src.require("video")
            with runner.progress(src.name, 1.0) as advance:
                result = video(src, engine_for, options, n_ctx, on_progress=advance)
        runner.info(f"{result.meta.get('tokens_saved', 0)} tokens saved by skipping repeated frames and silence")
        with open_sink(common.output) as out:
            writer = get_description_writer(fmt, out)
            writer.write(result)
            writer.close()
        return 0
    finally:
        runner.close()


