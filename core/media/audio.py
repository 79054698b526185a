"""Audio: any codec, sample rate or channel layout -> float32 mono 16 kHz in [-1, 1], streamed in blocks.

Decoding is PyAV; resampling and downmixing are libswresample (through PyAV's AudioResampler) with
`rematrix_maxval=1`, so a downmix is the mean of the channels and can never clip (ffmpeg's `-ac 1`
instead keeps -3 dB per channel, which clips a loud stereo file).

Positions are integer sample counts at 16 kHz from the first decoded sample of the input: a block's
`offset` is exact however long the input (no float accumulation).  Trimming with start_ms/end_ms keeps
offsets relative to the start of the input.  A start is reached by seeking only in containers with an
exact index (wav, flac, ogg, mp4/mov, mkv/webm, ...); otherwise (mp3, adts, pipes) the decoder runs from
the beginning and drops what comes before, so offsets stay exact.

Non-finite samples (NaN/inf, e.g. from a float WAV): SANITIZED, not refused -- each is replaced with 0
(silence), every sample is clipped to [-1, 1], the block's `nonfinite` counts the replacements and one
warning is recorded on the Source (`source.warnings`) for the result's metadata.

Truncation: an undecodable packet is skipped (a warning; more than MAX_DECODE_ERRORS of them is
BadInput), and when decoding reaches the end of a file whose header states its length (mp3 with a
Xing/Info frame, mp4/mov, mkv/webm, flac, ogg) and the audio stops well short of it, BadInput is
raised at that point ("truncated").
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import BadInput, UsageError

if TYPE_CHECKING:
    import numpy as np

    from .source import Source

SAMPLE_RATE = 16000
"""What gemma4ua takes: 16 kHz mono float PCM."""

WINDOW = 640
"""Samples per audio token (40 ms): 25 tokens a second."""

DEFAULT_BLOCK = SAMPLE_RATE * 30

MAX_DECODE_ERRORS = 20
"""Undecodable packets tolerated (skipped with a warning) before the input is refused as corrupt."""

SEEK_MIN_MS = 20_000
"""Starts closer than this to the beginning are reached by decoding, not seeking."""

# Containers whose timestamps after a seek are exact (a sample-accurate index or granule positions).
_EXACT_SEEK = {"wav", "w64", "aiff", "flac", "ogg", "matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2", "caf"}

# Containers whose header states a length that decoding should reach (truncation check).
_DURATION_TRUSTED = {"mp3", "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "flac", "ogg"}


@dataclass
class AudioBlock:
    """`samples` (float32, mono, 16 kHz, in [-1, 1]) starting `offset` samples after the input's start."""

    offset: int
    samples: np.ndarray
    nonfinite: int = 0  # NaN/inf samples replaced with 0 in this block

    @property
    def start_ms(self) -> int:
        return self.offset * 1000 // SAMPLE_RATE

    @property
    def end_ms(self) -> int:
        return (self.offset + int(self.samples.shape[0])) * 1000 // SAMPLE_RATE

    def __len__(self) -> int:
        return int(self.samples.shape[0])


def windows_for(n_samples: int) -> int:
    """Audio tokens for n samples: one per 640, the last window zero-padded."""
    return -(-n_samples // WINDOW) if n_samples > 0 else 0


def ms_to_samples(ms: int) -> int:
    return ms * SAMPLE_RATE // 1000


def check_range(start_ms: int | None, end_ms: int | None) -> tuple[int, int | None]:
    """Validate a trim range (UsageError) and return it in samples: (start, end or None)."""
    start = 0
    if start_ms is not None:
        if start_ms < 0:
            raise UsageError("--start", f"must not be negative (got {start_ms} ms)")
        start = ms_to_samples(start_ms)
    end = None
    if end_ms is not None:
        if end_ms <= (start_ms or 0):
            raise UsageError("--end", f"must come after the start ({end_ms} ms <= {start_ms or 0} ms)")
        end = ms_to_samples(end_ms)
    return start, end


# ------------------------------------------------------------------------------------------- decode


_CHUNK = 1 << 16
"""Native-rate samples handed from the decoding thread to the resampler at a time."""

_QUEUE = 6
"""Chunks in flight between the threads (bounds memory: ~6 x 65536 samples)."""

_INT_SCALE = {"u8": 1 / 128, "s16": 1 / 32768, "s32": 1 / 2**31, "s64": 1 / 2**63}


def _to_float(frame: Any) -> np.ndarray:
    """A decoded AudioFrame as float32 (channels, samples), integer formats scaled to [-1, 1)."""
    import numpy as np

    arr = frame.to_ndarray()
    fmt = frame.format
    base = fmt.name.rstrip("p")
    if not fmt.is_planar:
        arr = arr.reshape(-1, len(frame.layout.channels)).T
    if base == "flt":
        return arr  # type: ignore[no-any-return]
    if base == "dbl":
        return arr.astype(np.float32)  # type: ignore[no-any-return]
    if base == "u8":
        return (arr.astype(np.float32) - 128.0) * np.float32(1 / 128)  # type: ignore[no-any-return]
    return arr.astype(np.float32) * np.float32(_INT_SCALE[base])  # type: ignore[no-any-return]


@dataclass
class _Chunk:
    rate: int
    layout: str  # "mono" after a stereo/mono downmix, else the input layout (swr downmixes)
    data: np.ndarray  # (n,) mono or (channels, n) planar float32


class _Restart(Exception):
    """The seek landed after the start: decode again from the beginning."""


class _Decoder:
    """Two threads: PyAV demux+decode (+ stereo downmix) in a worker, libswresample in the caller.

    `chunks()` yields (position, samples) pairs of 16 kHz mono float32, positions contiguous from the
    first kept sample (>= start).  Both PyAV's decoder and its filter graph release the GIL, so on two
    cores decoding and resampling overlap.
    """

    def __init__(self, source: Source, start: int, end: int | None, *, allow_seek: bool = True) -> None:
        self.source = source
        self.start = start
        self.end = end
        self.allow_seek = allow_seek
        self.errors = 0
        self.in_end_s = 0.0  # where the decoded input ended, in seconds from the stream origin

    # -- worker thread ---------------------------------------------------------------------------

    def _produce(self, q: queue.Queue[Any], stop: threading.Event) -> None:
        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        try:
            self._decode(put, stop)
            put(("end", None))
        except BaseException as e:  # handed to the consumer, raised there
            put(("error", e))

    def _decode(self, put: Any, stop: threading.Event) -> None:
        import av
        import numpy as np

        from .probe import pick_streams
        from .source import av_bad_input

        src = self.source
        name = src.name
        container = src.open_av()
        try:
            _, stream = pick_streams(container)
            if stream is None:
                raise BadInput(name, "has no decodable audio stream")
            stream.thread_type = "AUTO"  # type: ignore[attr-defined]
            tb = stream.time_base
            origin = stream.start_time or 0
            fmt = container.format.name
            seek = (
                self.allow_seek
                and self.start >= ms_to_samples(SEEK_MIN_MS)
                and src.seekable
                and fmt in _EXACT_SEEK
                and tb is not None
            )
            if seek and tb is not None:
                target_s = self.start / SAMPLE_RATE - 1.0
                container.seek(origin + int(target_s / tb), stream=stream, backward=True, any_frame=False)
            started = False
            in_pos = 0
            in_origin_s = 0.0
            chans: list[list[np.ndarray]] = []  # per channel, the 1-D float32 pieces of the current chunk
            have = 0
            key: tuple[int, str, str] | None = None
            fltp = False
            rate = 1

            def flush() -> None:
                nonlocal chans, have
                if not have or key is None:
                    return
                rows = [c[0] if len(c) == 1 else np.concatenate(c) for c in chans]
                if len(rows) == 2:  # stereo: the channel mean (cannot clip)
                    put(("chunk", _Chunk(key[0], "mono", (rows[0] + rows[1]) * np.float32(0.5))))
                elif len(rows) == 1:
                    put(("chunk", _Chunk(key[0], "mono", rows[0])))
                else:
                    put(("chunk", _Chunk(key[0], key[2], np.stack(rows))))
                chans, have = [[] for _ in chans], 0

            demux = container.demux(stream)
            while not stop.is_set():
                try:
                    packet = next(demux)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:
                    raise av_bad_input(e, name, during="decode") from None
                try:
                    frames = stream.decode(packet)  # type: ignore[attr-defined]
                except av.error.EOFError:
                    frames = []
                except av.error.FFmpegError:
                    self._decode_error()
                    continue
                for frame in frames:
                    if not started:
                        started = True
                        pos0 = 0
                        if seek and frame.pts is not None and tb is not None:
                            first_s = float((frame.pts - origin) * tb)
                            pos0 = max(0, round(first_s * SAMPLE_RATE))
                            in_origin_s = max(0.0, first_s)
                            if pos0 > self.start:
                                raise _Restart()
                        put(("start", pos0))
                    fname = frame.format.name
                    k = (frame.sample_rate, fname, frame.layout.name)
                    if k != key:
                        flush()
                        key = k
                        rate = max(1, k[0])
                        fltp = fname == "fltp"
                        chans = [[] for _ in range(len(frame.layout.channels))]
                    n = frame.samples
                    if fltp:
                        for c, plane in zip(chans, frame.planes, strict=False):
                            c.append(np.frombuffer(plane, np.float32, n))
                    else:
                        for c, row in zip(chans, _to_float(frame), strict=False):
                            c.append(row)
                    have += n
                    in_pos += n
                    if have >= _CHUNK:
                        flush()
            self.in_end_s = in_origin_s + in_pos / rate
            if stop.is_set():
                return
            flush()
            self._check_complete(container, stream, fmt)
        finally:
            container.close()

    # -- caller thread ---------------------------------------------------------------------------

    @staticmethod
    def _resampler(rate: int, layout: str) -> Any:
        import av

        if rate == SAMPLE_RATE and layout == "mono":
            return None
        return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE, options={"rematrix_maxval": "1.0"})

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(position, samples) pairs, positions contiguous from the first sample kept (>= start)."""
        try:
            yield from self._chunks()
        except _Restart:
            self.source.warn(f"{self.source.name}: seeking overshot the start; decoded from the beginning")
            again = _Decoder(self.source, self.start, self.end, allow_seek=False)
            yield from again.chunks()
            self.errors += again.errors

    def _chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        import av
        import numpy as np

        q: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(q, stop), name="gemmapipe-audio", daemon=True)
        worker.start()
        try:
            pos: int | None = None
            resampler: Any = None
            current: tuple[int, str] | None = None
            in_pts = 0
            while True:
                kind, item = q.get()
                if kind == "error":
                    raise item
                if kind == "start":
                    pos = int(item)
                    continue
                if kind == "end":
                    break
                chunk: _Chunk = item
                assert pos is not None
                k = (chunk.rate, chunk.layout)
                outs: list[Any] = []
                if k != current:
                    if resampler is not None:
                        outs.extend(resampler.resample(None))
                    resampler = self._resampler(*k)
                    current = k
                    in_pts = 0
                if resampler is None:
                    data = chunk.data
                    pos = yield from self._emit(data, pos)
                else:
                    planar = chunk.data.reshape(1, -1) if chunk.data.ndim == 1 else chunk.data
                    fmt = "flt" if chunk.data.ndim == 1 else "fltp"
                    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format=fmt, layout=chunk.layout)
                    frame.sample_rate = chunk.rate
                    frame.pts = in_pts
                    in_pts += planar.shape[1]
                    outs.extend(resampler.resample(frame))
                for out in outs:
                    data = np.frombuffer(out.planes[0], dtype=np.float32, count=out.samples)
                    pos = yield from self._emit(data, pos)
                if self.end is not None and pos >= self.end:
                    return
            if resampler is not None and pos is not None:
                for out in resampler.resample(None):
                    data = np.frombuffer(out.planes[0], dtype=np.float32, count=out.samples)
                    pos = yield from self._emit(data, pos)
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    while True:
                        q.get_nowait()
                except queue.Empty:
                    pass
                worker.join(0.05)

    def _emit(self, data: np.ndarray, pos: int) -> Generator[tuple[int, np.ndarray], None, int]:
        """Yield the kept part of `data` (starting at `pos`); returns the next position."""
        n = int(data.shape[0])
        lo = max(0, self.start - pos)
        hi = n if self.end is None else min(n, self.end - pos)
        if hi > lo:
            yield pos + lo, data[lo:hi]
        return pos + n

    def _decode_error(self) -> None:
        self.errors += 1
        self.source.warn(f"{self.source.name}: undecodable audio packets were skipped")
        if self.errors > MAX_DECODE_ERRORS:
            raise BadInput(self.source.name, "is corrupt: too many audio packets cannot be decoded")

    def _check_complete(self, container: Any, stream: Any, fmt: str) -> None:
        if fmt not in _DURATION_TRUSTED:
            return
        declared: float | None = None
        tol = 0.0
        if stream.duration and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
            tol = max(0.5, 0.02 * declared)
        elif container.duration and len(container.streams) == 1:
            declared = container.duration / 1_000_000
            tol = max(1.0, 0.05 * declared)
        if declared is None or declared <= 0:
            return
        if self.in_end_s < declared - tol:
            raise BadInput(
                self.source.name,
                f"is truncated: its audio stops at {self.in_end_s:.1f} s but its header says {declared:.1f} s",
                "re-download or re-export it",
            )


def _sanitize(block: np.ndarray, source: Source) -> int:
    """In place: NaN/inf -> 0, clip to [-1, 1]; returns how many samples were non-finite."""
    import numpy as np

    bad = 0
    finite = np.isfinite(block)
    if not finite.all():
        bad = int(block.size - np.count_nonzero(finite))
        block[~finite] = 0.0
        source.warn(f"{source.name}: non-finite audio samples (NaN/inf) were replaced with silence")
    np.clip(block, -1.0, 1.0, out=block)
    return bad


def iter_audio(
    source: Source,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    block_samples: int = DEFAULT_BLOCK,
) -> Iterator[AudioBlock]:
    """The input's audio as float32 mono 16 kHz blocks of `block_samples` (the last one shorter).

    Memory stays bounded by the block size whatever the input's length.  Raises BadInput for inputs
    without audio (images, silent videos), corrupt or truncated audio, and when nothing is left after
    trimming; UsageError for an invalid range.
    """
    import numpy as np

    if block_samples <= 0:
        raise ValueError("block_samples must be positive")
    source.require_audio()
    start, end = check_range(start_ms, end_ms)
    decoder = _Decoder(source, start, end)
    pending: list[np.ndarray] = []
    have = 0
    offset: int | None = None
    emitted = 0
    for pos, data in decoder.chunks():
        if offset is None:
            offset = pos
        pending.append(data)
        have += data.shape[0]
        while have >= block_samples:
            cat = np.concatenate(pending) if len(pending) > 1 else pending[0]
            block = np.array(cat[:block_samples], dtype=np.float32)
            rest = cat[block_samples:]
            pending = [rest] if rest.shape[0] else []
            have = int(rest.shape[0])
            bad = _sanitize(block, source)
            yield AudioBlock(offset + emitted, block, bad)
            emitted += block_samples
    if have:
        block = np.array(np.concatenate(pending), dtype=np.float32)
        bad = _sanitize(block, source)
        yield AudioBlock((offset or 0) + emitted, block, bad)
        emitted += have
    if emitted == 0:
        if start:
            raise BadInput(source.name, f"has no audio after {start_ms} ms (the start is past the end)")
        raise BadInput(source.name, "contains no audio samples")


def read_audio(
    source: Source,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    block_samples: int = DEFAULT_BLOCK,
) -> np.ndarray:
    """The whole (trimmed) audio as one float32 mono 16 kHz array (see iter_audio)."""
    import numpy as np

    blocks = [b.samples for b in iter_audio(source, start_ms=start_ms, end_ms=end_ms, block_samples=block_samples)]
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
