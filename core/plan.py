"""What an input will cost the model, from its headers alone (nothing is decoded), or for speech
tasks from its audio run through the voice-activity detector.

`plan_input` reports the duration and streams of an input, how many video frames (or the image) and
audio windows will be fed, the size they are delivered at and the tokens they take.  The engine adds
text tokens and KV memory on top.  With `vad` (transcribe, diarize) the audio is decoded and
segmented as the task would (no model is loaded): the clips and the audio tokens really fed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .errors import BadInput, UsageError
from .media.audio import SAMPLE_RATE, WINDOW, check_range, ms_to_samples, windows_for
from .media.frames import frame_plan, frame_size
from .media.geometry import DEFAULT_FRAME_TOKENS, DEFAULT_IMAGE_TOKENS, MTMD_MIN_TOKENS, fit_size, tokens_for
from .media.probe import probe
from .timefmt import require_start_before_end

if TYPE_CHECKING:
    from .media.source import Source

AUDIO_TOKENS_PER_SECOND = SAMPLE_RATE // WINDOW  # 25




def plan_input(
    source: Source,
    *,
    want_audio: bool,
    want_frames: bool,
    fps: float = 1.0,
    frame_tokens: int = DEFAULT_FRAME_TOKENS,
    image_tokens: int = DEFAULT_IMAGE_TOKENS,
    start_ms: int | None = None,
    end_ms: int | None = None,
    max_frames: int | None = None,
    frame_min_tokens: int | None = None,
    frame_floor_tokens: int = 0,
    image_min_tokens: int = MTMD_MIN_TOKENS,
    vad: str | None = None,
    max_clip_s: float = 30.0,
    min_silence_ms: float = 500.0,
) -> dict[str, Any]:
    """A JSON-serializable plan for one input.

    want_audio:  the audio will be fed (BadInput if there is none: an image, a silent video).
    want_frames: video frames (or, for an image, the image itself) will be fed (BadInput for audio files).

    Keys: file, kind, format, duration_ms (None if unknown: then counts that depend on it are None),
    range_ms [start, end], streams, frames, fps, frame_size [w, h], image_size [w, h] (images),
    tokens_per_frame, audio_samples, audio_windows, tokens {image|frames, audio, total}, notes.
    With vad ("silero" or "energy"; want_audio only) also: vad, clips [[start_ms, end_ms], ...] (as
    fed: after the quiet-edge trim, in the times the transcript will show), speech_ms, vad_s (the
    detector's wall time), and tokens.audio is then the tokens of those clips, not of the whole audio.
    """
    if frame_tokens < 1 or image_tokens < 1:
        raise UsageError("token budget", "must be at least 1")
    info = probe(source)
    kind = source.kind
    if not want_audio and not want_frames:
        raise UsageError("plan", "nothing to plan: neither audio nor frames wanted")
    if want_audio:
        source.require_audio()
    if want_frames and kind == "audio":
        raise BadInput(source.name, "is an audio file; it has no video frames or image")
    check_range(start_ms, end_ms)

    duration = info.duration_ms
    plan: dict[str, Any] = {
        "file": source.name,
        "kind": kind,
        "format": info.format,
        "duration_ms": duration,
        "range_ms": [start_ms or 0, end_ms if end_ms is not None else duration],
        "streams": info.streams,
        "frames": 0,
        "fps": None,
        "frame_size": None,
        "tokens_per_frame": 0,
        "audio_samples": 0,
        "audio_windows": 0,
        "tokens": {},
        "notes": list(info.notes) + list(source.warnings),
    }
    tokens: dict[str, int | None] = {}

    if want_frames and kind == "image":
        assert info.width and info.height
        w, h = fit_size(
            info.width, info.height, min_tokens=min(image_min_tokens, image_tokens), max_tokens=image_tokens
        )
        plan.update(frames=1, image_size=[w, h], frame_size=[w, h], tokens_per_frame=tokens_for(w, h))
        tokens["image"] = tokens_for(w, h)
    elif want_frames:
        assert info.width and info.height
        w, h = frame_size(info.width, info.height, max_tokens=frame_tokens, min_tokens=frame_min_tokens,
                          floor_tokens=frame_floor_tokens)
        vdur = info.video_duration_ms or duration
        require_start_before_end(source.name, "video", start_ms, vdur)  # the rule video itself follows
        fp = frame_plan(vdur, fps=fps, start_ms=start_ms, end_ms=end_ms, max_frames=max_frames)
        n = fp.count
        per = tokens_for(w, h)
        plan.update(frames=n, frame_size=[w, h], tokens_per_frame=per, fps=round(1000 / float(fp.step), 6))
        tokens["frames"] = None if n is None else n * per
        if n is None:
            plan["notes"].append("duration unknown (a pipe): frame count known only after decoding")

    if want_audio:
        adur = info.audio_duration_ms or duration
        if adur is None:
            plan.update(audio_samples=None, audio_windows=None)
            tokens["audio"] = None
            plan["notes"].append("duration unknown (a pipe): audio windows known only after decoding")
        else:
            end = min(adur, end_ms) if end_ms is not None else adur
            start = start_ms or 0
            samples = max(0, ms_to_samples(end) - ms_to_samples(start))
            if samples == 0:
                raise BadInput(source.name, f"has no audio after {start} ms (it lasts {adur} ms)")
            windows = windows_for(samples)
            plan.update(audio_samples=samples, audio_windows=windows)
            tokens["audio"] = windows
        if vad is not None:
            speech = speech_plan(source, vad=vad, start_ms=start_ms, end_ms=end_ms, max_clip_s=max_clip_s,
                                 min_silence_ms=min_silence_ms)
            seen = speech.pop("samples")
            if plan["audio_samples"] is None:  # duration unknown (a pipe): now it is known
                plan.update(audio_samples=seen, audio_windows=windows_for(seen))
                plan["notes"] = [n for n in plan["notes"] if not n.startswith("duration unknown (a pipe): audio")]
            tokens["audio"] = speech.pop("tokens_fed")
            plan.update(speech)

    known = [v for v in tokens.values() if v is not None]
    tokens["total"] = None if len(known) < len(tokens) else sum(known)
    plan["tokens"] = tokens
    plan["audio_seconds"] = (
        None if plan["audio_samples"] is None else math.ceil(plan["audio_samples"] / SAMPLE_RATE * 1000) / 1000
    )
    return plan


def speech_plan(
    source: Source, *, vad: str, start_ms: int | None = None, end_ms: int | None = None, max_clip_s: float = 30.0,
    min_silence_ms: float = 500.0,
) -> dict[str, Any]:
    """Decode the audio (streamed) and run the detector as transcribe and diarize do: the clips they
    will feed (after the quiet-edge trim) and their tokens. Keys: vad, clips, speech_ms, vad_s,
    tokens_fed, samples (audio samples seen)."""
    import time

    from .media.audio import iter_audio
    from .tasks.segment import segment_speech
    from .tasks.transcribe import trim_quiet_edges

    seen = 0
    decoding = 0.0

    def counted() -> Any:
        nonlocal seen, decoding
        blocks = iter_audio(source, start_ms=start_ms, end_ms=end_ms)
        while True:
            t = time.perf_counter()
            block = next(blocks, None)
            decoding += time.perf_counter() - t
            if block is None:
                return
            seen = max(seen, block.offset + block.samples.size)
            yield block

    first = ms_to_samples(start_ms or 0)
    clips: list[list[int]] = []
    fed = 0
    t0 = time.perf_counter()
    for raw in segment_speech(counted(), vad=vad, max_clip_s=max_clip_s, min_silence_ms=min_silence_ms):
        clip = trim_quiet_edges(raw)
        clips.append([clip.start * 1000 // SAMPLE_RATE, clip.end * 1000 // SAMPLE_RATE])
        fed += windows_for(clip.end - clip.start)
    busy = time.perf_counter() - t0 - decoding
    return {
        "vad": vad,
        "clips": clips,
        "speech_ms": sum(b - a for a, b in clips),
        "vad_s": round(max(0.0, busy), 3),
        "tokens_fed": fed,
        "samples": max(0, seen - first),
    }
