"""video: frames at `fps` and the audio track on one timeline, fed in one call.

What the model sees, per kept second t (absolute time from the file start):

    [mm:ss] <image of the frame shown at t> <audio t .. t+1 s>

then the question. A near-duplicate frame (static slide, still camera) or a silent second is
dropped, and its tokens counted as saved; the timestamp text stays so times remain citable. When
the whole does not fit the context, consecutive windows are answered separately (map) and the
answers, labelled with their absolute time ranges, are combined in a final pass (reduce).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engine.base import Engine, GenerateOptions
from ..engine.parts import Audio, Image, Message, Part, Text
from ..results import Description
from ..timefmt import clock, require_start_before_end

if TYPE_CHECKING:
    import numpy as np

    from ..media.source import Source

SAMPLE_RATE = 16000
DEFAULT_PROMPT = "Describe what happens in this video, citing times as [mm:ss]."
TEXT_TOKENS_PER_UNIT = 8  # "[mm:ss] " and separators, measured on Gemma's tokenizer (~6-8)
DUP_THRESHOLD = 2.0  # mean absolute difference (0-255) under which a frame repeats the last kept one
SILENCE_RMS = 10 ** (-50 / 20)  # -50 dBFS
MAX_SKELETONS = 1000  # saved timeline skeletons kept beside the prefilled states (a few kB each)


@dataclass
class VideoOptions:
    prompt: str = DEFAULT_PROMPT
    fps: float = 1.0
    frame_tokens: int = 70
    start_ms: int | None = None
    end_ms: int | None = None
    max_frames: int | None = None
    audio: bool = True
    dedupe: bool = True
    cache_dir: Path | None = None  # None: no prefill cache
    generate: GenerateOptions = field(default_factory=lambda: GenerateOptions(max_tokens=768))


@dataclass
class Unit:
    t_ms: int
    frame: np.ndarray | None
    audio: np.ndarray | None


@dataclass
class Timeline:
    units: list[Unit]
    frames_total: int = 0
    frames_dropped: int = 0
    audio_seconds_total: int = 0
    audio_seconds_silent: int = 0
    audio_dropped: str | None = None  # why an audio track that exists could not be used (from then on)

    def tokens(self, frame_tokens: int) -> int:
        from ..media.audio import windows_for

        n = 0
        for u in self.units:
            if u.frame is None and u.audio is None:
                continue  # nothing left to show for this second: no label either
            n += TEXT_TOKENS_PER_UNIT + (frame_tokens if u.frame is not None else 0)
            n += windows_for(u.audio.size) if u.audio is not None else 0
        return n

    def saved_tokens(self, frame_tokens: int) -> int:
        empty = sum(1 for u in self.units if u.frame is None and u.audio is None)
        return self.frames_dropped * frame_tokens + self.audio_seconds_silent * 25 + empty * TEXT_TOKENS_PER_UNIT


def _check_start(source: Source, options: VideoOptions) -> None:
    info = source.info
    if source.kind == "video" and info is not None:
        require_start_before_end(source.name, "video", options.start_ms, info.video_duration_ms or info.duration_ms)


def build_timeline(source: Source, options: VideoOptions) -> Timeline:
    import numpy as np

    from ..media.audio import iter_audio
    from ..media.frames import iter_frames

    units: dict[int, Unit] = {}
    tl = Timeline(units=[])
    last: np.ndarray | None = None
    for fr in iter_frames(source, fps=options.fps, max_tokens=options.frame_tokens, start_ms=options.start_ms,
                          end_ms=options.end_ms, max_frames=options.max_frames):
        tl.frames_total += 1
        keep = True
        if options.dedupe and last is not None and last.shape == fr.pixels.shape:
            diff = np.abs(fr.pixels.astype(np.int16) - last.astype(np.int16)).mean()
            keep = diff >= DUP_THRESHOLD
        if keep:
            last = fr.pixels
        else:
            tl.frames_dropped += 1
        units[fr.t_ms] = Unit(fr.t_ms, fr.pixels if keep else None, None)
    if options.audio and units:
        step = round(1000 / options.fps)
        times = sorted(units)
        limit = times[-1] + step
        spans = [((t * SAMPLE_RATE) // 1000, ((t + step) * SAMPLE_RATE) // 1000) for t in times]

        def take(t: int, piece: np.ndarray) -> None:
            tl.audio_seconds_total += 1
            rms = float(np.sqrt(np.mean(piece.astype(np.float64) ** 2)))
            if options.dedupe and rms < SILENCE_RMS:
                tl.audio_seconds_silent += 1
            else:
                units[t].audio = np.ascontiguousarray(piece)

        # Streamed: each unit's slice is cut as soon as the audio covers it; only the audio not yet
        # consumed (under one block plus one unit) is held, however long the video.
        pending, pending_at, j = np.zeros(0, dtype=np.float32), 0, 0
        try:
            for block in iter_audio(source, start_ms=options.start_ms, end_ms=min(limit, options.end_ms or limit)):
                if pending.size == 0:
                    pending_at = block.offset
                pending = np.concatenate([pending, block.samples])
                while j < len(spans) and spans[j][1] <= pending_at + pending.size:
                    a, b = spans[j]
                    piece = pending[max(0, a - pending_at):max(0, b - pending_at)]
                    if piece.size:
                        take(times[j], piece)
                    j += 1
                    if j < len(spans) and spans[j][0] > pending_at:
                        pending = pending[spans[j][0] - pending_at:]
                        pending_at = spans[j][0]
        except Exception as exc:  # video still works from frames alone
            from ..errors import BadInput

            if not isinstance(exc, BadInput):
                raise
            if source.info is not None and source.info.has_audio:  # a track that fails is said, not hidden
                tl.audio_dropped = exc.reason
                if tl.audio_seconds_total:
                    source.warn(f"{source.name}: its audio track fails after {tl.audio_seconds_total} s "
                                f"({exc.reason}); the rest is answered from the frames alone")
                else:
                    source.warn(f"{source.name}: its audio track cannot be decoded ({exc.reason}); "
                                "answering from the frames alone")
        if j < len(spans) and pending.size:  # the last, shorter unit
            a, b = spans[j]
            piece = pending[max(0, a - pending_at):max(0, b - pending_at)]
            if piece.size:
                take(times[j], piece)
    if not units and options.start_ms:  # a pipe: its length was not known before decoding
        from ..errors import BadInput

        raise BadInput(source.name, f"has no video after {options.start_ms} ms (the start is past the end)")
    tl.units = [units[t] for t in sorted(units)]
    return tl


def unit_parts(units: list[Unit]) -> list[Part]:
    parts: list[Part] = []
    for u in units:
        if u.frame is None and u.audio is None:
            continue  # a repeated frame over silence: the previous label still covers it
        parts.append(Text(f"[{clock(u.t_ms)}] "))
        if u.frame is not None:
            parts.append(Image(u.frame))
        if u.audio is not None:
            parts.append(Audio(u.audio))
        parts.append(Text("\n"))
    return parts


def split_windows(units: list[Unit], budget: int, frame_tokens: int) -> list[list[Unit]]:
    windows: list[list[Unit]] = [[]]
    used = 0
    for u in units:
        cost = Timeline([u]).tokens(frame_tokens)
        if windows[-1] and used + cost > budget:
            windows.append([])
            used = 0
        windows[-1].append(u)
        used += cost
    return [w for w in windows if w]


def _timeline_options(options: VideoOptions) -> dict[str, Any]:
    """The options that shape the timeline (and so the prompt but for the question)."""
    return {"fps": options.fps, "frame_tokens": options.frame_tokens, "start": options.start_ms,
            "end": options.end_ms, "max_frames": options.max_frames, "audio": options.audio,
            "dedupe": options.dedupe}


def cache_key(source: Source, engine: Engine, options: VideoOptions) -> str:
    desc = engine.describe()
    h = hashlib.sha256()
    h.update(json.dumps({"model": desc.model, "mmproj": desc.mmproj, "n_ctx": desc.n_ctx,
                         **_timeline_options(options)}, sort_keys=True).encode())
    for p in (desc.model, desc.mmproj):
        if p:
            st = Path(p).stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(source.sha256().encode())
    return h.hexdigest()[:32]


def _generate(engine: Engine, messages: list[Message], gen: GenerateOptions) -> str:
    return "".join(engine.generate(messages, gen)).strip()


def _skeleton(tl: Timeline) -> list[list[int]]:
    """What the prompt's text depends on: each unit's time and which media it has."""
    return [[u.t_ms, int(u.frame is not None), int(u.audio is not None)] for u in tl.units]


def skeleton_key(source: Source, options: VideoOptions) -> str:
    """Names the saved skeleton of a video's timeline: the file and the options that shape the timeline
    (not the model: a bad video should fail before any model is loaded, so this is looked up first)."""
    h = hashlib.sha256()
    h.update(json.dumps(_timeline_options(options), sort_keys=True).encode())
    h.update(source.sha256().encode())
    return "timeline-" + h.hexdigest()[:32]


def _saved_skeleton(source: Source, options: VideoOptions) -> dict[str, Any] | None:
    if options.cache_dir is None:
        return None
    try:
        saved: dict[str, Any] = json.loads((options.cache_dir / f"{skeleton_key(source, options)}.json").read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def _answer_from_state(source: Source, engine: Engine, options: VideoOptions, saved: dict[str, Any],
                       t0: float) -> Description | None:
    """A follow-up on a video whose prefilled state was saved: the timeline's skeleton, saved with the
    state, rebuilds the prompt's text around stand-in media (the state already holds the real ones),
    so the video is not decoded again.  None when the saved state does not fit this engine."""
    import numpy as np

    if options.cache_dir is None or not hasattr(engine, "generate_cached"):
        return None
    key = cache_key(source, engine, options)
    try:
        if saved["state_key"] != key:
            return None
        blob = (options.cache_dir / f"{key}.state").read_bytes()
        frame, clip = np.zeros((48, 48, 3), np.uint8), np.zeros(SAMPLE_RATE, np.float32)
        units = [Unit(int(t), frame if f else None, clip if a else None) for t, f, a in saved["units"]]
        meta = dict(saved["meta"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not engine.load_state(blob):  # type: ignore[attr-defined]
        return None
    messages = [Message("user", [*unit_parts(units), Text("\n" + options.prompt)])]
    out = engine.generate_cached(messages, options.generate)
    if out is None:
        engine.reset()  # type: ignore[attr-defined]
        return None
    text = "".join(out).strip()
    for warning in meta.get("warnings", []):  # said again: the saved timeline had them (a dropped track...)
        source.warn(str(warning))
    meta.update(cache="hit", timeline="saved", prompt_evaluated=engine.stats.prompt_evaluated, windows=1,
                seconds=round(time.perf_counter() - t0, 3))
    return Description(file=source.name, text=text, meta=meta)


def video(source: Source, engine_for: Callable[[int], Engine], options: VideoOptions, n_ctx: int,
          on_progress: Callable[[float], None] | None = None) -> Description:
    t0 = time.perf_counter()
    engine: Engine | None = None
    _check_start(source, options)  # before any cache or model: the rule transcribe follows
    saved = _saved_skeleton(source, options)
    if saved is not None:
        engine = engine_for(n_ctx)
        hit = _answer_from_state(source, engine, options, saved, t0)
        if hit is not None:
            return hit
    tl = build_timeline(source, options)
    frame_tokens = options.frame_tokens
    total = tl.tokens(frame_tokens)
    prompt_budget = n_ctx - options.generate.max_tokens - 256
    meta: dict[str, Any] = {"frames": tl.frames_total, "frames_dropped": tl.frames_dropped,
                            "audio_seconds": tl.audio_seconds_total, "audio_seconds_silent": tl.audio_seconds_silent,
                            "tokens_media": total, "tokens_saved": tl.saved_tokens(frame_tokens)}
    if tl.audio_dropped is not None:
        meta["audio_dropped"] = tl.audio_dropped
    meta.update(source.meta())  # warnings, NaN samples replaced
    if engine is None:
        engine = engine_for(n_ctx)
    question = Text("\n" + options.prompt)
    if total <= prompt_budget:
        messages = [Message("user", [*unit_parts(tl.units), question])]
        gen = options.generate
        state_file = None
        if options.cache_dir is not None and hasattr(engine, "save_state"):
            state_file = options.cache_dir / f"{cache_key(source, engine, options)}.state"
            if state_file.exists() and engine.load_state(state_file.read_bytes()):  # type: ignore[attr-defined]
                meta["cache"] = "hit"
            else:
                meta["cache"] = "miss"
                path = state_file

                skeleton = {"state_key": path.stem, "units": _skeleton(tl), "meta": dict(meta)}
                skeleton_file = options.cache_dir / f"{skeleton_key(source, options)}.json"

                def save() -> None:
                    assert engine is not None
                    write_state(path, engine.save_state(), options.cache_dir)
                    write_state(skeleton_file, json.dumps(skeleton).encode(), None)

                gen = GenerateOptions(**{**gen.__dict__, "on_media_evaluated": save})

        text = _generate(engine, messages, gen)
        meta["prompt_evaluated"] = engine.stats.prompt_evaluated
        meta["windows"] = 1
    else:
        windows = split_windows(tl.units, prompt_budget, frame_tokens)
        answers = []
        for i, win in enumerate(windows):
            span = f"[{clock(win[0].t_ms)}-{clock(win[-1].t_ms + int(1000 / options.fps))}]"
            msg = [Message("user", [*unit_parts(win), Text(f"\nThis is the part {span} of a longer video. "
                                                          + options.prompt)])]
            answers.append(f"{span} {_generate(engine, msg, options.generate)}")
            if on_progress:
                on_progress((i + 1) / (len(windows) + 1))
        combined = "\n".join(answers)
        reduce = [Message("user", [Text("Notes on consecutive parts of one video, with their absolute times:\n"
                                        f"{combined}\n\nUsing these notes, answer for the whole video: "
                                        f"{options.prompt}")])]
        text = _generate(engine, reduce, options.generate)
        meta["windows"] = len(windows)
        meta["window_answers"] = answers
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return Description(file=source.name, text=text, meta=meta)


def write_state(path: Path, blob: bytes, cache_dir: Path | None, cap_bytes: int = 4 << 30) -> None:
    """Write a prefilled state atomically, then evict the oldest states beyond the size cap."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        return
    if cache_dir is None:
        return
    states = sorted(cache_dir.glob("*.state"), key=lambda p: p.stat().st_mtime, reverse=True)
    used = 0
    for p in states:
        used += p.stat().st_size
        if used > cap_bytes and p != path:
            p.unlink(missing_ok=True)
    skeletons = sorted(cache_dir.glob("timeline-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in skeletons[MAX_SKELETONS:]:  # small, but not to pile up forever
        p.unlink(missing_ok=True)
