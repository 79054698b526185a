"""gemmapipe describe INPUT...: image understanding."""

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

FORMATS = ["txt", "json", "jsonl"]


@with_common
def command(
    inputs: Annotated[list[str] | None, input_args("Image files (any Pillow format), or - for stdin.")] = None,
    prompt: Annotated[str | None, typer.Option("-p", "--prompt", show_default=False,
                                               help="What to ask (default: a concise description).")] = None,
    schema: Annotated[str | None, typer.Option("--schema", show_default=False, metavar="SCHEMA",
                                               help="JSON Schema (inline or a file): the answer is valid JSON.")]
    = None,
    image_tokens: Annotated[int, typer.Option("--image-tokens", min=70, max=1120,
                                              help="Token budget per image (70-1120).")] = 280,
    fmt: Annotated[str | None, typer.Option("-f", "--format", rich_help_panel=OUTPUT_PANEL, show_default=False,
                                            metavar="FORMAT", autocompletion=choices(FORMATS),
                                            help="Output format: txt, json, jsonl (default: txt; jsonl for "
                                                 "several inputs to one stream).")] = None,
    output_dir: Annotated[Path | None, OUTPUT_DIR] = None,
    dry_run: Annotated[bool, DRY_RUN] = False,
    fail_fast: Annotated[bool, FAIL_FAST] = False,
    files_from: Annotated[str | None, FILES_FROM] = None,
    skip_existing: Annotated[bool, SKIP_EXISTING] = False,
    errors_as_records: Annotated[bool, ERRORS_AS_RECORDS] = False,
    *,
    common: Common,
) -> int:
    from gemmapipe.core.errors import UsageError

    inputs = [*(inputs or []), *read_files_from(files_from)]
    if fmt is not None and fmt not in FORMATS:
        raise UsageError("--format", f"unknown format {fmt!r}", f"choose one of {', '.join(FORMATS)}")
    runner = Runner(common, needs={"vision"}, command="describe")
    from gemmapipe.core.engine.grammar import load_schema
    from gemmapipe.core.media.source import open_input
    from gemmapipe.core.tasks.describe import DEFAULT_PROMPT, DescribeOptions, describe, n_ctx_for
    from gemmapipe.core.writers import get_description_writer

    options = DescribeOptions(prompt=prompt or DEFAULT_PROMPT, schema=load_schema(schema) if schema else None,
                              image_tokens=image_tokens, generate=runner.generate_options(512))
    if dry_run:
        return runner.dry_run(inputs, n_ctx=n_ctx_for(options), want_audio=False, want_frames=True,
                              image_tokens=image_tokens)
    runner.check_inputs(inputs)  # a bad --schema or a sole missing input comes before any model check
    fmt = runner.choose_format(fmt, FORMATS, several=len(inputs) > 1, output_dir=output_dir)
    runner.plan_outputs(inputs, output_dir=output_dir, ext=fmt)  # before the model: nothing runs onto an input
    runner.model_pair()  # a missing or wrong model fails before any decoding (exit 4)
    # min 1: the media layer already sized each image for mtmd to keep as is
    engine_for = lambda: runner.engine(n_ctx=n_ctx_for(options), image_tokens=(1, image_tokens))  # noqa: E731

    def one(spec: str, writer: Any) -> None:
        with open_input(spec, warn=runner.warn) as src:
            src.require("image")
            with runner.ordered_output(writer) as out:  # under -j: held until earlier inputs are written
                out.write(describe(src, engine_for, options))

    try:
        return runner.write_batch(inputs, one, make_writer=lambda out, **kw: get_description_writer(fmt, out, **kw),
                                  ext=fmt, output_dir=output_dir, fail_fast=fail_fast, skip_existing=skip_existing,
                                  errors_as_records=errors_as_records)
    finally:
        runner.close()

