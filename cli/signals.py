"""Ctrl-C and SIGTERM unwind the same way: temp files removed, the model freed, exit 130.

The first signal raises KeyboardInterrupt; later ones are ignored so they cannot interrupt the
cleanup that the first one started.
"""

import signal
from types import FrameType


def _on_signal(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
