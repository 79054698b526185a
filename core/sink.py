"""Where results go: stdout, or a file written to a temporary name and renamed when complete,
so a crash or Ctrl-C never leaves a complete-looking partial file."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from .errors import GemmapipeError

# Temporary files being written. A signal can land anywhere, even between mkstemp and the `try`
# that would remove its file; whatever is left here when the process ends is removed then.
_ACTIVE: set[str] = set()


def remove_temp_files() -> None:
    for path in list(_ACTIVE):
        _unlink_quietly(path)
    _ACTIVE.clear()


atexit.register(remove_temp_files)


@contextlib.contextmanager
def open_sink(target: str | Path | None) -> Iterator[TextIO]:
    if target is None or str(target) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(target)
    directory = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
        _ACTIVE.add(tmp)
    except OSError as exc:
        raise GemmapipeError(f"output {path}", f"cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _ACTIVE.discard(tmp)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise GemmapipeError(f"output {path}", f"cannot write: {exc.strerror or exc}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
    _ACTIVE.discard(path)
