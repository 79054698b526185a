"""Ctrl-C and SIGTERM: the first stops the work within moments (temp files removed, finished
results kept, exit 130); a second one ends the process at once.

The first signal raises KeyboardInterrupt, except inside a native callback of llama.cpp, where an
exception would be swallowed: there it only sets the stop flag that the engine's abort callback
and loops read (see gemmapipe.core.interrupt).
"""

import os
import signal
from types import FrameType


def _on_signal(signum: int, frame: FrameType | None) -> None:
    from gemmapipe.core import interrupt

    if interrupt.requested():  # the second signal: the user means it
        from gemmapipe.core.media.source import remove_spools
        from gemmapipe.core.sink import remove_temp_files

        remove_temp_files()
        remove_spools()
        try:
            os.write(2, b"\ngemmapipe: interrupted\n")
        finally:
            os._exit(130)
    interrupt.request()
    if interrupt.in_callback(frame) or interrupt.in_deferred():
        return  # the engine stops at its next check, or the step in progress ends, in ordinary code
    raise KeyboardInterrupt


def install_signal_handlers() -> None:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
