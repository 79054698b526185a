"""Helper process for gemmapipe.core.media.audio: decodes jobs sent as JSON lines on stdin.

Each job names a file and either "whole" (the audio stream from its start) or "segment" (one piece of
a long MP3/FLAC, see audio._Decoder._segment).  Decoded native-rate chunks (stereo already averaged to
mono) go to stdout in the framing of audio.send_item; the parent resamples them in order.  Exits at
the end of stdin.
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
    from .source import Source, decode_guard, open_input

    out = sys.stdout.buffer
    sources: dict[str, Source] = {}
    containers: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for line in sys.stdin.buffer:
            if not line.strip():
                continue
            job: dict[str, Any] = json.loads(line)
            jid = int(job["job"])
            try:
                path = job["path"]
                src = sources.get(path)
                if src is None:
                    src = stack.enter_context(open_input(path))
                    sources[path] = src
                seen = len(src.warnings)
                dec = _Decoder(src, 0, None, allow_procs=False)

                def put(item: tuple[str, Any], jid: int = jid) -> None:
                    send_item(out, jid, item[0], item[1])

                end: dict[str, Any] = {}
                with decode_guard(src.name):
                    if job["mode"] == "whole":
                        dec._sequential(put, threading.Event())
                    else:
                        k = int(job["k"])
                        if k and path not in containers:  # piece 0 starts at the top: a fresh container
                            containers[path] = stack.enter_context(src.open_av())
                        samples, rate = dec._segment(
                            k, job["bounds"], job["seeks"], put, threading.Event(), containers.get(path) if k else None
                        )
                        end = {"samples": samples, "rate": rate}
                for w in src.warnings[seen:]:
                    send_item(out, jid, "warn", w)
                send_item(out, jid, "end", end)
            except BadInput as e:
                send_item(out, jid, "error", {"type": "BadInput", "reason": e.reason, "hint": e.hint})
            except Exception as e:
                send_item(out, jid, "error", {"type": type(e).__name__, "reason": str(e)})
            out.flush()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        sys.exit(main())
