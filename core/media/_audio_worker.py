"""Helper process for gemmapipe.core.media.audio: decodes jobs sent as JSON lines on stdin.

Each job names a file and either "whole" (its audio stream through PyAV, from the start) or
"sndfile" (one piece of a long MP3 through libsndfile, see _sndfile).  Decoded native-rate chunks
(stereo already averaged to mono) go to stdout in the framing of audio.send_item; the parent resamples
them in order.  Exits at the end of stdin.  Its stderr is discarded (mpg123 prints there).
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from typing import Any


def main() -> int:
    from ..errors import BadInput
    from .audio import _Decoder, send_item
    from .faults import decode_guard
    from .source import Source, open_input

    out = sys.stdout.buffer
    sources: dict[str, Source] = {}
    sndfiles: dict[str, Any] = {}  # open soundfile.SoundFile per path: mpg123's seek index grows with use
    with contextlib.ExitStack() as stack:
        for line in sys.stdin.buffer:
            if not line.strip():
                continue
            job: dict[str, Any] = json.loads(line)
            jid = int(job["job"])
            try:
                path = job["path"]
                if job["mode"] == "sndfile":
                    _sndfile_job(out, jid, job, sndfiles, stack)
                    continue
                src = sources.get(path)
                if src is None:
                    src = stack.enter_context(open_input(path))
                    sources[path] = src
                seen = len(src.warnings)
                dec = _Decoder(src, 0, None, allow_procs=False)

                def put(item: tuple[str, Any], jid: int = jid) -> None:
                    send_item(out, jid, item[0], item[1])

                with decode_guard(src.name):
                    dec._sequential(put, threading.Event())
                for w in src.warnings[seen:]:
                    send_item(out, jid, "warn", w)
                send_item(out, jid, "end", {})
            except BadInput as e:
                send_item(out, jid, "error", {"type": "BadInput", "reason": e.reason, "hint": e.hint})
            except Exception as e:
                send_item(out, jid, "error", {"type": type(e).__name__, "reason": str(e)})
            out.flush()
    return 0


def _sndfile_job(out: Any, jid: int, job: dict[str, Any], sndfiles: dict[str, Any], stack: Any) -> None:
    import soundfile

    from . import _sndfile
    from .audio import _Chunk, send_item

    path = job["path"]
    f = sndfiles.get(path)
    if f is None:
        f = sndfiles[path] = stack.enter_context(soundfile.SoundFile(path))
    if f.samplerate != job["rate"] or f.channels != job["channels"]:
        got, want = (f.samplerate, f.channels), (job["rate"], job["channels"])
        raise ValueError(f"libsndfile reads {got[0]} Hz x {got[1]}, FFmpeg {want[0]} Hz x {want[1]}")
    data = _sndfile.decode_piece(f, int(job["first"]), int(job["count"]))
    if data.shape[0]:
        send_item(out, jid, "chunk", _Chunk(int(f.samplerate), "mono", data))
    send_item(out, jid, "end", {"samples": int(data.shape[0])})
    out.flush()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        sys.exit(main())
