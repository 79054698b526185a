"""video: frames at `fps` and the audio track on one timeline, fed in one call.

What the model sees, per kept second t (absolute time from the file start):

    [mm:ss] <image of the frame shown at t> <audio t .. t+1 s>

then the question. A near-duplicate frame (static slide, still camera) or a silent second is
dropped, and its tokens counted as saved; the timestamp text stays so times remain citable. When
the whole does not fit the context, consecutive windows are answered separately (map) and the
answers, labelled with their absolute time ranges, are combined in a final pass (reduce).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..engine.base import Engine, EngineState, GenerateOptions, StateError, StatefulEngine
from ..engine.parts import Audio, CachedMessage, Image, Message, Part, Placeholder, Text
from ..results import Description
from ..statecache import CacheEntryError, Key, StateCache, make_key
from ..timefmt import clock, require_start_before_end

if TYPE_CHECKING:
    import numpy as np

    from ..media.source import Source

T = TypeVar("T")

SAMPLE_RATE = 16000
DEFAULT_PROMPT = "Describe what happens in this video, citing times as [mm:ss]."
TEXT_TOKENS_PER_UNIT = 8  # "[mm:ss] " and separators, measured on Gemma's tokenizer (~6-8)
DUP_THRESHOLD = 2.0  # mean absolute difference (0-255) under which a frame repeats the last kept one
SILENCE_RMS = 10 ** (-50 / 20)  # -50 dBFS
# Part of the state cache's key: bump when the text `_layout` puts around the media changes.
PROMPT_LAYOUT = 1


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
    cache: StateCache | None = None  # None: no prefill cache
    generate: GenerateOptions = field(default_factory=lambda: GenerateOptions(max_tokens=768))
    jobs: int = 1  # windows answered at once (an engine that takes concurrent requests)


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


def _layout(rows: Iterable[tuple[int, T | None, T | None]]) -> list[Text | T]:
    """The prompt around each second's media: `[mm:ss] <image> <audio>` and a newline."""
    parts: list[Text | T] = []
    for t_ms, image, audio in rows:
        if image is None and audio is None:
            continue  # a repeated frame over silence: the previous label still covers it
        parts.append(Text(f"[{clock(t_ms)}] "))
        if image is not None:
            parts.append(image)
        if audio is not None:
            parts.append(audio)
        parts.append(Text("\n"))
    return parts


def unit_parts(units: list[Unit]) -> list[Part]:
    return cast(list[Part], _layout((u.t_ms, Image(u.frame) if u.frame is not None else None,
                                     Audio(u.audio) if u.audio is not None else None) for u in units))


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


def _generate(engine: Engine, messages: list[Message], gen: GenerateOptions) -> str:
    return "".join(engine.generate(messages, gen)).strip()


# --- the prefilled-state cache --------------------------------------------------------------------
# What is saved: the KV cache right after the last media of the single-window prompt (engine.prefill),
# the timeline's skeleton (each kept second's time and which media it has: enough to lay the prompt's
# text out again) and the metadata of the run that saved it. A follow-up question on the same video
# restores the state and evaluates only its own text: the video is not decoded again.

def _content(source: Source, options: VideoOptions) -> dict[str, Any]:
    """What a saved prefill depends on besides the model: the file and how its timeline is laid out."""
    return {"task": "video", "layout": PROMPT_LAYOUT, "source": source.sha256(), **_timeline_options(options)}


def _skeleton(tl: Timeline) -> list[list[int]]:
    return [[u.t_ms, int(u.frame is not None), int(u.audio is not None)] for u in tl.units]


def _read_skeleton(info: dict[str, Any]) -> list[tuple[int, bool, bool]]:
    rows = info.get("units")
    if rows is None:
        raise CacheEntryError("its header lacks 'units'")
    if not isinstance(rows, list) or not all(
            isinstance(r, list) and len(r) == 3 and all(type(v) is int and v >= 0 for v in r) for r in rows):
        raise CacheEntryError("its 'units' have the wrong type")
    return [(r[0], bool(r[1]), bool(r[2])) for r in rows]


def _answer_from_cache(source: Source, engine: Engine, options: VideoOptions, n_ctx: int,
                       t0: float) -> Description | None:
    """A follow-up on a video whose prefilled state was saved: restore it, lay the prompt's text out
    again from the saved skeleton (placeholders where the media were) and evaluate only the question.
    None when there is no usable entry (a bad one is reported and dropped)."""
    cache = options.cache
    if cache is None or not isinstance(engine, StatefulEngine):
        return None
    key = make_key(_content(source, options), engine.state_setup())
    entry = cache.get(key)
    if entry is None:
        return None
    try:
        rows = _read_skeleton(entry.info)
        meta, state = entry.info.get("meta"), entry.info.get("engine")
        if not isinstance(meta, dict) or not isinstance(state, dict):
            raise CacheEntryError("its 'meta' or 'engine' is missing or has the wrong type")
        tokens = meta.get("tokens_media")
        if type(tokens) is not int:
            raise CacheEntryError("its 'meta' lacks 'tokens_media'")
        if tokens > n_ctx - options.generate.max_tokens - 256:
            return None  # fine, but this run's answer needs more room than the saved prompt leaves
        engine.load_state(EngineState(entry.payload, state))
    except (CacheEntryError, StateError) as exc:
        cache.reject(key, str(exc))
        return None
    image, audio = Placeholder("image"), Placeholder("audio")
    parts = _layout((t, image if f else None, audio if a else None) for t, f, a in rows)
    out = engine.generate_cached([CachedMessage("user", [*parts, Text("\n" + options.prompt)])], options.generate)
    if out is None:
        engine.reset()
        cache.reject(key, "the saved prompt is not the one this run builds")
        return None
    text = "".join(out).strip()
    meta = {**meta, "cache": "hit", "timeline": "saved", "prompt_evaluated": engine.stats.prompt_evaluated,
            "windows": 1, "seconds": round(time.perf_counter() - t0, 3)}
    return Description(file=source.name, text=text, meta=meta)


def _prefill_and_save(engine: StatefulEngine, cache: StateCache, key: Key, messages: list[Message], tl: Timeline,
                      meta: dict[str, Any], gen: GenerateOptions) -> int:
    """Evaluate the prompt up to its last media, save that state; how many tokens were evaluated."""
    if engine.prefill(messages, gen) is None:
        return 0
    evaluated = engine.stats.prompt_evaluated
    state = engine.save_state()
    cache.put(key, {"engine": state.info, "units": _skeleton(tl), "meta": dict(meta)}, state.kv)
    return evaluated


VIDEO_CTX = 16384  # the context a video asks for (within what the model was trained for); windows beyond


def video(source: Source, engine_for: Callable[[int], Engine], options: VideoOptions, n_ctx: int,
          on_progress: Callable[[float], None] | None = None) -> Description:
    t0 = time.perf_counter()
    engine: Engine | None = None
    _check_start(source, options)  # before any cache or model: the rule transcribe follows
    cache = options.cache
    if cache is not None and cache.has_content(make_key(_content(source, options), {}).content):
        engine = engine_for(n_ctx)  # the model first: the entry found may spare decoding the video
        hit = _answer_from_cache(source, engine, options, n_ctx, t0)
        if hit is not None:
            return hit
    tl = build_timeline(source, options)
    frame_tokens = options.frame_tokens
    total = tl.tokens(frame_tokens)
    meta: dict[str, Any] = {"frames": tl.frames_total, "frames_dropped": tl.frames_dropped,
                            "audio_seconds": tl.audio_seconds_total, "audio_seconds_silent": tl.audio_seconds_silent,
                            "tokens_media": total, "tokens_saved": tl.saved_tokens(frame_tokens)}
    if tl.audio_dropped is not None:
        meta["audio_dropped"] = tl.audio_dropped
    meta.update(source.meta())  # warnings, NaN samples replaced
    if engine is None:
        engine = engine_for(n_ctx)
    # Windows are sized by the context the engine really has (a model trained for less, or a server
    # that reports its own), not by what was asked for.
    if 0 < engine.n_ctx < n_ctx:
        n_ctx = engine.n_ctx
    prompt_budget = n_ctx - options.generate.max_tokens - 256
    question = Text("\n" + options.prompt)
    if total <= prompt_budget:
        messages = [Message("user", [*unit_parts(tl.units), question])]
        prefilled = 0
        if cache is not None and isinstance(engine, StatefulEngine):
            meta["cache"] = "miss"
            key = make_key(_content(source, options), engine.state_setup())
            prefilled = _prefill_and_save(engine, cache, key, messages, tl, meta, options.generate)
        text = _generate(engine, messages, options.generate)
        meta["prompt_evaluated"] = prefilled + engine.stats.prompt_evaluated
        meta["windows"] = 1
    else:
        from ..parallel import ordered_map

        windows = split_windows(tl.units, prompt_budget, frame_tokens)
        answers = []

        def window_answer(win: list[Unit]) -> str:  # the windows are independent: -j answers them at once
            span = f"[{clock(win[0].t_ms)}-{clock(win[-1].t_ms + int(1000 / options.fps))}]"
            msg = [Message("user", [*unit_parts(win), Text(f"\nThis is the part {span} of a longer video. "
                                                          + options.prompt)])]
            return f"{span} {_generate(engine, msg, options.generate)}"

        for i, text in enumerate(ordered_map(window_answer, windows, options.jobs)):
            answers.append(text)
            if on_progress:
                on_progress((i + 1) / (len(windows) + 1))
        combined = "\n".join(answers)
        reduce = [Message("user", [Text("Notes on consecutive parts of one video, with their absolute times:\n"
                                        f"{combined}\n\nUsing these notes, answer for the whole video: "
                                        f"{options.prompt}")])]
        text = _generate(engine, reduce, options.generate)
        meta["windows"] = len(windows)
        meta["window_answers"] = answers
    stats = engine.stats
    if stats.total_drafted:  # speculative decoding over the engine's life (this video's answers)
        meta["draft"] = {"drafted": stats.total_drafted, "accepted": stats.total_accepted,
                         "acceptance": round(stats.total_accepted / stats.total_drafted, 4)}
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return Description(file=source.name, text=text, meta=meta)
