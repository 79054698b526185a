"""How errors reach people: one line `gemmapipe: error: <what>: <why>` (and a hint line), with
core's parameter names turned into the flags that set them, and names made safe for one line."""

import os
import sys

from gemmapipe.core.errors import GemmapipeError, printable, render

# Core's parameter names -> the flags a user types. The one place the two vocabularies meet.
FLAGS: dict[str, str] = {
    "model": "--model", "mmproj": "--mmproj", "threads": "--threads", "gpu_layers": "--gpu-layers",
    "ctx_size": "--ctx-size", "seed": "--seed", "temperature": "--temperature", "max_tokens": "--max-tokens",
    "no_template": "--no-template", "flash_attn": "--flash-attn", "cache_type": "--cache-type",
    "output": "--output", "output_dir": "--output-dir", "format": "--format", "quiet": "--quiet",
    "verbose": "--verbose", "server": "--server", "api_key": "--api-key", "server_model": "--server-model",
    "timeout": "--timeout", "retries": "--retries", "jobs": "-j/--jobs", "start": "--start", "end": "--end",
    "fps": "--fps", "max_frames": "--max-frames", "frame_tokens": "--frame-tokens",
    "image_tokens": "--image-tokens", "speakers": "--speakers", "min_speakers": "--min-speakers",
    "max_speakers": "--max-speakers", "score": "--score", "schema": "--schema", "language": "--language",
    "fail_fast": "--fail-fast", "files_from": "--files-from", "skip_existing": "--skip-existing",
    "errors_as_records": "--errors-as-records", "attach": "--attach", "session": "--session",
    "prompt": "--prompt", "no_cache": "--no-cache", "no_audio": "--no-audio", "vad": "--vad",
    "max_line_width": "--max-line-width", "max_line_count": "--max-line-count",
    "functions": "--functions", "chain_limit": "--chain-limit", "tools_debug": "--tools-debug",
    "tools_approve": "--tools-approve", "draft": "--draft", "draft_max": "--draft-max", "lora": "--lora",
    "translate": "--translate",
    "model_env": "GEMMAPIPE_MODEL", "server_env": "GEMMAPIPE_SERVER", "api_key_env": "GEMMAPIPE_API_KEY",
    "models_dir_env": "GEMMAPIPE_MODELS_DIR", "config_env": "GEMMAPIPE_CONFIG",
    "spool_max_env": "GEMMAPIPE_SPOOL_MAX", "pull_command": "gemmapipe models pull",
    "models_list_command": "gemmapipe models list",
    "describe_command": "gemmapipe describe", "video_command": "gemmapipe video",
    "transcribe_command": "gemmapipe transcribe", "chat_command": "gemmapipe chat",
}


def for_people(text: str) -> str:
    return printable(render(text, FLAGS))


def error_line(subject: str, reason: str, hint: str | None = None) -> None:
    sys.stderr.write(f"gemmapipe: error: {for_people(subject)}: {for_people(reason)}\n")
    if hint:
        sys.stderr.write(f"gemmapipe: hint: {for_people(hint)}\n")
    sys.stderr.flush()


def report(exc: GemmapipeError) -> None:
    """The one error printer: a GemmapipeError as its line (and hint)."""
    subject = FLAGS.get(exc.parameter, exc.subject) if exc.parameter and exc.subject == exc.parameter \
        else exc.subject
    error_line(subject, exc.reason, exc.hint)


EXIT_BROKEN_PIPE = 141  # what a filter killed by SIGPIPE reports (128 + 13); not an ExitStatus


def broken_pipe() -> int:
    """The reader went away (`gemmapipe ... | head -1`): stop quietly, as a filter killed by SIGPIPE.
    The one handler for it: every place that meets BrokenPipeError returns this."""
    quiet_broken_pipe()
    return EXIT_BROKEN_PIPE


def quiet_broken_pipe() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
