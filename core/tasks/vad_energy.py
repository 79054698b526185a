"""Voice activity segmentation: a stream of 16 kHz audio blocks in, speech clips of at most 30 s out.

Two detectors share the stream handling here: "silero" (the default, a trained network that tells
speech from music and noises: core/tasks/silero.py) and "energy" (this module's SpeechSegmenter,
described below: exact on speech over silence or steady noise, but any sound is speech to it).

The model hears audio in 640-sample windows (40 ms, one token each) and understands clips of up to
~30 s, so the detector works on 40 ms frames laid on the same absolute 640-sample grid and cuts
clips on that grid: no token straddles a clip boundary and silence is never fed.

How a frame is judged (levels in dBFS, from the frame's mean power; defaults in brackets):

- noise floor = max(long floor, background level), recomputed once a second:
  - long floor: the `floor_percentile` [2nd] percentile of all frame energies over the last
    `floor_window_s` [120 s] plus a 1 s lookahead (a 0.5 dB histogram; frames under -80 dBFS count
    as -80). A steady sound is only absorbed once it fills 98% of the window, so a 70 s burst after
    a second or two of quiet stays speech;
  - background level: the `noise_percentile` [25th] percentile of the last `noise_window_s` [10 s]
    of frames judged outside speech: it follows a drifting background closely.
  - a quiet steady sound inside speech (`steady_s` [2 s] whose spread is under `steady_db` [3 dB],
    below `steady_max_db` [-40 dBFS]) is taken as a new background (room tone after digital silence,
    a fan switched on): it is learnt as background and the region ends where it began (or is
    dropped when it was nothing else). A louder steady sound (a tone, a noise burst) stays speech.
- voiced: energy >= floor + `threshold` [10 dB] and >= `min_db` [-60 dBFS]; loud-ish (hysteresis):
  >= floor + threshold - `hysteresis_db` [4 dB] and >= min_db - hysteresis_db; fricative cue:
  zero-crossing rate >= `zcr_min` [0.3] with energy >= floor + `fricative_db` [3 dB].
- a region starts at a voiced frame, reaching back over the loud-ish/fricative frames just before it
  (at most `max_extend_ms` [200 ms]), goes on over voiced and loud-ish frames (fricative frames carry
  it on for at most max_extend_ms, so a hiss cannot keep it open) and ends after `min_silence_ms`
  [500 ms] without any. Regions shorter than `min_speech_ms` [120 ms] are dropped (clicks).
- a clip is a region padded by `pad_ms` [120 ms] on both sides (the pad is capped at half of
  min_silence_ms, so padded neighbours never overlap, and never reaches into the previous clip).
  Frame quantisation puts a clip's edges within one frame (40 ms) of the sound's edges plus the pad.
- a clip never exceeds `max_clip_s` [30 s]: when speech runs on, the clip is cut at the quietest
  frame of the last `cut_search_s` [3 s] before the limit, with no pad there; the next clip starts
  at that cut (`cut=True` on the first of the two: stitch their text).

Memory: the histogram, a few seconds of frame features, and the samples of the open clip plus a
lookback of ~1.6 s (lookahead + extension + pad). Nothing depends on how the stream is split into
blocks: the same samples give the same clips. Times are sample counts from the start of the file.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..audio_format import SAMPLE_RATE, WINDOW

if TYPE_CHECKING:
    import numpy as np

FRAME = WINDOW  # samples in one model audio window: 40 ms, one token
FRAMES_PER_SECOND = SAMPLE_RATE // FRAME  # 25

_DB_LOW = -80.0  # floor histogram range, dBFS; frames outside are clamped into it
_DB_HIGH = 10.0
_BINS_PER_DB = 2
_N_BINS = int((_DB_HIGH - _DB_LOW) * _BINS_PER_DB) + 1
_FLOOR_EVERY = FRAMES_PER_SECOND  # recompute the floor once a second of frames
_CHUNK_FRAMES = 1500  # features are computed at most 60 s at a time (bounded temporaries)


class AudioBlockLike(Protocol):
    """What the segmenter needs of an audio block (core.media.audio.AudioBlock has these)."""

    @property
    def offset(self) -> int:  # absolute sample index of samples[0] from the start of the file
        ...

    @property
    def samples(self) -> np.ndarray:  # float32 mono at 16 kHz
        ...


@dataclass(eq=False)
class SpeechClip:
    """Speech between samples [start, end) of the file (absolute, on the 640 grid except at the file's
    ends). `cut` is True when the clip ends mid-speech at the length limit: the next clip continues it."""

    start: int
    end: int
    samples: np.ndarray
    cut: bool = False

    @property
    def start_ms(self) -> int:
        return self.start * 1000 // SAMPLE_RATE

    @property
    def end_ms(self) -> int:
        return self.end * 1000 // SAMPLE_RATE

    @property
    def tokens(self) -> int:
        """Audio tokens the model will spend on this clip (the last window is zero-padded)."""
        return -(-(self.end - self.start) // FRAME)


def _frames_up(ms: float) -> int:
    return max(1, math.ceil(ms / 40 - 1e-9))


class SpeechSegmenter:
    """Push-style VAD: `feed(block)` and `finish()` each return the clips completed so far.

    See the module docstring for the rules; `segment_speech` is the pull-style wrapper.
    """

    def __init__(
        self,
        *,
        max_clip_s: float = 30.0,
        min_speech_ms: float = 120.0,
        min_silence_ms: float = 500.0,
        pad_ms: float = 120.0,
        threshold: float = 10.0,
        min_db: float = -60.0,
        hysteresis_db: float = 4.0,
        zcr_min: float = 0.3,
        fricative_db: float = 3.0,
        floor_window_s: float = 120.0,
        floor_percentile: float = 2.0,
        noise_window_s: float = 10.0,
        noise_percentile: float = 25.0,
        steady_s: float = 2.0,
        steady_db: float = 3.0,
        steady_max_db: float = -40.0,
        lookahead_ms: float = 1000.0,
        max_extend_ms: float = 200.0,
        cut_search_s: float = 3.0,
    ) -> None:
        if max_clip_s * FRAMES_PER_SECOND < 2:
            raise ValueError(f"max_clip_s must be at least 0.08 s, got {max_clip_s}")
        if not 0 < floor_percentile < 100:
            raise ValueError(f"floor_percentile must be in (0, 100), got {floor_percentile}")
        self.max_frames = int(max_clip_s * FRAMES_PER_SECOND + 1e-9)
        self.min_speech = _frames_up(min_speech_ms)
        self.min_silence = _frames_up(min_silence_ms)
        self.pad = min(max(0, round(pad_ms / 40)), self.min_silence // 2)
        self.threshold = float(threshold)
        self.min_db = float(min_db)
        self.hysteresis = float(hysteresis_db)
        self.zcr_min = float(zcr_min)
        self.fricative_db = float(fricative_db)
        self.window = max(FRAMES_PER_SECOND, round(floor_window_s * FRAMES_PER_SECOND))
        self.percentile = float(floor_percentile)
        self.noise_percentile = float(noise_percentile)
        self.steady_frames = max(5, round(steady_s * FRAMES_PER_SECOND))
        self.steady_db = float(steady_db)
        self.steady_max_db = float(steady_max_db)
        self.lookahead = max(0, round(lookahead_ms / 40))
        self.max_extend = max(0, round(max_extend_ms / 40))
        self.cut_search = max(1, min(round(cut_search_s * FRAMES_PER_SECOND), self.max_frames // 2))

        # stream position
        self.first: int | None = None  # absolute sample of the first block
        self.pos = 0  # next expected absolute sample
        self.carry: np.ndarray | None = None  # samples of the partial frame at the end (from a grid line)
        self.next_frame = 0  # absolute index of the frame the carry belongs to
        self.finished = False
        # samples kept for clips: (absolute start, array, owned) in order; owned = our own copy
        self.chunks: deque[tuple[int, np.ndarray, bool]] = deque()
        # noise floor
        self.counts = [0] * _N_BINS
        self.total = 0
        self.ring: deque[int] = deque()
        self.pushed = 0
        self.floor = _DB_LOW
        self.floor_all = _DB_LOW
        # energies of the latest frames judged outside speech: the current level of the background
        self.noise: deque[float] = deque(maxlen=max(1, round(noise_window_s * FRAMES_PER_SECOND)))
        self.steady: deque[float] = deque(maxlen=self.steady_frames)  # energies of the latest frames
        # frames waiting for the lookahead before they are judged: (index, energy dB, zcr)
        self.pending: deque[tuple[int, float, float]] = deque()
        self.recent: deque[tuple[int, float]] = deque(maxlen=self.cut_search)  # for cut placement
        # decision state
        self.in_speech = False
        self.region_start = 0
        self.last_active = 0
        self.fric_run = 0  # consecutive frames carried by the fricative cue alone
        self.last_voiced = 0
        self.region_cut = False  # a forced cut already happened in this region
        self.clip_start = 0  # frame index where the open clip starts (padded)
        self.prev_end = 0  # frame index where the last emitted clip ended
        self.weak_start: int | None = None  # first of the weak frames just before the current one
        self.out: list[SpeechClip] = []

    # -- input -------------------------------------------------------------------------------------

    def feed(self, block: AudioBlockLike) -> list[SpeechClip]:
        import numpy as np

        if self.finished:
            raise ValueError("feed() after finish()")
        samples = np.asarray(block.samples)
        if samples.ndim != 1:
            raise ValueError(f"audio block must be mono (1-D), got shape {samples.shape}")
        if samples.dtype != np.float32:
            samples = samples.astype(np.float32)
        offset = int(block.offset)
        if self.first is None:
            if offset < 0:
                raise ValueError(f"negative block offset {offset}")
            self.first = self.pos = offset
            self.next_frame = offset // FRAME
            self.carry = np.zeros(offset - self.next_frame * FRAME, dtype=np.float32)
            self.prev_end = self.next_frame
        elif offset < self.pos:
            raise ValueError(f"audio block at sample {offset} overlaps the previous one (ends at {self.pos})")
        elif offset > self.pos:  # a gap: hear it as digital silence
            gap = offset - self.pos
            while gap:
                n = min(gap, SAMPLE_RATE * 10)
                self._take(np.zeros(n, dtype=np.float32))
                gap -= n
        if samples.size:
            self._take(samples)
        return self._drain()

    def finish(self) -> list[SpeechClip]:
        """End of stream: judge what the lookahead held back and close the open clip."""
        import numpy as np

        if self.finished:
            return self._drain()
        self.finished = True
        if self.first is None:
            return []
        carry = self.carry if self.carry is not None else np.zeros(0, dtype=np.float32)
        real = self.pos - self.next_frame * FRAME  # samples of the partial frame that came from the stream
        if real > 0 and carry.size:
            frame = np.zeros(FRAME, dtype=np.float32)
            frame[: carry.size] = carry
            self._features(frame)
        self._flush()
        if self.in_speech:
            last = -(-self.pos // FRAME)  # frames the stream reaches into
            self._close_region(self.last_active + 1, limit=last)
        self.chunks.clear()
        return self._drain()

    def _flush(self) -> None:
        """End of stream: judge the frames still waiting (here: for the lookahead)."""
        while self.pending:
            self._decide(*self.pending.popleft())

    def _oldest(self) -> int:
        """The first frame not judged yet."""
        return self.pending[0][0] if self.pending else self.next_frame

    # -- frames ------------------------------------------------------------------------------------

    def _take(self, samples: np.ndarray) -> None:
        """Store samples for clips and turn whole frames into features, at most _CHUNK_FRAMES at a time."""
        import numpy as np

        self.chunks.append((self.pos, samples, False))
        self.pos += samples.size
        step = _CHUNK_FRAMES * FRAME
        for i in range(0, samples.size, step):
            carry = self.carry if self.carry is not None else np.zeros(0, dtype=np.float32)
            x = np.concatenate((carry, samples[i : i + step]))  # fresh, aligned: same sums however split
            n = x.size // FRAME
            if n:
                self._features(x[: n * FRAME])
            self.carry = x[n * FRAME :].copy()
        self._trim()

    def _features(self, x: np.ndarray) -> None:
        import numpy as np

        fr = x.reshape(-1, FRAME)
        power = np.einsum("ij,ij->i", fr, fr).astype(np.float64) / FRAME
        energy = np.nan_to_num(10.0 * np.log10(power + 1e-12), nan=-120.0)  # a NaN frame is silence
        centred = fr - fr.mean(axis=1, keepdims=True)
        sign = np.signbit(centred)
        zcr = np.count_nonzero(sign[:, 1:] != sign[:, :-1], axis=1) / (FRAME - 1)
        for e, z in zip(energy.tolist(), zcr.tolist(), strict=True):
            self._push(self.next_frame, e, z)
            self.next_frame += 1

    def _push(self, idx: int, e: float, z: float) -> None:
        b = int((min(max(e, _DB_LOW), _DB_HIGH) - _DB_LOW) * _BINS_PER_DB)
        self.ring.append(b)
        self.counts[b] += 1
        if len(self.ring) > self.window:
            self.counts[self.ring.popleft()] -= 1
        else:
            self.total += 1
        if self.pushed % _FLOOR_EVERY == 0:
            self._update_floor()
        self.pushed += 1
        self.pending.append((idx, e, z))
        if len(self.pending) > self.lookahead:
            self._decide(*self.pending.popleft())

    def _update_floor(self) -> None:
        need = max(1, math.ceil(self.total * self.percentile / 100))
        acc = 0
        for b, c in enumerate(self.counts):
            acc += c
            if acc >= need:
                self.floor_all = _DB_LOW + (b + 0.5) / _BINS_PER_DB
                break
        self._combine_floors()

    def _combine_floors(self) -> None:
        floor = self.floor_all
        if self.noise:
            ranked = sorted(self.noise)
            floor = max(floor, ranked[min(len(ranked) - 1, int(len(ranked) * self.noise_percentile / 100))])
        self.floor = floor

    # -- decisions ---------------------------------------------------------------------------------

    def _decide(self, n: int, e: float, z: float) -> None:
        floor = self.floor
        voiced = e >= floor + self.threshold and e >= self.min_db
        gate = e >= self.min_db - self.hysteresis
        loud = voiced or (gate and e >= floor + self.threshold - self.hysteresis)
        fricative = not loud and gate and z >= self.zcr_min and e >= floor + self.fricative_db
        self.recent.append((n, e))
        self.steady.append(e)
        if not self.in_speech:
            if voiced:
                start = n if self.weak_start is None else max(self.weak_start, n - self.max_extend)
                self.in_speech = True
                self.region_start = start
                self.last_active = self.last_voiced = n
                self.fric_run = 0
                self.region_cut = False
                self.clip_start = max(start - self.pad, self.prev_end)
                self.weak_start = None
            elif loud or fricative:
                if self.weak_start is None:
                    self.weak_start = n
            else:
                self.weak_start = None
            self.noise.append(min(max(e, _DB_LOW), _DB_HIGH))
        else:
            if voiced:
                self.last_voiced = n
            if loud:
                self.last_active = n
                self.fric_run = 0
            elif fricative:  # a hiss carries speech on only as long as a fricative lasts
                self.fric_run += 1
                if self.fric_run <= self.max_extend:
                    self.last_active = n
            if n - self.last_active >= self.min_silence:
                self._close_region(self.last_active + 1, limit=n + 1)
                return
            if n % _FLOOR_EVERY == 0 and self._steady_background(n):
                return
            if n + 1 - self.clip_start >= self.max_frames:
                if n > self.last_active:  # in a short pause right at the limit: end here
                    self._close_region(self.last_active + 1, limit=n + 1)
                else:
                    self._cut(n)

    def _steady_background(self, n: int) -> bool:
        """In speech, the last `steady_s` were a quiet sound of constant level (p10-p90 and max-median
        both <= steady_db, median < steady_max_db): not speech but a new background (room tone after
        digital silence, a fan). Learn it as the noise floor and end the region where it began."""
        if len(self.steady) < self.steady_frames:
            return False
        ranked = sorted(self.steady)
        k, median = len(ranked) // 10, ranked[len(ranked) // 2]
        if median >= self.steady_max_db or ranked[-1 - k] - ranked[k] > self.steady_db:
            return False
        if ranked[-1] - median > self.steady_db:  # something stands out: maybe speech resuming
            return False
        first = n - len(ranked) + 1  # where the steady sound began (at the latest)
        end = min(first, self.last_voiced + 1 + self.max_extend)  # speech ended before it
        self.noise.extend(min(max(v, _DB_LOW), _DB_HIGH) for v in self.steady)
        self.steady.clear()
        self._combine_floors()
        if end <= self.clip_start or (first <= self.region_start and not self.region_cut):
            self.in_speech = False  # the whole region was that background: nothing to emit
            self.weak_start = None
        else:
            self._close_region(end, limit=n + 1)
        return True

    def _close_region(self, region_end: int, *, limit: int) -> None:
        self.in_speech = False
        self.weak_start = None
        if not self.region_cut and region_end - self.region_start < self.min_speech:
            return
        end = min(region_end + self.pad, self.clip_start + self.max_frames, limit)
        self._emit(self.clip_start, end, cut=False)

    def _cut(self, n: int) -> None:
        lo = max(self.clip_start + 1, n + 1 - self.cut_search)
        best, best_e = n, math.inf
        for idx, e in self.recent:
            if idx >= lo and e <= best_e:  # quietest; the latest of equals (longer clip)
                best, best_e = idx, e
        self._emit(self.clip_start, best, cut=True)
        self.clip_start = best
        self.region_cut = True

    def _emit(self, start_frame: int, end_frame: int, *, cut: bool) -> None:
        import numpy as np

        assert self.first is not None
        start = max(start_frame * FRAME, self.first)
        end = min(end_frame * FRAME, self.pos)
        self.prev_end = end_frame
        if end <= start:
            return
        parts = []
        for c_start, arr, _owned in self.chunks:
            c_end = c_start + arr.size
            if c_end <= start or c_start >= end:
                continue
            parts.append(arr[max(start, c_start) - c_start : min(end, c_end) - c_start])
        samples = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        if samples.size != end - start:  # a bug, not bad input: the lookback fell short
            raise AssertionError(f"segmenter lost samples for clip [{start}, {end})")
        self.out.append(SpeechClip(start, end, samples, cut))

    # -- memory ------------------------------------------------------------------------------------

    def _trim(self) -> None:
        """Drop samples no clip can need; keep our own copy of what remains of the caller's arrays."""
        keep = max(self._oldest() - self.max_extend - self.pad, self.prev_end)
        if self.in_speech:
            keep = min(keep, self.clip_start)
        keep_sample = keep * FRAME
        chunks = self.chunks
        while chunks and chunks[0][0] + chunks[0][1].size <= keep_sample:
            chunks.popleft()
        # The caller's arrays are the newest chunks: copy the part we keep, once. Our own copies are
        # only ever dropped whole, so memory stays within the kept span plus one block.
        i = len(chunks) - 1
        while i >= 0 and not chunks[i][2]:
            c_start, arr, _owned = chunks[i]
            skip = max(0, keep_sample - c_start)
            chunks[i] = (c_start + skip, arr[skip:].copy(), True)
            i -= 1

    def _drain(self) -> list[SpeechClip]:
        out, self.out = self.out, []
        return out
