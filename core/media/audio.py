"""Audio: any codec, sample rate or channel layout -> float32 mono 16 kHz in [-1, 1], streamed in blocks.

Decoding is PyAV.  Mono and stereo are mixed to mono as the mean of the channels (other layouts by
libswresample with `rematrix_maxval=1`, also a mix that cannot clip; ffmpeg's `-ac 1` instead keeps
-3 dB per channel, which clips a loud stereo file), then resampled to 16 kHz by libswresample with
its default filter (the same as the ffmpeg CLI's).

Positions are integer sample counts at 16 kHz from the first decoded sample of the input: a block's
`offset` is exact however long the input (no float accumulation).  Trimming with start_ms/end_ms keeps
offsets relative to the start of the input.  A start is reached by seeking only in containers with an
exact index (wav, flac, ogg, mp4/mov, mkv/webm, ...); otherwise (mp3, adts, pipes) the decoder runs from
the beginning and drops what comes before, so offsets stay exact.

Where the work runs.  Short inputs, pipes and trimmed starts: a decoding thread feeds the resampler in
the caller's thread.  MP3 files of _sndfile.MIN_SECONDS or more: libsndfile (mpg123) decodes 10-second
pieces in several helper processes at once, one call each (see _sndfile; GEMMAPIPE_AUDIO_SNDFILE=0
turns it off); a --start past SEEK_MIN_MS seeks there too.  Other files (and shorter MP3s) of
PROCESS_MIN_SECONDS or more: a helper process (`python -m gemmapipe.core.media._audio_worker`) decodes
and the caller resamples, since PyAV hands the GIL back and forth on every packet and two Python
threads cannot both decode at speed.  The helper is only started when a core is idle
(IDLE_CPUS_FOR_HELPERS, from the load average): on a busy machine it costs more CPU than it saves.
GEMMAPIPE_AUDIO_PROCS=0 keeps everything in this process, =N allows the helper whatever the load; if it
cannot start, decoding falls back to this process.  Memory stays bounded: a few chunks or pieces (about
10 MB each) in flight.

Non-finite samples (NaN/inf, e.g. from a float WAV): SANITIZED, not refused -- each is replaced with 0
(silence), every sample is clipped to [-1, 1], the block's `nonfinite` counts the replacements (so does
`source.nonfinite_samples`, for the result's metadata) and one warning is recorded on the Source
(`source.warn`: the CLI prints it on stderr, and it goes in the result's metadata).

Truncation: an undecodable packet is skipped (a warning; more than MAX_DECODE_ERRORS of them is
BadInput), and when decoding reaches the end of a file whose header states its length (mp3 with a
Xing/Info frame, mp4/mov, mkv/webm, flac, ogg) and the audio stops well short of it, BadInput is
raised at that point ("truncated").
"""

from __future__ import annotations

import contextlib
import json
import queue
import struct
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..audio_format import SAMPLE_RATE
from ..audio_format import WINDOW as AUDIO_WINDOW
from ..cpus import usable_cpus
from ..errors import BadInput, UsageError

if TYPE_CHECKING:
    import numpy as np

    from .probe import MediaInfo
    from .source import Source

"""What gemma4ua takes: 16 kHz mono float PCM."""

WINDOW = AUDIO_WINDOW
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
            raise UsageError(None, f"must not be negative (got {start_ms} ms)", parameter="start")
        start = ms_to_samples(start_ms)
    end = None
    if end_ms is not None:
        if end_ms <= (start_ms or 0):
            raise UsageError(None, f"must come after the start ({end_ms} ms <= {start_ms or 0} ms)", parameter="end")
        end = ms_to_samples(end_ms)
    return start, end


# ------------------------------------------------------------------------------------------- decode


_CHUNK = 1 << 16
"""Native-rate samples handed from a decoding thread to the resampler at a time."""

_QUEUE = 6
"""Chunks in flight between the sequential decoding thread and the resampler."""

PROCESS_MIN_SECONDS = 600.0
"""Files at least this long (not trimmed at the start; long MP3s: see _sndfile.MIN_SECONDS) are decoded
beside the resampler in a helper process, without contending for the GIL (PyAV hands the GIL back
and forth per packet, which costs more than it saves with threads).  Measured on 2 cores with MP3s
forced through it: no faster than this process up to 10 minutes (5 min 0.79-0.89 s vs 0.54-0.56 s;
10 min 1.31-1.36 vs 1.14-1.26), hence the high bar."""

IDLE_CPUS_FOR_HELPERS = 0.75
"""Helpers are used only when about this many CPUs are idle (CPUs minus the 1-minute load average):
on a machine already busy they cost more CPU than they save.  GEMMAPIPE_AUDIO_PROCS=N forces them."""

_ENV_PROCS = "GEMMAPIPE_AUDIO_PROCS"
"""Environment: "0" keeps all decoding in this process; a number caps the helper processes."""

_SNDFILE_CODECS = {"mp3float", "mp3", "mp2float", "mp2"}
_SNDFILE_FORMATS = {"mp3"}  # raw MPEG audio (FFmpeg's "mp3" demuxer reads layers I-III)

_INT_SCALE = {"u8": 1 / 128, "s16": 1 / 32768, "s32": 1 / 2**31, "s64": 1 / 2**63}


_DTYPES = {"u8": "u1", "s16": "<i2", "s32": "<i4", "s64": "<i8", "flt": "<f4", "dbl": "<f8"}


def _to_float(frame: Any) -> np.ndarray:
    """A decoded AudioFrame as float32 (channels, samples), integer formats scaled to [-1, 1).

    The planes are read one by one, never through `frame.to_ndarray()`: PyAV finds a frame's planes by
    walking its data pointers to the first NULL, and with exactly 8 planar channels (7.1) there is no
    NULL after the 8th, so it returns 9 planes (IndexError, or reads what is not a plane)."""
    import numpy as np

    fmt = frame.format
    base = fmt.name.rstrip("p")
    channels = frame.layout.nb_channels
    n = frame.samples
    dtype = np.dtype(_DTYPES[base])
    if fmt.is_planar:
        planes = frame.planes[:channels]
        arr = np.stack([np.frombuffer(pl, dtype, n) for pl in planes]) if n else np.zeros((channels, 0), dtype)
    else:
        arr = np.frombuffer(frame.planes[0], dtype, n * channels).reshape(-1, channels).T
    if base == "flt":
        return arr
    if base == "dbl":
        return arr.astype(np.float32)
    if base == "u8":
        return (arr.astype(np.float32) - 128.0) * np.float32(1 / 128)
    return arr.astype(np.float32) * np.float32(_INT_SCALE[base])


@dataclass
class _Chunk:
    rate: int
    layout: str  # "mono" after a mono/stereo downmix, else the input layout (swr downmixes it)
    data: np.ndarray  # (n,) mono, or (channels, n) planar float32


class _Restart(Exception):
    """A seek landed after the start: decode again from the beginning."""


class _HelperFailed(Exception):
    """A helper process could not start or died: decode in this process instead."""


def _swr_layout(name: str, channels: int) -> bool:
    """Whether libswresample knows this layout by name, with this many channels (then it downmixes)."""
    import av

    if channels > 8:
        return False
    try:
        return len(av.AudioLayout(name).channels) == channels
    except Exception:
        return False


class _Collector:
    """Gathers decoded frames into ~_CHUNK-sample chunks (stereo averaged to mono) and hands them on."""

    def __init__(self, put: Any) -> None:
        self.put = put
        self.chans: list[list[np.ndarray]] = []
        self.have = 0
        self.key: tuple[int, str, str] | None = None
        self.fltp = False
        self.samples = 0  # native samples collected in all
        self.rate = 1

    def add(self, frame: Any) -> None:
        import numpy as np

        fname = frame.format.name
        k = (frame.sample_rate, fname, frame.layout.name)
        if k != self.key:
            self.flush()
            self.key = k
            self.rate = max(1, k[0])
            self.fltp = fname == "fltp"
            self.chans = [[] for _ in range(frame.layout.nb_channels)]
        n = frame.samples
        if self.fltp:  # (planes beyond the channels: see _to_float)
            for c, plane in zip(self.chans, frame.planes[: len(self.chans)], strict=False):
                c.append(np.frombuffer(plane, np.float32, n))
        else:
            for c, row in zip(self.chans, _to_float(frame), strict=False):
                c.append(row)
        self.have += n
        self.samples += n
        if self.have >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        import numpy as np

        if not self.have or self.key is None:
            return
        rows = [c[0] if len(c) == 1 else np.concatenate(c) for c in self.chans]
        if len(rows) == 2:  # stereo: the channel mean (cannot clip)
            chunk = _Chunk(self.key[0], "mono", (rows[0] + rows[1]) * np.float32(0.5))
        elif len(rows) == 1:
            chunk = _Chunk(self.key[0], "mono", rows[0])
        elif _swr_layout(self.key[2], len(rows)):  # 5.1 and friends: swr's downmix (weights centre, drops LFE)
            chunk = _Chunk(self.key[0], self.key[2], np.stack(rows))
        else:  # a layout swr cannot name: the plain mean
            mixed: np.ndarray = np.stack(rows).mean(axis=0, dtype=np.float32)
            chunk = _Chunk(self.key[0], "mono", mixed)
        self.put(("chunk", chunk))
        self.chans = [[] for _ in self.chans]
        self.have = 0


def _put_until(q: queue.Queue[Any], stop: threading.Event, item: Any) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _stop_worker(stop: threading.Event, q: queue.Queue[Any], worker: threading.Thread) -> None:
    """Stop a decoding thread that may be blocked on a full queue."""
    stop.set()
    while worker.is_alive():
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        worker.join(0.05)


def _idle_cpus(cpus: int) -> float:
    import os

    try:
        return cpus - os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this system
        return float(cpus)


_MSG = struct.Struct("<cII")  # message type, job id, payload length
_CHUNK_HEAD = struct.Struct("<IIH")  # rate, channels, layout name length


def send_item(out: Any, job: int, kind: str, item: Any) -> None:
    """Write one decoded item to a helper process's stdout (see _Pool._read)."""
    if kind == "chunk":
        data = item.data
        layout = item.layout.encode()
        channels = 1 if data.ndim == 1 else int(data.shape[0])
        head = _CHUNK_HEAD.pack(item.rate, channels, len(layout)) + layout
        body = memoryview(data).cast("B")
        out.write(_MSG.pack(b"C", job, len(head) + len(body)) + head)
        out.write(body)
        return
    if kind == "start":
        payload = struct.pack("<q", int(item))
    else:
        payload = json.dumps(item).encode() if kind in ("end", "error") else str(item).encode()
    out.write(_MSG.pack({"start": b"S", "end": b"E", "error": b"X", "warn": b"W"}[kind], job, len(payload)) + payload)


class _Pool:
    """Helper processes (python -m gemmapipe.core.media._audio_worker) that decode audio jobs.

    Jobs go in as JSON lines on a worker's stdin; decoded chunks come back on its stdout, read by one
    thread per worker into a bounded queue per job (back-pressure reaches the worker through the pipe).
    """

    def __init__(self, n: int) -> None:
        import subprocess
        import sys

        self.procs: list[Any] = []
        self.queues: dict[int, queue.Queue[Any]] = {}
        self.pending: list[list[int]] = [[] for _ in range(n)]
        self.owner: dict[int, int] = {}  # id(job queue) -> helper index
        self.lock = threading.Lock()
        self.next_job = 0
        self.readers: list[threading.Thread] = []
        try:
            for w in range(n):
                proc = subprocess.Popen(
                    [sys.executable, "-m", "gemmapipe.core.media._audio_worker"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
                self.procs.append(proc)
                t = threading.Thread(target=self._read, args=(w,), name=f"gemmapipe-audio-reader-{w}", daemon=True)
                t.start()
                self.readers.append(t)
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return len(self.procs)

    def get(self, q: queue.Queue[Any]) -> tuple[str, Any]:
        """The next item of a job; a helper whose reader has stopped without a word fails the job."""
        w = self.owner.get(id(q), 0)
        while True:
            try:
                item: tuple[str, Any] = q.get(timeout=0.5)
                return item
            except queue.Empty:
                if not self.readers[w].is_alive() and q.empty():
                    return ("error", {"type": "died", "reason": "helper process stopped answering"})

    def submit(self, w: int, job: dict[str, Any]) -> queue.Queue[Any]:
        q: queue.Queue[Any] = queue.Queue(maxsize=64)
        with self.lock:
            jid = self.next_job
            self.next_job += 1
            self.queues[jid] = q
            self.pending[w].append(jid)
            self.owner[id(q)] = w
        proc = self.procs[w]
        try:
            proc.stdin.write(json.dumps({**job, "job": jid}).encode() + b"\n")
            proc.stdin.flush()
        except OSError:
            q.put(("error", {"type": "died", "reason": "helper process is gone"}))
        return q

    def _read(self, w: int) -> None:
        import numpy as np

        f = self.procs[w].stdout
        try:
            while True:
                head = f.read(_MSG.size)
                if len(head) < _MSG.size:
                    break
                kind, jid, n = _MSG.unpack(head)
                payload = f.read(n) if n else b""
                if len(payload) < n:
                    break
                q = self.queues.get(jid)
                if q is None:
                    continue
                if kind == b"C":
                    rate, channels, ln = _CHUNK_HEAD.unpack_from(payload)
                    off = _CHUNK_HEAD.size
                    layout = payload[off : off + ln].decode()
                    data = np.frombuffer(payload, dtype=np.float32, offset=off + ln)
                    if channels > 1:
                        data = data.reshape(channels, -1)
                    q.put(("chunk", _Chunk(rate, layout, data)))
                elif kind == b"S":
                    q.put(("start", struct.unpack("<q", payload)[0]))
                elif kind == b"W":
                    q.put(("warn", payload.decode(errors="replace")))
                else:
                    with self.lock:
                        if jid in self.pending[w]:
                            self.pending[w].remove(jid)
                    q.put(("end" if kind == b"E" else "error", json.loads(payload)))
        except BaseException:  # any failure here: the jobs of this helper fail (and fall back)
            pass
        with self.lock:
            orphans = list(self.pending[w])
            self.pending[w].clear()
        for jid in orphans:
            q = self.queues.get(jid)
            if q is not None:
                q.put(("error", {"type": "died", "reason": "helper process exited"}))

    def close(self) -> None:
        busy = any(self.pending)
        for jid, q in list(self.queues.items()):  # unblock readers waiting on full queues
            del self.queues[jid]
            with contextlib.suppress(queue.Empty):
                while True:
                    q.get_nowait()
        for proc in self.procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            if busy:
                with contextlib.suppress(OSError):
                    proc.kill()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except Exception:
                with contextlib.suppress(OSError):
                    proc.kill()
                proc.wait()
        for t in self.readers:
            t.join(1)


def _audio_stream(container: Any, name: str) -> Any:
    from .probe import pick_streams

    _, stream = pick_streams(container)
    if stream is None:
        raise BadInput(name, "has no decodable audio stream")
    return stream


class _Decoder:
    """Decoding threads feed native-rate chunks to libswresample in the caller's thread.

    `chunks()` yields (position, samples) pairs of 16 kHz mono float32, positions contiguous from the
    first kept sample (>= start).  PyAV's decoder and filter graph release the GIL, so decoding and
    resampling overlap; long MP3/FLAC files are also cut into pieces decoded on several cores.
    """

    def __init__(
        self, source: Source, start: int, end: int | None, *, allow_seek: bool = True, allow_procs: bool = True
    ) -> None:
        self.source = source
        self.start = start
        self.end = end
        self.allow_seek = allow_seek
        self.allow_procs = allow_procs
        self.errors = 0
        self._lock = threading.Lock()

    # -- shared ----------------------------------------------------------------------------------

    def _decode_error(self) -> None:
        with self._lock:
            self.errors += 1
        self.source.warn(f"{self.source.name}: undecodable audio packets were skipped")
        if self.errors > MAX_DECODE_ERRORS:
            raise BadInput(self.source.name, "is corrupt: too many audio packets cannot be decoded")

    def _decode_packet(self, stream: Any, packet: Any) -> list[Any]:
        import av

        try:
            frames: list[Any] = stream.decode(packet)
            return frames
        except av.error.EOFError:
            return []
        except av.error.FFmpegError:
            self._decode_error()
            return []

    def _check_complete(self, container: Any, stream: Any, fmt: str, end_s: float) -> None:
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
        if end_s < declared - tol:
            raise BadInput(
                self.source.name,
                f"is truncated: its audio stops at {end_s:.1f} s but its header says {declared:.1f} s",
                "re-download or re-export it",
            )

    # -- one decoding thread ---------------------------------------------------------------------

    def _sequential(self, put: Any, stop: threading.Event) -> None:
        """Decode the whole stream (from the start, or from a seek near `start`), handing items to `put`."""
        for item in self._sequential_gen(stop):
            put(item)

    def _sequential_gen(self, stop: threading.Event) -> Iterator[tuple[str, Any]]:
        import av

        from .faults import av_bad_input

        src = self.source
        container = src.open_av()
        try:
            stream = _audio_stream(container, src.name)
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
            in_origin_s = 0.0
            ready: list[tuple[str, Any]] = []
            collector = _Collector(ready.append)
            demux = container.demux(stream)
            while not stop.is_set():
                try:
                    packet = next(demux)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:
                    raise av_bad_input(e, src.name, during="decode") from None
                for frame in self._decode_packet(stream, packet):
                    if not started:
                        started = True
                        pos0 = 0
                        if seek and frame.pts is not None and tb is not None:
                            first_s = float((frame.pts - origin) * tb)
                            pos0 = max(0, round(first_s * SAMPLE_RATE))
                            in_origin_s = max(0.0, first_s)
                            if pos0 > self.start:
                                raise _Restart()
                        ready.append(("start", pos0))
                    collector.add(frame)
                if ready:
                    yield from ready
                    ready.clear()
            if stop.is_set():
                return
            collector.flush()
            yield from ready
            self._check_complete(container, stream, fmt, in_origin_s + collector.samples / collector.rate)
        finally:
            container.close()

    def _inline_items(self) -> Iterator[tuple[str, Any]]:
        """Decoding in the caller's thread: the least CPU, for a machine without an idle core."""
        yield from self._sequential_gen(threading.Event())

    def _sequential_items(self) -> Iterator[tuple[str, Any]]:
        q: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE)
        stop = threading.Event()

        def run() -> None:
            try:
                self._sequential(lambda item: _put_until(q, stop, item), stop)
                _put_until(q, stop, ("end", None))
            except BaseException as e:  # raised again in the caller's thread
                _put_until(q, stop, ("error", e))

        worker = threading.Thread(target=run, name="gemmapipe-audio", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    kind, item = q.get(timeout=0.5)
                except queue.Empty:
                    if worker.is_alive() or not q.empty():
                        continue
                    raise RuntimeError(f"{self.source.name}: the audio decoding thread stopped") from None
                if kind == "error":
                    raise item
                if kind == "end":
                    return
                yield kind, item
        finally:
            _stop_worker(stop, q, worker)

    # -- helper processes ------------------------------------------------------------------------

    def _helpers_setting(self, min_seconds: float) -> str | None:
        """GEMMAPIPE_AUDIO_PROCS ("" when unset) when this input may go to helper processes: a file of
        at least `min_seconds`, helpers not turned off; None otherwise."""
        import os

        src, info = self.source, self.source.info
        setting = os.environ.get(_ENV_PROCS, "")
        if not self.allow_procs or setting == "0" or src.path is None or info is None:
            return None
        return setting if _duration_ms(info) >= min_seconds * 1000 else None

    def _process_items(self) -> Iterator[tuple[str, Any]] | None:
        """Items decoded by a helper process (the whole stream), or None when this input is not for it."""
        setting = self._helpers_setting(PROCESS_MIN_SECONDS)
        if setting is None or self.start != 0:
            return None
        if not setting and _idle_cpus(usable_cpus()) < IDLE_CPUS_FOR_HELPERS:
            return None  # no idle core: a helper would only add its overhead
        try:
            pool = _Pool(1)
        except (OSError, ValueError):
            return None
        return self._pool_items(pool)

    def _pool_items(self, pool: _Pool) -> Iterator[tuple[str, Any]]:
        src = self.source
        assert src.path is not None
        try:
            q = pool.submit(0, {"mode": "whole", "path": src.path})
            for kind, item in self._job_items(pool, q):
                if kind == "end":
                    break
                yield kind, item
        finally:
            pool.close()

    # -- long MP3 files: libsndfile pieces in helper processes --------------------------------------

    def _sndfile_items(self) -> Iterator[tuple[str, Any]] | None:
        """Items of a long MP3 file decoded by libsndfile in helpers (see _sndfile), or None when not
        for it.  Used whatever the load: it costs less CPU than decoding with PyAV in this process."""
        from . import _sndfile

        info = self.source.info
        setting = self._helpers_setting(_sndfile.MIN_SECONDS)
        if (
            setting is None
            or info is None
            or info.format not in _SNDFILE_FORMATS
            or info.audio_codec not in _SNDFILE_CODECS
            or not info.sample_rate
            or not info.channels
            or not _sndfile.usable()
        ):
            return None
        n = max(1, min(usable_cpus(), _sndfile.MAX_PROCS))
        if setting.isdigit():
            n = max(1, min(n, int(setting)))
        try:
            pool = _Pool(n)
        except (OSError, ValueError):
            return None
        return self._sndfile_gen(pool, info.sample_rate, info.channels, _duration_ms(info))

    def _sndfile_gen(self, pool: _Pool, rate: int, channels: int, duration_ms: int) -> Iterator[tuple[str, Any]]:
        import math

        from . import _sndfile

        src = self.source
        try:
            first = 0
            if self.allow_seek and self.start >= ms_to_samples(SEEK_MIN_MS):
                # libsndfile seeks to a sample: start a second early, on a sample whose 16 kHz position is whole
                step = rate // math.gcd(rate, SAMPLE_RATE)
                first = max(0, (self.start - SAMPLE_RATE) * rate // SAMPLE_RATE)
                first -= first % step
            size = rate * _sndfile.PIECE_SECONDS
            known = duration_ms * rate // 1000  # the header's length: the last piece reads to the end anyway
            starts = list(range(first, max(first + 1, known), size))
            w = pool.size
            queues: dict[int, queue.Queue[Any]] = {}

            def submit(k: int) -> None:
                if k < len(starts):
                    count = size if k + 1 < len(starts) else -1
                    job = {"mode": "sndfile", "path": src.path, "first": starts[k], "count": count,
                           "rate": rate, "channels": channels}
                    queues[k] = pool.submit(k % w, job)

            ahead = w + 1  # pieces in flight: the one being resampled, one per helper, one queued
            for k in range(min(len(starts), ahead)):
                submit(k)
            yield "start", first * SAMPLE_RATE // rate
            total = 0
            for k in range(len(starts)):
                for kind, item in self._job_items(pool, queues.pop(k)):
                    if kind == "end":
                        total += int(item["samples"])
                        break
                    yield kind, item
                submit(k + ahead)
            with src.open_av() as c:
                self._check_complete(c, _audio_stream(c, src.name), c.format.name, (first + total) / rate)
        finally:
            pool.close()

    def _job_items(self, pool: _Pool, q: queue.Queue[Any]) -> Iterator[tuple[str, Any]]:
        while True:
            kind, item = pool.get(q)
            if kind == "warn":
                self.source.warn(str(item).replace(str(self.source.path), self.source.name))
                continue
            if kind == "error":
                if item.get("type") == "BadInput":
                    raise BadInput(self.source.name, item["reason"], item.get("hint"))
                raise _HelperFailed(f"{item.get('type')}: {item.get('reason')}")
            yield kind, item
            if kind == "end":
                return

    # -- resampling in the caller's thread ---------------------------------------------------------

    @staticmethod
    def _resampler(rate: int, layout: str) -> Any:
        import av

        if rate == SAMPLE_RATE and layout == "mono":
            return None
        return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE, options={"rematrix_maxval": "1.0"})

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(position, samples) pairs, positions contiguous from the first sample kept (>= start)."""
        items = self._sndfile_items()
        if items is None:
            items = self._process_items()
        if items is None:
            items = self._sequential_items()
        emitted = False
        try:
            for pos, data in self._resample(items):
                emitted = True
                yield pos, data
            return
        except _Restart:
            self.source.warn(f"{self.source.name}: seeking overshot the start; decoded from the beginning")
        except _HelperFailed as e:
            if emitted:
                raise RuntimeError(f"{self.source.name}: an audio decoding helper process failed ({e})") from None
        again = _Decoder(self.source, self.start, self.end, allow_seek=False, allow_procs=False)
        yield from again.chunks()
        self.errors += again.errors

    def _resample(self, items: Iterator[tuple[str, Any]]) -> Iterator[tuple[int, np.ndarray]]:
        import av
        import numpy as np

        pos: int | None = None
        resampler: Any = None
        current: tuple[int, str] | None = None
        in_pts = 0
        try:
            for kind, item in items:
                if kind == "start":
                    pos = int(item)
                    continue
                chunk: _Chunk = item
                assert pos is not None
                k = (chunk.rate, chunk.layout)
                outs: list[Any] = []
                if k != current:
                    if resampler is not None:  # parameters changed mid-stream: flush, start a new one
                        outs.extend(resampler.resample(None))
                    resampler = self._resampler(*k)
                    current = k
                    in_pts = 0
                pieces: list[np.ndarray] = [np.frombuffer(o.planes[0], dtype=np.float32, count=o.samples) for o in outs]
                if resampler is None:
                    pieces.append(chunk.data)
                else:
                    # packed (interleaved): one plane, whatever the channel count (planar 7.1: see _to_float)
                    packed = chunk.data.reshape(1, -1) if chunk.data.ndim == 1 else chunk.data.T.reshape(1, -1)
                    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(packed), format="flt", layout=chunk.layout)
                    frame.sample_rate = chunk.rate
                    frame.pts = in_pts
                    in_pts += chunk.data.shape[-1]
                    pieces.extend(
                        np.frombuffer(o.planes[0], dtype=np.float32, count=o.samples) for o in resampler.resample(frame)
                    )
                for data in pieces:
                    pos = yield from self._emit(data, pos)
                if self.end is not None and pos >= self.end:
                    return
            if resampler is not None and pos is not None:
                for out in resampler.resample(None):
                    data = np.frombuffer(out.planes[0], dtype=np.float32, count=out.samples)
                    pos = yield from self._emit(data, pos)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    def _emit(self, data: np.ndarray, pos: int) -> Generator[tuple[int, np.ndarray], None, int]:
        """Yield the kept part of `data` (starting at `pos`); returns the next position."""
        n = int(data.shape[0])
        lo = max(0, self.start - pos)
        hi = n if self.end is None else min(n, self.end - pos)
        if hi > lo:
            yield pos + lo, data[lo:hi]
        return pos + n


def _duration_ms(info: MediaInfo) -> int:
    """The audio stream's length, else the container's, else 0 (unknown)."""
    return info.audio_duration_ms or info.duration_ms or 0


def _sanitize(block: np.ndarray, source: Source) -> int:
    """In place: NaN/inf -> 0, clip to [-1, 1]; returns how many samples were non-finite."""
    import numpy as np

    bad = 0
    finite = np.isfinite(block)
    if not finite.all():
        bad = int(block.size - np.count_nonzero(finite))
        block[~finite] = 0.0
        source.nonfinite_samples += bad
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

    if block_samples <= 0:
        raise ValueError("block_samples must be positive")
    from .faults import decode_guard

    source.require_audio()
    start, end = check_range(start_ms, end_ms)
    with decode_guard(source.name):
        yield from _blocks(source, start, end, block_samples, start_ms)


def _blocks(
    source: Source, start: int, end: int | None, block_samples: int, start_ms: int | None
) -> Iterator[AudioBlock]:
    import numpy as np

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
