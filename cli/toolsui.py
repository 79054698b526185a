"""The people's side of tool use in `chat`: loading `--functions`, the `--tools-debug` lines and the
`--tools-approve` question (asked on the terminal itself, /dev/tty, never on stdin, which may be
the data being piped in)."""

import sys
from typing import Any

from .errors import for_people

TTY = "/dev/tty"  # the controlling terminal, whatever stdin and stdout are


def toolbox(files: list[str], *, chain_limit: int, debug: bool, approve: bool, schema: bool, warn: Any) -> Any:
    """The Toolbox for `files` (functions load now, before any model: a broken file is exit 2)."""
    from gemmapipe.core.errors import UsageError
    from gemmapipe.core.tools import Toolbox

    if schema:
        raise UsageError(None, "cannot be combined with {schema}: the schema's grammar would forbid every call",
                         parameter="functions")
    return Toolbox.from_files(files, chain_limit=chain_limit, on_call=_debug_line if debug else None,
                              approve=_approver(warn) if approve else None)


def _debug_line(call: Any, result: Any) -> None:
    from gemmapipe.core.errors import printable
    from gemmapipe.core.tools import describe_call, describe_result

    sys.stderr.write(f"gemmapipe: tool call: {printable(describe_call(call))}\n"
                     f"gemmapipe: tool result: {printable(describe_result(result))}\n")
    sys.stderr.flush()


def _approver(warn: Any) -> Any:
    from gemmapipe.core.errors import printable
    from gemmapipe.core.tools import describe_call

    def approve(call: Any) -> bool:
        what = printable(describe_call(call))
        try:
            # Unbuffered bytes: a terminal cannot seek, which a text file open for both ways needs.
            tty = open(TTY, "r+b", buffering=0)  # noqa: SIM115
        except OSError:
            warn(for_people(f"no terminal to ask whether to run {what}: refused (the model is told)"))
            return False
        with tty:
            tty.write(f"gemmapipe: run {what}? [y/N] ".encode())
            answer = tty.readline(4096).decode("utf-8", "replace")
        return answer.strip().lower() in ("y", "yes")

    return approve
