"""One clear BadInput for whatever a damaged input makes PyAV, numpy or Pillow raise.

A leaf module: the opening (source), probing, audio, frame and image modules all use it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..errors import BadInput, GemmapipeError


def av_bad_input(e: BaseException, name: str, during: str = "open") -> BadInput:
    """One clear BadInput for a PyAV/ffmpeg error."""
    import av

    if isinstance(e, av.error.DecoderNotFoundError):
        return BadInput(name, "uses a codec this build of ffmpeg cannot decode", "convert it, e.g. to WAV, MP4 or PNG")
    if isinstance(e, av.error.EOFError | EOFError):
        return BadInput(name, "ends too early: the file is truncated", "re-download or re-export it")
    if isinstance(e, av.error.InvalidDataError):
        if during == "open":
            return BadInput(
                name,
                "is not a readable audio, video or image file (or it is truncated or corrupt)",
                "check that the file is complete; supported: common audio, video and image formats",
            )
        return BadInput(name, "is corrupt or truncated: decoding failed", "re-download or re-export it")
    if isinstance(e, av.error.PatchWelcomeError | av.error.OptionNotFoundError):
        return BadInput(name, "uses a feature or codec ffmpeg does not support", "convert it first")
    msg = getattr(e, "strerror", None) or str(e)
    return BadInput(name, f"cannot be decoded ({msg})")


@contextlib.contextmanager
def decode_guard(name: str) -> Iterator[None]:
    """Turn whatever a damaged input makes PyAV, numpy or Pillow raise into one BadInput.

    Our own errors (BadInput, UsageError...), RuntimeError (misuse) and BaseExceptions pass through."""
    import struct as _struct

    try:
        yield
    except GemmapipeError:
        raise
    except Exception as e:
        import av

        if isinstance(e, av.error.FFmpegError):
            raise av_bad_input(e, name, during="decode") from None
        if isinstance(
            e,
            ValueError
            | IndexError
            | KeyError
            | OverflowError
            | ZeroDivisionError
            | EOFError
            | _struct.error
            | MemoryError
            | SyntaxError
            | OSError
            | TypeError,
        ):
            raise BadInput(name, f"cannot be decoded: it is damaged or unusual ({type(e).__name__}: {e})") from None
        raise
