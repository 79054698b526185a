"""SIGTERM behaves like Ctrl-C: unwind (temp files removed, model freed), then exit 130."""

import signal
from types import FrameType


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    signal.signal(signal.SIGTERM, _on_term)
