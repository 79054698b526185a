"""gemmapipe models pull|list|path: get the default model, see what is here, print its path.

Also `default_or_offer`, which Runner calls when no model is configured: the pulled default if it
is here; else, on a terminal, an offer to pull it; else (pipes, cron) exit 4 with the command to run.
"""

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="models",
    help="Get the model: download the default GGUF pair, list the models here, print the model's path.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _say(quiet: bool) -> Any:
    def log(message: str) -> None:
        if not quiet:
            sys.stderr.write(f"gemmapipe: {message}\n")
            sys.stderr.flush()

    return log


@app.command("pull", help="Download the default model and its projector (resumable, sha256-checked).")
def pull(
    files: Annotated[list[str] | None, typer.Argument(
        show_default=False, metavar="[FILE]...",
        help="Files of --repo to fetch (default: gemma-4-12B-it-Q4_K_M.gguf and its mmproj).")] = None,
    repo: Annotated[str, typer.Option("--repo", metavar="REPO", help="Hugging Face repository.")]
    = "ggml-org/gemma-4-12B-it-GGUF",
    revision: Annotated[str, typer.Option("--revision", metavar="REV", help="Branch, tag or commit.")] = "main",
    offline: Annotated[bool, typer.Option("--offline", help="Never touch the network: check what is here.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> int:
    from gemmapipe.core import models_hub as hub

    names = tuple(files) if files else (hub.DEFAULT_FILES if repo == hub.DEFAULT_REPO else ())
    if not names:
        from gemmapipe.core.errors import UsageError

        raise UsageError("models pull", f"which files of {repo}?", "name them: gemmapipe models pull --repo R FILE...")
    bars = not (quiet or no_progress) and sys.stderr.isatty()
    paths = hub.pull(repo, names, revision=revision, offline=offline, progress=bars, log=_say(quiet))
    for path in paths:
        sys.stdout.write(f"{path}\n")
    return 0


@app.command("list", help="The models here: repository, file, size, status (ok, partial, missing), path, and "
                          "which one commands use without --model (a header row on a terminal).")
def list_models() -> int:
    from gemmapipe.core import models_hub as hub
    from gemmapipe.core.errors import printable

    model = configured_model()
    projector = configured_mmproj(model) if model is not None else None
    in_use = {model: "model", projector: "mmproj"} if model is not None else {}
    default = hub.default_model_path()
    if model is None and default is not None:
        in_use = {default: "model", default.parent / hub.DEFAULT_MMPROJ_FILE: "mmproj"}
    rows = []
    for st in hub.local_models((model, projector)):
        if st.complete:
            status, size = "ok", hub.human_size(st.size)
        elif st.partial:
            pct = f" {100 * st.partial // st.expected}%" if st.expected else ""
            status, size = f"partial{pct}", hub.human_size(st.partial)
        else:
            status, size = "missing", "-"
        rows.append([st.repo, st.name, size, status, printable(str(st.path)), in_use.get(st.path, "-")])
    if sys.stdout.isatty():
        table = [["REPO", "FILE", "SIZE", "STATUS", "PATH", "USED"], *rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for r in table:
            sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")
    else:
        for r in rows:
            sys.stdout.write("\t".join(r) + "\n")
    return 0


@app.command("rm", help="Delete downloaded models from the models folder (by file name, as models list shows "
                        "them; unfinished downloads too).")
def rm(
    names: Annotated[list[str], typer.Argument(show_default=False, metavar="FILE...",
                                               help="File names (or paths) in the models folder.")],
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr.")] = False,
) -> int:
    from gemmapipe.core import models_hub as hub

    say = _say(quiet)
    for name in names:
        for path in hub.remove(name):
            say(f"removed {path}")
    return 0


@app.command("path", help="Print the model a command would use without -m (or its projector, with --mmproj).")
def path(
    mmproj: Annotated[bool, typer.Option("--mmproj", help="Print the projector's path instead.")] = False,
) -> int:
    model = configured_model()
    if model is None:
        model = _default_model()
    if model is None:
        raise no_model()
    if not mmproj:
        sys.stdout.write(f"{model}\n")
        return 0
    explicit = os.environ.get("GEMMAPIPE_MMPROJ") or _config_value("mmproj")
    if explicit:
        sys.stdout.write(f"{Path(explicit).expanduser()}\n")
        return 0
    from gemmapipe.core.errors import ModelError
    from gemmapipe.core.model import find_mmproj

    found = find_mmproj(model)
    if found is None:
        raise ModelError(f"model {model}", "no mmproj*.gguf beside it", "pass --mmproj PATH to the commands")
    sys.stdout.write(f"{found}\n")
    return 0


def configured_mmproj(model: Path) -> Path | None:
    """The projector commands use with `model`: the configured one, else the single one beside it."""
    explicit = os.environ.get("GEMMAPIPE_MMPROJ") or _config_value("mmproj")
    if explicit:
        return Path(str(explicit)).expanduser()
    from gemmapipe.core.errors import ModelError
    from gemmapipe.core.model import find_mmproj

    try:
        return find_mmproj(model)
    except ModelError:  # several candidates: list the model alone
        return None


def _config_value(key: str) -> Any:
    from gemmapipe.core.config import load_config

    return load_config().get(key)


def configured_model() -> Path | None:
    """The model from the environment or the config file (what -m defaults to)."""
    value = os.environ.get("GEMMAPIPE_MODEL") or _config_value("model")
    return Path(str(value)).expanduser() if value else None


def _default_model() -> Path | None:
    from gemmapipe.core.models_hub import default_model_path

    return default_model_path()


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _default_text() -> str:
    from gemmapipe.core import models_hub as hub

    return f"{hub.DEFAULT_REPO} ({hub.DEFAULT_MODEL_FILE} + {hub.DEFAULT_MMPROJ_FILE}, {hub.DEFAULT_SIZE_TEXT})"


def no_model() -> Any:
    """The one way a missing model is described (every command and `models path`), exit 4."""
    from gemmapipe.core.errors import ModelError
    from gemmapipe.core.model import MODEL_HINT

    return ModelError("model", "no model given", MODEL_HINT)


def default_or_offer(quiet: bool = False) -> Path:
    """The model to use when none is configured: the pulled default, or (on a terminal, if the
    user agrees) the default pulled now. Otherwise ModelError (exit 4) naming the command to run."""
    from gemmapipe.core import models_hub as hub

    found = hub.default_model_path()
    if found is not None:
        return found
    what = _default_text()
    refusal = no_model()
    if not _interactive() or hub.offline_env():
        raise refusal
    sys.stderr.write(f"gemmapipe: no model is configured. Download the default, {what},\n"
                     f"gemmapipe: into {hub.repo_dir()}? [y/N] ")
    sys.stderr.flush()
    try:
        answer = input()
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise refusal
    paths = hub.pull(progress=not quiet, log=_say(quiet))
    return paths[0]
