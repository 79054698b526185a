"""Long MP3 files decoded by libsndfile (mpg123) in pieces, in helper processes.

Why not PyAV here: it decodes one MPEG frame (1152 samples) per Python call, 138k calls an hour whose
Python overhead costs about as much as the decoding itself.  libsndfile decodes a whole piece in one
call and seeks to a sample, so pieces can be decoded apart.  mpg123 and FFmpeg's decoder agree to ~5e-6
and to the sample in length: both honour the LAME/Xing gapless header.

After a seek mpg123's bit reservoir is empty (low-rate files decode garbage for a frame or two) and it
prints complaints on stderr, so each piece starts PREROLL samples early, thrown away, and runs in a
helper process whose stderr is discarded.  Pieces then join to within 2e-7 (1-2 float32 ulps: the
phase of mpg123's synthesis ring differs after a seek) of one sequential read, measured on MPEG-1/2/2.5
mono and stereo files (tested).

GEMMAPIPE_AUDIO_SNDFILE=0 turns this path off (everything then goes through PyAV).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MIN_SECONDS = 300.0
"""Shorter files stay with PyAV: starting the helpers costs ~0.25 s.  Measured on 44.1 kHz stereo MP3s,
PyAV in this process vs this path: 3 min 0.23-0.37 s vs 0.48-0.51 s; 5 min 0.48-0.64 vs 0.63-0.65;
10 min 1.20-1.30 vs 0.98-1.04; 20 min 1.87-2.46 vs 1.52-1.76; 1 h 6.0 vs 4.2."""

PIECE_SECONDS = 10
"""Native-rate audio per piece (1.8 MB of mono float32 at 44.1 kHz; a few are in flight).  Measured on
an hour of MP3: 30 s pieces were no faster and peaked at 166 MB with the helpers, 10 s ones at 99 MB."""

PREROLL = 8 * 1152
"""Samples decoded before a piece and thrown away: eight MPEG-1 frames (sixteen MPEG-2 ones) refill the
bit reservoir and the filter bank's overlap."""

MAX_PROCS = 4
ENV = "GEMMAPIPE_AUDIO_SNDFILE"


def usable() -> bool:
    """Whether this path is switched on and the installed libsndfile decodes MP3 (1.1 and later)."""
    if os.environ.get(ENV, "").strip() == "0":
        return False
    try:
        import soundfile
    except (ImportError, OSError):  # no wheel, or no libsndfile on the system
        return False
    return "MP3" in soundfile.available_formats()


def decode_piece(f: Any, first: int, count: int) -> np.ndarray:
    """Mono float32 samples [first, first + count) of an open soundfile.SoundFile (count -1: to the end):
    stereo averaged with the same arithmetic as audio._Collector, mono passed through."""
    import numpy as np

    start = max(0, first - PREROLL)
    f.seek(start)
    want = -1 if count < 0 else first - start + count
    data = f.read(want, dtype="float32", always_2d=True)[first - start :]
    if data.shape[1] == 2:
        out: np.ndarray = (data[:, 0] + data[:, 1]) * np.float32(0.5)
        return out
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    return data.mean(axis=1, dtype=np.float32)
