"""Stopping the work on a signal, wherever it is.

Python runs a signal handler on the main thread between two bytecodes. While llama.cpp computes,
that moment comes only when the native call returns, or inside a ctypes callback that llama.cpp
makes on the main thread (its log callback, the abort callback checked between graph nodes, the
model-load progress callback), where an exception would be printed as "Exception ignored" and
swallowed. So the application's handler calls `request()` and raises KeyboardInterrupt only when
it is not inside such a callback (`in_callback(frame)`; callbacks are marked `@native_callback`);
they answer "abort" once a stop is requested, and the engine calls `check()` after each native
call, which raises KeyboardInterrupt there, in ordinary Python code, where it unwinds normally.

A test hook delivers a real signal while a named stage runs: `GEMMAPIPE_FAULT_SIGNAL=STAGE[:SIG[:SECONDS]]`
(stages: load, prefill, decode, media, spool) makes a helper thread send SIG (default INT) to this
process SECONDS (default 0.05) after the stage starts, so the signal lands inside the native call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import CodeType, FrameType
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_requested = threading.Event()
_CALLBACK_CODES: set[CodeType] = set()
_fired: set[str] = set()


def request() -> None:
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def clear() -> None:
    """Forget a handled request (an interactive session goes on after Ctrl-C stops one answer)."""
    _requested.clear()


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested (call after every native call that can last)."""
    if _requested.is_set():
        raise KeyboardInterrupt


_deferring = 0  # > 0 while the main thread is in a step a signal must not split (see deferred)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run a short step whole: a signal landing inside only sets the flag (the handler sees
    `in_deferred()`), and KeyboardInterrupt is raised once the step is done. Masking the signal would
    not do: a signal blocked in the main thread is taken by another thread, and Python still runs its
    handler in the main thread at the next bytecode."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if _deferring == 0 and _requested.is_set() and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


def in_deferred() -> bool:
    return _deferring > 0 and threading.current_thread() is threading.main_thread()


def native_callback(func: F) -> F:
    """Mark `func` as a callback llama.cpp calls: a signal landing while it runs (even at its first
    bytecode) only sets the flag; `in_callback` finds it on the stack."""
    _CALLBACK_CODES.add(func.__code__)
    return func


def in_callback(frame: FrameType | None) -> bool:
    """Whether `frame` (a signal handler's) runs inside a native callback."""
    while frame is not None:
        if frame.f_code in _CALLBACK_CODES:
            return True
        frame = frame.f_back
    return False


def stage(name: str) -> None:
    """Mark the start of a stage of work (for the fault-injection hook; free otherwise)."""
    spec = os.environ.get("GEMMAPIPE_FAULT_SIGNAL")
    if not spec or name in _fired:
        return
    parts = spec.split(":")
    if parts[0] != name:
        return
    _fired.add(name)
    name_of_signal = parts[1].upper().removeprefix("SIG") if len(parts) > 1 and parts[1] else "INT"
    sig = getattr(signal, "SIG" + name_of_signal)
    delay = float(parts[2]) if len(parts) > 2 else 0.05

    def fire() -> None:
        os.write(2, f"gemmapipe: fault injection: {signal.Signals(sig).name} during {name}\n".encode())
        os.kill(os.getpid(), sig)

    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()
