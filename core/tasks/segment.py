"""Speech clips from a stream of audio: the detectors behind one function.

`segment_speech(blocks, vad=...)` yields clips cut at pauses, on the 640-sample grid, at most
`max_clip_s` long, with sample-exact absolute times, as soon as each is complete. Two detectors share
the stream mechanics of `SpeechSegmenter` (core/tasks/vad_energy.py): "silero", a trained detector
(core/tasks/silero.py, the default: music, doors and traffic are not speech to it), and "energy", the
level over an adaptive floor (fast and exact for speech among silence or steady noise).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from .vad_energy import (
    FRAME,
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    AudioBlockLike,
    SpeechClip,
    SpeechSegmenter,
)

__all__ = ["CUE_MAX_CLIP_S", "CUE_MIN_SILENCE_MS", "DEFAULT_VAD", "FRAME", "FRAMES_PER_SECOND", "SAMPLE_RATE",
           "VADS", "AudioBlockLike", "SpeechClip", "SpeechSegmenter", "make_segmenter", "segment_speech"]

VADS = ("silero", "energy")
DEFAULT_VAD = "silero"

# Clips for subtitle formats (srt, vtt): cut at shorter pauses and shorter overall, so that each clip
# is a natural cue or two and cue times come from the audio rather than from splitting text. Measured
# on 5 min of recorded speech with 0.35 s pauses (silero): 17 clips of 17 s on average (max 29.5 s)
# with the defaults, 72 of 4 s (max 6.1 s) with these; each clip costs its prompt once more.
CUE_MAX_CLIP_S = 8.0
CUE_MIN_SILENCE_MS = 300.0


def make_segmenter(vad: str = DEFAULT_VAD, **kw: float) -> SpeechSegmenter:
    """The segmenter for detector `vad`: "silero" (trained, the default: core/tasks/silero.py) or
    "energy" (level over an adaptive floor: this module). `kw`: that segmenter's knobs."""
    if vad == "silero":
        from .silero import SileroSegmenter

        return SileroSegmenter(**kw)
    if vad == "energy":
        return SpeechSegmenter(**kw)
    raise ValueError(f"unknown voice-activity detector {vad!r} (choose one of {', '.join(VADS)})")


def segment_speech(
    blocks: Iterable[AudioBlockLike],
    *,
    vad: str = DEFAULT_VAD,
    max_clip_s: float = 30.0,
    min_speech_ms: float = 120.0,
    min_silence_ms: float = 500.0,
    pad_ms: float = 120.0,
    **tuning: float,
) -> Iterator[SpeechClip]:
    """Yield the speech clips of a stream of audio blocks, each as soon as it is complete.

    vad: "silero" (default) or "energy"; tuning: the other knobs of that detector's segmenter
    (energy: threshold, min_db, hysteresis_db, zcr_min, floor_window_s, lookahead_ms, ...;
    silero: threshold, neg_threshold, gate_db; both: max_extend_ms, cut_search_s).
    """
    seg = make_segmenter(vad, max_clip_s=max_clip_s, min_speech_ms=min_speech_ms,
                         min_silence_ms=min_silence_ms, pad_ms=pad_ms, **tuning)
    for block in blocks:
        yield from seg.feed(block)
    yield from seg.finish()
