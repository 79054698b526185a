"""Where results go: stdout, a device or pipe written directly, or a regular file written to a
temporary name beside it and renamed when complete, so a crash or Ctrl-C never leaves a
complete-looking partial file.

The care is coreutils': an output never replaces an input of the run (checked before anything
runs, by file identity as well as by name), a symlink is followed and stays a symlink, a character
device, FIFO or `/dev/stdout` is written in place and never renamed over, a new file gets the mode a
shell redirect gives (0666 & ~umask) and an existing one keeps its mode.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .errors import GemmapipeError, UsageError, printable

# Temporary files being written. A signal can land anywhere, even between mkstemp and the `try`
# that would remove its file; whatever is left here when the process ends is removed then.
_ACTIVE: set[str] = set()
# Longest file name most file systems take (NAME_MAX), in bytes.
_NAME_MAX = 255
# Names that mean "this process's own stream": written to the stream itself, never opened anew.
_STDOUT_NAMES = {"-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"}


def make_temp(*, prefix: str, suffix: str, dir: str | Path | None = None) -> tuple[int, str]:
    """mkstemp, with the new file recorded for removal on any exit before a signal can intervene
    (Python's first look for $TMPDIR, which creates and removes a probe file, is covered too)."""
    from . import interrupt

    with interrupt.deferred():
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dir)
        _ACTIVE.add(path)
    return fd, path


def track_temp(path: str) -> None:
    """Have `path` removed however the process ends (a spool, a partial download)."""
    _ACTIVE.add(path)


def untrack_temp(path: str) -> None:
    _ACTIVE.discard(path)


def remove_temp_files() -> None:
    for path in list(_ACTIVE):
        _unlink_quietly(path)
    _ACTIVE.clear()


atexit.register(remove_temp_files)


def is_stdout(target: str | Path | None) -> bool:
    return target is None or str(target) in _STDOUT_NAMES


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(name: str) -> str:
    """`.NAME.` cut so that the temporary name (prefix + 8 random + `.part`) fits whenever NAME fits."""
    raw = os.fsencode(name)
    room = _NAME_MAX - len(b"..") - 8 - len(b".part") - 2
    if len(raw) > room:
        raw = raw[:room]
    return "." + os.fsdecode(raw) + "."


def _write_error(path: Path | str, exc: OSError) -> GemmapipeError:
    return GemmapipeError(f"output {path}", f"cannot write: {exc.strerror or exc}")


@contextlib.contextmanager
def open_sink(target: str | Path | None) -> Iterator[TextIO]:
    """A text stream for `target`: `-`/None/`/dev/stdout` = stdout. The stream is committed when the
    `with` block ends normally; on an exception a regular file's temporary is removed and the
    target is left as it was."""
    if is_stdout(target):
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(str(target))
    try:
        st = os.stat(path)  # follows symlinks: what the name really is
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _write_error(path, exc) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise GemmapipeError(f"output {path}", "is a directory")
    if (st is not None and not stat.S_ISREG(st.st_mode)) or str(path).startswith(("/dev/fd/", "/proc/")):
        with _direct(path) as fh:
            yield fh
        return
    with _atomic(path, st) as fh:
        yield fh


@contextlib.contextmanager
def _direct(path: Path) -> Iterator[TextIO]:
    """A device, FIFO or another process's stream: opened and written in place (what `>` does)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOCTTY, 0o666)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
            yield fh
            fh.flush()
    except OSError as exc:
        raise _write_error(path, exc) from None


@contextlib.contextmanager
def _atomic(path: Path, st: os.stat_result | None) -> Iterator[TextIO]:
    # The real file behind any symlinks: its directory holds the temporary, and the rename
    # replaces the file, never the link.
    real = Path(os.path.realpath(path))
    directory = real.parent
    try:
        fd, tmp = make_temp(prefix=_temp_prefix(real.name), suffix=".part", dir=directory)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        if st is not None:
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            with contextlib.suppress(OSError):  # as root: keep the owner too
                if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                    os.fchown(fd, st.st_uid, st.st_gid)
        else:
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, real)
        _ACTIVE.discard(tmp)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _write_error(path, exc) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
    _ACTIVE.discard(path)


# --- outputs planned against inputs, before anything runs -------------------------------------------

@dataclass(frozen=True)
class _Identity:
    real: str
    inode: tuple[int, int] | None  # (st_dev, st_ino) of an existing regular file


def _identity(path: str | Path) -> _Identity:
    real = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError:
        return _Identity(real, None)
    return _Identity(real, (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None)


def _same(a: _Identity, b: _Identity) -> bool:
    return a.real == b.real or (a.inode is not None and a.inode == b.inode)


def check_outputs(outputs: Iterable[tuple[str | Path, str]], inputs: Iterable[str], *,
                  parameter: str = "output") -> None:
    """Refuse (UsageError) before anything runs when an output is one of the inputs (same name,
    other spelling, symlink or hard link) or two inputs would write one output. `outputs` holds
    (output path, the input it is for, or "" for a run-wide stream); `-`/stdout is never a file."""
    in_ids = [(spec, _identity(spec)) for spec in inputs if spec != "-"]
    seen: list[tuple[_Identity, str, str | Path]] = []
    for target, owner in outputs:
        if is_stdout(target):
            continue
        tid = _identity(target)
        for spec, iid in in_ids:
            if _same(tid, iid):
                raise UsageError(None, f"{_q(target)} is the input {_q(spec)}: it would be overwritten",
                                 "write the output elsewhere", parameter=parameter)
        for other, other_owner, other_target in seen:
            if _same(tid, other):
                raise UsageError(None, f"inputs {_q(other_owner)} and {_q(owner)} would both write "
                                            f"{_q(other_target)}",
                                 "give them distinct names, or run them separately", parameter=parameter)
        seen.append((tid, owner, target))


def _q(name: str | Path) -> str:
    return printable(str(name))
