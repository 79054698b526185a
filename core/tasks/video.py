"""video: frames at `fps` and the audio track on one timeline, fed in one call.

What the model sees is the layout of transformers' Gemma 4 unified processor
(`processing_gemma4_unified.py`, `replace_video_token`): each kept frame as `MM:SS <image>`, items
joined by single spaces; the sound track as segments of at most 30 s (the processor's
`audio_seq_length`, 750 tokens), cut at pauses, each placed right after the frames of its span and
introduced by its own start time, `MM:SS <audio>`; then the question:

    00:00 <image> 00:01 <image> 00:02 <image> 00:00 <audio 0-2.6 s> 00:04 <image> 00:04 <audio 4-9 s>
    Describe what happens in this video ...

A segment starts on the whole second its label names (unless the previous segment ends inside that
second), so its n-th audio token is at label + n x 40 ms. A near-duplicate frame (static slide, still
camera) is dropped, and silence of a second or more is left out of the segments (music and other
sounds are kept: they belong to a video's meaning); the tokens they would have cost are counted as
saved. When the whole does not fit the context, consecutive windows are answered separately (map)
and the answers, labelled with their absolute time ranges, are combined in a final pass (reduce).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from ..audio_format import SAMPLE_RATE
from ..engine.base import Engine, EngineState, GenerateOptions, StateError, StatefulEngine
from ..engine.parts import Audio, CachedMessage, Image, Message, Part, Placeholder, Text
from ..results import Description
from ..statecache import CacheEntryError, Key, StateCache, make_key
from ..timefmt import clock, require_start_before_end

if TYPE_CHECKING:
    import numpy as np

    from ..media.source import Source

T = TypeVar("T")

DEFAULT_PROMPT = "Describe what happens in this video, citing times as MM:SS."
TEXT_TOKENS_PER_ITEM = 6  # "MM:SS " and the space before it, measured on Gemma's tokenizer (5-6)
DUP_THRESHOLD = 2.0  # mean absolute difference (0-255) under which a frame repeats the last kept one
SILENCE_DB = -50.0  # a 40 ms window under this (dBFS) is silence
MAX_SEGMENT_S = 30.0  # one audio segment at most: the processor's audio_seq_length (750 tokens)
PAUSE_MS = 1000.0  # silence at least this long ends a segment (and is not fed)
# Part of the state cache's key: bump when the text `_layout` puts around the media changes.
# 1: "[mm:ss] <image> <audio 1 s>\n" per second; 2: the processor's layout, audio in segments.
PROMPT_LAYOUT = 2


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
    # The fewest tokens the engine keeps an image at (0: any; a llama-server keeps gemma4uv's 70):
    # frames under it are sent at the size it would raise them to (core.media.frames.frame_size).
    frame_floor_tokens: int = 0
    generate: GenerateOptions = field(default_factory=lambda: GenerateOptions(max_tokens=768))
    jobs: int = 1  # windows answered at once (an engine that takes concurrent requests)


@dataclass
class Shot:
    """A kept frame: the picture shown at t_ms."""

    t_ms: int
    pixels: np.ndarray

    @property
    def end_ms(self) -> int:
        return self.t_ms


@dataclass
class Sound:
    """A segment of the sound track: samples [start, end) of the file (absolute sample indices)."""

    start: int
    end: int
    samples: np.ndarray

    @property
    def t_ms(self) -> int:
        return self.start * 1000 // SAMPLE_RATE

    @property
    def end_ms(self) -> int:
        return -(-self.end * 1000 // SAMPLE_RATE)


Item = Shot | Sound


def _item_tokens(item: Item) -> int:
    from ..media.audio import windows_for
    from ..media.geometry import tokens_for

    if isinstance(item, Shot):
        h, w = item.pixels.shape[:2]
        return TEXT_TOKENS_PER_ITEM + tokens_for(w, h)
    return TEXT_TOKENS_PER_ITEM + windows_for(item.samples.size)


@dataclass
class Timeline:
    items: list[Item]  # in prompt order: frames by time, each segment after the frames of its span
    frames_total: int = 0
    frames_dropped: int = 0
    frame_tokens: int = 0  # tokens of one frame as sent (every frame has the same size)
    audio_samples_total: int = 0  # of the sound track under the frames
    audio_dropped: str | None = None  # why an audio track that exists could not be used (from then on)

    @property
    def audio_samples_fed(self) -> int:
        return sum(i.samples.size for i in self.items if isinstance(i, Sound))

    @property
    def audio_seconds_total(self) -> int:
        return -(-self.audio_samples_total // SAMPLE_RATE)

    @property
    def audio_seconds_silent(self) -> int:
        return max(0, round((self.audio_samples_total - self.audio_samples_fed) / SAMPLE_RATE))

    def tokens(self, frame_tokens: int | None = None) -> int:
        """Tokens of the media and their labels (frames counted at the size they are sent)."""
        return sum(_item_tokens(i) for i in self.items)

    def saved_tokens(self, frame_tokens: int | None = None) -> int:
        """Tokens that dropped frames (and their labels) and left-out silence would have cost."""
        from ..media.audio import windows_for

        per_frame = self.frame_tokens or frame_tokens or 0
        silent = max(0, windows_for(self.audio_samples_total) - sum(
            windows_for(i.samples.size) for i in self.items if isinstance(i, Sound)))
        return self.frames_dropped * (per_frame + TEXT_TOKENS_PER_ITEM) + silent


def _check_start(source: Source, options: VideoOptions) -> None:
    info = source.info
    if source.kind == "video" and info is not None:
        require_start_before_end(source.name, "video", options.start_ms, info.video_duration_ms or info.duration_ms)


def sound_segmenter(dedupe: bool = True) -> Any:
    """The energy detector with video's rule (core/tasks/segment.py): anything above SILENCE_DB is
    kept, music and noises included; only silence of PAUSE_MS or more ends a segment and is left
    out; a segment runs at most MAX_SEGMENT_S, cut at its quietest point. With `dedupe` off nothing
    is left out: the track is only cut into segments."""
    from .segment import make_segmenter

    return make_segmenter("energy", max_clip_s=MAX_SEGMENT_S, min_speech_ms=40.0, min_silence_ms=PAUSE_MS,
                          pad_ms=120.0, threshold=-1000.0, hysteresis_db=0.0,
                          min_db=SILENCE_DB if dedupe else -1000.0, zcr_min=10.0, fricative_db=1000.0,
                          steady_max_db=-1000.0)


class _SoundTrack:
    """Cuts segments from the streamed sound track: the segmenter says where, a rolling buffer of
    the last ~40 s gives the samples, from the start snapped back to its whole second."""

    KEEP = int((MAX_SEGMENT_S + 10) * SAMPLE_RATE)

    def __init__(self, dedupe: bool) -> None:
        import numpy as np

        self.seg = sound_segmenter(dedupe)
        self.buf = np.zeros(0, dtype=np.float32)
        self.buf_at = 0
        self.prev_end = 0
        self.total = 0
        self.sounds: list[Sound] = []

    def _take(self, clips: Iterable[Any]) -> None:
        for clip in clips:
            start = max((clip.start // SAMPLE_RATE) * SAMPLE_RATE, self.prev_end, self.buf_at)
            end = clip.end
            if end <= start:
                continue
            piece = self.buf[start - self.buf_at:end - self.buf_at]
            self.sounds.append(Sound(start, start + piece.size, piece.copy()))
            self.prev_end = start + piece.size

    def feed(self, block: Any) -> None:
        import numpy as np

        if self.buf.size == 0:
            self.buf_at = block.offset
        self.buf = np.concatenate([self.buf, block.samples])
        self.total += block.samples.size
        self._take(self.seg.feed(block))
        keep_from = max(self.prev_end, self.buf_at + self.buf.size - self.KEEP)
        if keep_from > self.buf_at:
            self.buf = self.buf[keep_from - self.buf_at:]
            self.buf_at = keep_from

    def finish(self) -> list[Sound]:
        self._take(self.seg.finish())
        return self.sounds


def interleave(shots: list[Shot], sounds: list[Sound]) -> list[Item]:
    """Frames by time; each sound segment right after the frames of its span (t < its end)."""
    items: list[Item] = []
    i = 0
    for snd in sounds:
        while i < len(shots) and shots[i].t_ms * SAMPLE_RATE < snd.end * 1000:
            items.append(shots[i])
            i += 1
        items.append(snd)
    items.extend(shots[i:])
    return items


def build_timeline(source: Source, options: VideoOptions) -> Timeline:
    import numpy as np

    from ..media.audio import iter_audio
    from ..media.frames import iter_frames
    from ..media.geometry import tokens_for

    tl = Timeline(items=[])
    shots: list[Shot] = []
    times: list[int] = []
    last: np.ndarray | None = None
    for fr in iter_frames(source, fps=options.fps, max_tokens=options.frame_tokens, start_ms=options.start_ms,
                          end_ms=options.end_ms, max_frames=options.max_frames,
                          floor_tokens=options.frame_floor_tokens):
        tl.frames_total += 1
        times.append(fr.t_ms)
        tl.frame_tokens = tokens_for(fr.pixels.shape[1], fr.pixels.shape[0])
        keep = True
        if options.dedupe and last is not None and last.shape == fr.pixels.shape:
            diff = np.abs(fr.pixels.astype(np.int16) - last.astype(np.int16)).mean()
            keep = diff >= DUP_THRESHOLD
        if keep:
            last = fr.pixels
            shots.append(Shot(fr.t_ms, fr.pixels))
        else:
            tl.frames_dropped += 1
    sounds: list[Sound] = []
    if options.audio and times:
        step = round(1000 / options.fps)
        limit = times[-1] + step
        track = _SoundTrack(options.dedupe)
        try:
            # Streamed: only the open segment and a short lookback are held, however long the video.
            for block in iter_audio(source, start_ms=options.start_ms, end_ms=min(limit, options.end_ms or limit)):
                track.feed(block)
        except Exception as exc:  # video still works from frames alone
            from ..errors import BadInput

            if not isinstance(exc, BadInput):
                raise
            if source.info is not None and source.info.has_audio:  # a track that fails is said, not hidden
                tl.audio_dropped = exc.reason
                if track.total:
                    source.warn(f"{source.name}: its audio track fails after {track.total // SAMPLE_RATE} s "
                                f"({exc.reason}); the rest is answered from the frames alone")
                else:
                    source.warn(f"{source.name}: its audio track cannot be decoded ({exc.reason}); "
                                "answering from the frames alone")
        sounds = track.finish() if track.total else []
        tl.audio_samples_total = track.total
    if not times and options.start_ms:  # a pipe: its length was not known before decoding
        from ..errors import BadInput

        raise BadInput(source.name, f"has no video after {options.start_ms} ms (the start is past the end)")
    tl.items = interleave(shots, sounds)
    return tl


def _layout(rows: Iterable[tuple[int, T]]) -> list[Text | T]:
    """The prompt around the media: `MM:SS <media>` for each, joined by single spaces."""
    parts: list[Text | T] = []
    for t_ms, media in rows:
        parts.append(Text(f"{' ' if parts else ''}{clock(t_ms)} "))
        parts.append(media)
    return parts


def _media(item: Item) -> Part:
    return Image(item.pixels) if isinstance(item, Shot) else Audio(item.samples)


def item_parts(items: list[Item]) -> list[Part]:
    return cast(list[Part], _layout((i.t_ms, _media(i)) for i in items))


def split_windows(items: list[Item], budget: int, frame_tokens: int | None = None) -> list[list[Item]]:
    windows: list[list[Item]] = [[]]
    used = 0
    for item in items:
        cost = _item_tokens(item)
        if windows[-1] and used + cost > budget:
            windows.append([])
            used = 0
        windows[-1].append(item)
        used += cost
    return [w for w in windows if w]


def _span(items: list[Item], step_ms: int) -> str:
    first = min(i.t_ms for i in items)
    last = max(i.t_ms + step_ms if isinstance(i, Shot) else i.end_ms for i in items)
    return f"[{clock(first)}-{clock(last)}]"


def _timeline_options(options: VideoOptions) -> dict[str, Any]:
    """The options that shape the timeline (and so the prompt but for the question)."""
    return {"fps": options.fps, "frame_tokens": options.frame_tokens, "start": options.start_ms,
            "end": options.end_ms, "max_frames": options.max_frames, "audio": options.audio,
            "dedupe": options.dedupe, "frame_floor": options.frame_floor_tokens}


def _generate(engine: Engine, messages: list[Message], gen: GenerateOptions) -> str:
    return "".join(engine.generate(messages, gen)).strip()


# --- the prefilled-state cache --------------------------------------------------------------------
# What is saved: the KV cache right after the last media of the single-window prompt (engine.prefill),
# the timeline's skeleton (each item's time and kind, image or audio: enough to lay the prompt's
# text out again) and the metadata of the run that saved it. A follow-up question on the same video
# restores the state and evaluates only its own text: the video is not decoded again.

def _content(source: Source, options: VideoOptions) -> dict[str, Any]:
    """What a saved prefill depends on besides the model: the file and how its timeline is laid out."""
    return {"task": "video", "layout": PROMPT_LAYOUT, "source": source.sha256(), **_timeline_options(options)}


_KINDS: tuple[Literal["image"], Literal["audio"]] = ("image", "audio")


def _skeleton(tl: Timeline) -> list[list[int]]:
    """[t_ms, 0 for a frame | 1 for a sound segment] per item, in prompt order."""
    return [[i.t_ms, int(isinstance(i, Sound))] for i in tl.items]


def _read_skeleton(info: dict[str, Any]) -> list[tuple[int, Literal["image", "audio"]]]:
    rows = info.get("units")
    if rows is None:
        raise CacheEntryError("its header lacks 'units'")
    if not isinstance(rows, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(type(v) is int and v >= 0 for v in r) and r[1] < 2
            for r in rows):
        raise CacheEntryError("its 'units' have the wrong type")
    return [(r[0], _KINDS[r[1]]) for r in rows]


def _draft_meta(engine: Engine) -> dict[str, Any]:
    """{"draft": counts} of speculative decoding over the engine's life (this video's answers), or {}."""
    stats = engine.stats
    if not stats.total_drafted:
        return {}
    return {"draft": {"drafted": stats.total_drafted, "accepted": stats.total_accepted,
                      "acceptance": round(stats.total_accepted / stats.total_drafted, 4)}}


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
    parts = _layout((t, Placeholder(kind)) for t, kind in rows)
    out = engine.generate_cached([CachedMessage("user", [*parts, Text("\n" + options.prompt)])], options.generate)
    if out is None:
        engine.reset()
        cache.reject(key, "the saved prompt is not the one this run builds")
        return None
    text = "".join(out).strip()
    meta = {**{k: v for k, v in meta.items() if k != "draft"}, "cache": "hit", "timeline": "saved",
            "prompt_evaluated": engine.stats.prompt_evaluated, "windows": 1, **_draft_meta(engine),
            "seconds": round(time.perf_counter() - t0, 3)}
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
    total = tl.tokens()
    meta: dict[str, Any] = {"frames": tl.frames_total, "frames_dropped": tl.frames_dropped,
                            "audio_seconds": tl.audio_seconds_total, "audio_seconds_silent": tl.audio_seconds_silent,
                            "audio_segments": sum(isinstance(i, Sound) for i in tl.items),
                            "tokens_per_frame": tl.frame_tokens, "tokens_media": total,
                            "tokens_saved": tl.saved_tokens(options.frame_tokens)}
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
        messages = [Message("user", [*item_parts(tl.items), question])]
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

        windows = split_windows(tl.items, prompt_budget)
        answers = []

        def window_answer(win: list[Any]) -> str:  # the windows are independent: -j answers them at once
            span = _span(win, int(1000 / options.fps))
            msg = [Message("user", [*item_parts(win), Text(f"\nThis is the part {span} of a longer video. "
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
    meta.update(_draft_meta(engine))
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    return Description(file=source.name, text=text, meta=meta)
