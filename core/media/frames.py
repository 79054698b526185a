"""Video frames sampled at a rate on the stream's own timeline, as RGB uint8 at the model's size.

The frame for time t is the one being shown at t (the last frame whose timestamp is <= t), with t on
the video stream's timeline (0 = the stream's first timestamp): t = 0, 1/fps, 2/fps ... inside the
[start_ms, end_ms) range.  With `max_frames` and a known duration, when the range holds more frames than
that, the frames are instead spread evenly over it: t_i = start + i * span / max_frames.

Speed: only frames that are shown are converted, and they are scaled straight to the model's size in
swscale (`fit_size` for the frame token budget; rotation and sample aspect ratio honoured) so nothing
downstream resizes full frames.  The decoder runs multi-threaded, and for codecs that mark reference
frames (H.264, HEVC, MPEG-1/2/4) non-reference frames that no sample time falls on are skipped by the
decoder (`skip_frame=NONREF` toggled packet by packet); reference frames are always decoded, so the
frames shown are exact.

Parallel decoding.  A file with a keyframe index (mp4/mov, mkv/webm...) is cut at keyframes into chunks
of sample times, and up to GEMMAPIPE_VIDEO_THREADS (default: the usable cores, at most MAX_THREADS)
single-threaded decoders work on chunks at once, each from its own keyframe; frames come out in order,
a few chunks ahead at most.  H.264's own frame threads scale poorly (about 1.3x on two cores, measured)
while independent GOPs scale with the cores.  A chunk starts a little after its keyframe's decode
timestamp (the reorder delay plus two frames) so its first sample time is surely at or after the
keyframe's picture; if a decoder still lands after its first sample time it re-seeks earlier, so the
frames are the same as one sequential pass (tested).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from ..cpus import usable_cpus
from ..errors import BadInput, UsageError
from .geometry import DEFAULT_FRAME_TOKENS, MTMD_MAX_TOKENS, fit_size, mtmd_keeps, mtmd_size, tokens_for

if TYPE_CHECKING:
    import numpy as np

    from .source import Source

MAX_DECODE_ERRORS = 50
SEEK_MIN_MS = 5_000
MAX_THREADS = 8
CHUNK_SAMPLES = (4, 32)
"""Sample times per parallel chunk (fewest, most): small enough to keep a few chunks of frames in memory
and every decoder busy; whole GOPs, so a chunk can hold more when keyframes are rarer."""
_ENV_THREADS = "GEMMAPIPE_VIDEO_THREADS"
_NONREF_SKIP = {"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4"}
_DURATION_TRUSTED = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"}


@dataclass
class Frame:
    """The frame shown at `t_ms`; `index` counts the frames yielded (0, 1, 2...); `source_ms` is that
    frame's own timestamp; `pixels` is HxWx3 uint8 RGB at the size the model takes."""

    t_ms: int
    index: int
    pixels: np.ndarray
    source_ms: int | None = None


@dataclass(frozen=True)
class FramePlan:
    """Sample times t_i = first + i * step (milliseconds, exact fractions), i < count (None: until the end)."""

    first: Fraction
    step: Fraction
    count: int | None

    def t(self, i: int) -> Fraction | None:
        if i < 0 or (self.count is not None and i >= self.count):
            return None
        return self.first + i * self.step

    def t_ms(self, i: int) -> int:
        t = self.t(i)
        assert t is not None
        return math.floor(t)

    def any_in(self, lo: Fraction, hi: Fraction) -> bool:
        """Whether some sample time lies in [lo, hi)."""
        k = max(0, math.ceil((lo - self.first) / self.step))
        t = self.t(k)
        return t is not None and t < hi


def _fps_fraction(fps: float) -> Fraction:
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise UsageError(None, f"must be a positive number (got {fps})", parameter="fps")
    return Fraction(fps).limit_denominator(1_000_000)


def frame_plan(
    duration_ms: int | None,
    *,
    fps: float = 1.0,
    start_ms: int | None = None,
    end_ms: int | None = None,
    max_frames: int | None = None,
) -> FramePlan:
    """The sample times for a stream of `duration_ms` (None: unknown, e.g. a pipe)."""
    step = Fraction(1000) / _fps_fraction(fps)
    start = Fraction(start_ms or 0)
    if start_ms is not None and start_ms < 0:
        raise UsageError(None, f"must not be negative (got {start_ms} ms)", parameter="start")
    if end_ms is not None and end_ms <= (start_ms or 0):
        raise UsageError(None, f"must come after the start ({end_ms} ms <= {start_ms or 0} ms)", parameter="end")
    if max_frames is not None and max_frames < 1:
        raise UsageError(None, f"must be at least 1 (got {max_frames})", parameter="max_frames")
    ends = [Fraction(x) for x in (end_ms, duration_ms) if x is not None]
    end = min(ends) if ends else None
    k0 = math.ceil(start / step)
    first = k0 * step
    if end is None:
        return FramePlan(first, step, max_frames)
    count = max(0, math.ceil(end / step) - k0)
    if start < end and count == 0:
        count = 1  # a range shorter than one step still shows its first frame
        first = start
    if max_frames is not None and count > max_frames:
        return FramePlan(start, (end - start) / max_frames, max_frames)
    return FramePlan(first, step, count)


def frame_size(
    width: int, height: int, *, max_tokens: int = DEFAULT_FRAME_TOKENS, min_tokens: int | None = None,
    floor_tokens: int = 0,
) -> tuple[int, int]:
    """The (width, height) frames of a width x height (display size) video are delivered at.

    min_tokens defaults to half the budget: small videos are scaled up to at least that many tokens,
    never past the budget. floor_tokens: the fewest tokens the model's consumer keeps an image at
    (llama-server keeps gemma4uv's own minimum of 70 unless started with --image-min-tokens): a frame
    under it is raised as mtmd would raise it, so that the frame is sent at the size it will be fed
    (one resampling, from the source) and its tokens are known. 0: the engine keeps any size.
    """
    lo = min_tokens if min_tokens is not None else max(1, max_tokens // 2)
    w, h = fit_size(width, height, min_tokens=min(lo, max_tokens), max_tokens=max_tokens)
    if floor_tokens and tokens_for(w, h) < floor_tokens:
        top = max(MTMD_MAX_TOKENS, floor_tokens)
        w, h = mtmd_size(w, h, min_tokens=floor_tokens, max_tokens=top)
        if not mtmd_keeps(w, h, min_tokens=floor_tokens, max_tokens=top):
            w, h = fit_size(width, height, min_tokens=floor_tokens, max_tokens=max(floor_tokens, tokens_for(w, h)))
    return w, h


def iter_frames(
    source: Source,
    *,
    fps: float = 1.0,
    max_tokens: int = DEFAULT_FRAME_TOKENS,
    min_tokens: int | None = None,
    floor_tokens: int = 0,
    start_ms: int | None = None,
    end_ms: int | None = None,
    max_frames: int | None = None,
) -> Iterator[Frame]:
    """Frames of a video sampled at `fps` (see the module docstring), scaled to `frame_size(...)`.

    A still image yields itself once (t_ms 0).  Raises BadInput for audio-only inputs, undecodable or
    truncated video; UsageError for invalid fps/range/max_frames.
    """
    from .image import load_image

    source.require_video()
    if source.kind == "image":
        frame_plan(None, fps=fps, start_ms=start_ms, end_ms=end_ms, max_frames=max_frames)  # validate
        lo = min_tokens if min_tokens is not None else max(1, max_tokens // 2)
        lo = max(min(lo, max_tokens), floor_tokens)
        yield Frame(0, 0, load_image(source, max_tokens=max(max_tokens, lo), min_tokens=lo), 0)
        return
    info = source.info
    assert info is not None and info.width and info.height
    duration = info.video_duration_ms or info.duration_ms
    plan = frame_plan(duration, fps=fps, start_ms=start_ms, end_ms=end_ms, max_frames=max_frames)
    if plan.count == 0:
        return
    w, h = frame_size(info.width, info.height, max_tokens=max_tokens, min_tokens=min_tokens,
                      floor_tokens=floor_tokens)
    from .faults import decode_guard

    with decode_guard(source.name):
        chunks = _chunk_plan(source, plan, info.video_origin_pts)
        if chunks is None:
            yield from _frames(source, plan, (w, h), info.rotation, info.video_origin_pts)
        else:
            yield from _parallel(source, plan, (w, h), info.rotation, info.video_origin_pts, *chunks)


def _frames(
    source: Source,
    plan: FramePlan,
    size: tuple[int, int],
    rotation: int,
    origin_pts: int | None,
    *,
    index0: int = 0,
    key: int | None = None,
    threads: int | None = None,
) -> Iterator[Frame]:
    """Frames for `plan` (numbered from index0): from keyframe timestamp `key` if given, else from a seek
    near the first sample time, else from the start; each later try when the earlier landed too late."""
    first = plan.t(0)
    tries: list[int | Fraction | None] = [] if key is None else [key]
    if first is not None and first >= SEEK_MIN_MS and source.seekable:
        tries.append(first - 1000)  # ms before the first sample time: a keyframe at or before it
    tries.append(None)
    for seek in tries:
        restart = yield from _decode(source, plan, size, rotation, seek, origin_pts, index0, threads)
        if not restart:
            return


def _threads() -> int:
    import os

    setting = os.environ.get(_ENV_THREADS, "").strip()
    if setting.isdigit():
        return max(1, min(int(setting), 64))
    return max(1, min(usable_cpus(), MAX_THREADS))


def _chunk_plan(
    source: Source, plan: FramePlan, origin_pts: int | None
) -> tuple[int, list[tuple[int, int, int | None]]] | None:
    """(decoders, chunks) for parallel decoding, or None to decode in one pass.  A chunk is (first sample
    index, end index, keyframe timestamp its decoder seeks to; None for the first chunk)."""
    from .probe import pick_streams

    workers = _threads()
    n = plan.count
    lo, hi = CHUNK_SAMPLES
    if workers < 2 or n is None or n < 2 * lo or source.path is None:
        return None
    with source.open_av() as container:
        stream: Any
        stream, _ = pick_streams(container)
        if stream is None or stream.time_base is None:
            return None
        origin = origin_pts if origin_pts is not None else stream.start_time
        if origin is None:
            return None
        # a seek makes demuxers that read their index lazily (Matroska cues at the end) read it now
        container.seek(origin, stream=stream, backward=True, any_frame=False)
        keys = [e.timestamp for e in stream.index_entries if e.is_keyframe]
        if len(keys) < 2:
            return None
        tb = Fraction(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate
        frame_ticks = max(1, round(1 / (Fraction(rate) * tb))) if rate else round(Fraction(1, 25) / tb)
        # index timestamps may be decode times; the picture of a keyframe is shown `delay` later
        first = next(container.demux(stream), None)
        delay = 0
        if first is not None and first.pts is not None and first.dts is not None:
            delay = max(0, first.pts - first.dts)
    margin = delay + 2 * frame_ticks
    target = max(lo, min(hi, n // (workers * 4)))
    chunks: list[tuple[int, int, int | None]] = []
    start, seek = 0, None
    ms_per_tick = tb * 1000
    for ts in sorted(set(keys)):
        b_ms = (ts + margin - origin) * ms_per_tick  # sample times from here on show this GOP or later
        j = max(0, math.ceil((b_ms - plan.first) / plan.step))
        if j >= n:
            break
        if j == start and start > 0:
            seek = ts  # a later keyframe still shown by this chunk's first sample time: less to decode
        elif j - start >= target and n - j >= lo:
            chunks.append((start, j, seek))
            start, seek = j, ts
    chunks.append((start, n, seek))
    if len(chunks) < 2:
        return None
    return min(workers, len(chunks)), chunks


def _parallel(
    source: Source,
    plan: FramePlan,
    size: tuple[int, int],
    rotation: int,
    origin_pts: int | None,
    workers: int,
    chunks: list[tuple[int, int, int | None]],
) -> Iterator[Frame]:
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    step = plan.step

    def job(i0: int, i1: int, key: int | None) -> list[Frame]:
        first = plan.t(i0)
        assert first is not None
        sub = FramePlan(first, step, i1 - i0)
        return list(_frames(source, sub, size, rotation, origin_pts, index0=i0, key=key, threads=1))

    pool = ThreadPoolExecutor(workers, thread_name_prefix="gemmapipe-frames")
    pending: deque[Future[list[Frame]]] = deque()
    todo = iter(chunks)
    try:
        for c in todo:
            pending.append(pool.submit(job, *c))
            if len(pending) > workers:  # every decoder busy and one chunk queued
                break
        while pending:
            frames = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(job, *nxt))
            yield from frames
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode(
    source: Source,
    plan: FramePlan,
    size: tuple[int, int],
    rotation: int,
    seek: int | Fraction | None,
    origin_pts: int | None,
    index0: int = 0,
    threads: int | None = None,
) -> Generator[Frame, None, bool]:
    """One decoding pass; returns True (generator return) when it landed after the first sample time and
    must be redone from an earlier point.  `seek`: an int is a keyframe timestamp (stream time base), a
    Fraction a time in ms on the frame timeline, None decodes from the start."""
    import av
    import numpy as np

    from .faults import av_bad_input
    from .probe import pick_streams

    name = source.name
    w, h = size
    k_rot = (rotation // 90) % 4
    sw, sh = (h, w) if k_rot % 2 else (w, h)  # scale before rotating
    container = source.open_av()
    try:
        stream: Any
        stream, _ = pick_streams(container)
        if stream is None:
            raise BadInput(name, "has no decodable video stream")
        ctx = stream.codec_context
        ctx.thread_type = "AUTO"
        if threads is not None:
            ctx.thread_count = threads
        tb = stream.time_base or Fraction(1, 90000)
        ms_per_tick = Fraction(tb) * 1000
        mspt = float(ms_per_tick)
        origin: int | None = origin_pts if origin_pts is not None else stream.start_time
        rate = stream.average_rate or stream.guessed_rate
        frame_ticks = max(1, round(Fraction(1) / (Fraction(rate) * Fraction(tb)))) if rate else 1
        can_skip = ctx.name in _NONREF_SKIP
        skipping = False
        first_f, step_f = float(plan.first), float(plan.step)
        n_plan = plan.count
        first_t = plan.t(0)
        assert first_t is not None
        seeked = seek is not None
        if isinstance(seek, int):
            container.seek(seek, stream=stream, backward=True, any_frame=False)
        elif seek is not None:
            target = math.floor(seek / ms_per_tick + (origin or 0))
            container.seek(target, stream=stream, backward=True, any_frame=False)

        def threshold(t_ms: Fraction | None) -> int | None:
            """A frame with timestamp p is shown after sample time t_ms iff p > threshold (exact)."""
            if t_ms is None:
                return None
            return math.floor((origin or 0) + t_ms / ms_per_tick)

        def to_ms(pts: int) -> int:
            return math.floor((pts - (origin or 0)) * ms_per_tick)

        reformatter = av.video.reformatter.VideoReformatter()

        def convert(frame: Any) -> np.ndarray:
            out = reformatter.reformat(frame, width=sw, height=sh, format="rgb24", interpolation="AREA")
            arr = out.to_ndarray()
            if k_rot:
                arr = np.rot90(arr, k_rot)
            return np.ascontiguousarray(arr)

        i = 0
        t: Fraction | None = first_t
        thr = threshold(t)
        prev: Any = None
        prev_pts = 0
        cache: np.ndarray | None = None
        errors = 0
        last_end = 0  # timestamp where the last decoded frame stops being shown
        count = 0
        demux = container.demux(stream)
        while thr is not None:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.error.FFmpegError as e:
                raise av_bad_input(e, name, during="decode") from None
            if can_skip and packet.pts is not None and packet.duration:
                # skip this packet's picture (if it is not a reference) unless a sample time is near it
                rel = (packet.pts - (origin or 0)) * mspt
                d = packet.duration * mspt
                # shown for sample times in [rel, rel + d); a quarter frame of margin either side
                k = max(0, math.ceil((rel - d / 4 - first_f) / step_f))
                need = (n_plan is None or k < n_plan) and first_f + k * step_f < rel + 1.25 * d
                if need == skipping:
                    skipping = not need
                    ctx.skip_frame = "NONREF" if skipping else "DEFAULT"
            try:
                frames = stream.decode(packet)
            except av.error.EOFError:
                frames = []
            except av.error.FFmpegError:
                errors += 1
                source.warn(f"{name}: undecodable video packets were skipped")
                if errors > MAX_DECODE_ERRORS:
                    raise BadInput(name, "is corrupt: too many video packets cannot be decoded") from None
                continue
            for frame in frames:
                pts = frame.pts
                if pts is None:
                    pts = prev_pts + frame_ticks if prev is not None else (origin or 0)
                if origin is None:
                    origin = pts
                    thr = threshold(t)
                    assert thr is not None
                if seeked and prev is None and pts > thr:
                    return True  # landed after the first sample time: redo from the start
                while thr is not None and pts > thr:
                    if prev is None:  # a sample time before the first frame: show the first frame
                        pixels, src = convert(frame), pts
                    elif cache is None:
                        pixels = cache = convert(prev)
                        src = prev_pts
                    else:  # the same frame shown at several sample times
                        pixels, src = cache.copy(), prev_pts
                    yield Frame(plan.t_ms(i), index0 + i, pixels, to_ms(src))
                    count += 1
                    i += 1
                    t = plan.t(i)
                    thr = threshold(t)
                if thr is None:
                    break
                prev, prev_pts, cache = frame, pts, None
                last_end = pts + (frame.duration or frame_ticks)
        if thr is None or t is None:
            return False
        # end of stream: the last frame stays on screen until the video stream ends
        fmt = container.format.name
        last_ms = (last_end - (origin or 0)) * ms_per_tick
        own: Fraction | None = None  # the video stream's own declared length
        if stream.duration and stream.time_base is not None:
            own = Fraction(stream.duration) * ms_per_tick
        declared = own
        if declared is None and container.duration and fmt in _DURATION_TRUSTED:
            declared = Fraction(container.duration, 1000)
        if prev is None:
            if count == 0:
                raise BadInput(name, "has a video stream but no frame of it can be decoded")
            return False
        if (
            declared is not None
            and fmt in _DURATION_TRUSTED
            and last_ms < declared - max(Fraction(1000), declared / 20)
        ):
            raise BadInput(
                name,
                f"is truncated: its video stops at {float(last_ms) / 1000:.1f} s "
                f"but its header says {float(declared) / 1000:.1f} s",
                "re-download or re-export it",
            )
        end = max(last_ms, own) if own is not None else last_ms
        while t is not None and t < end:
            if cache is None:
                cache = pixels = convert(prev)
            else:
                pixels = cache.copy()
            yield Frame(plan.t_ms(i), index0 + i, pixels, to_ms(prev_pts))
            i += 1
            t = plan.t(i)
        return False
    finally:
        container.close()
