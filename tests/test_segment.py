"""Voice activity segmentation (core/tasks/segment.py): the energy detector's stream mechanics on
synthetic audio with a known truth.

These signals (tones, noise bursts, harmonic "syllables") stand in for speech only for a detector
that listens to levels: the trained default (Silero) rightly hears no speech in them. So they run
with vad="energy"; the same properties of the default detector (grid, cuts, block-split invariance,
flat memory, timestamps) are checked on real recorded speech in tests/test_vad.py."""

from __future__ import annotations

import itertools
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from gemmapipe.core.tasks.segment import FRAME, SAMPLE_RATE, SpeechClip, SpeechSegmenter, segment_speech

SR = SAMPLE_RATE
PAD = 120 * SR // 1000  # the default pad_ms, in samples (3 frames)
TOL = FRAME  # one 40 ms frame


@dataclass(frozen=True)
class Block:
    offset: int
    samples: np.ndarray


def energy_speech(blocks: Iterable[Block], **kw: float) -> Iterator[SpeechClip]:
    return segment_speech(blocks, vad="energy", **kw)


def blocks_of(x: np.ndarray, sizes: int | list[int], offset: int = 0) -> Iterator[Block]:
    cycle = itertools.cycle([sizes] if isinstance(sizes, int) else sizes)
    i = 0
    while i < x.size:
        n = next(cycle)
        yield Block(offset + i, x[i : i + n])
        i += n


def noise(seconds: float, db: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SR)) * 10 ** (db / 20)).astype(np.float32)


def tone(n: int, db: float = -20.0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(n) / SR
    return (10 ** (db / 20) * np.sqrt(2) * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speechlike(seconds: float, seed: int = 1) -> np.ndarray:
    """Syllables (harmonic voice under a 4-5 Hz envelope) with short gaps, ~-22 dBFS."""
    rng = np.random.default_rng(seed)
    out = []
    total = 0
    while total < seconds * SR:
        n = int(rng.uniform(0.12, 0.3) * SR)
        t = np.arange(n) / SR
        f0 = rng.uniform(100, 220)
        voice = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 7))
        syl = 0.08 * np.sin(np.pi * np.arange(n) / n) ** 1.5 * voice
        gap = np.zeros(int(rng.uniform(0.02, 0.15) * SR))
        out += [syl, gap]
        total += n + gap.size
    return np.concatenate(out)[: int(seconds * SR)].astype(np.float32)


def check_clips(clips: list[SpeechClip], x: np.ndarray | None = None, offset: int = 0) -> None:
    """Invariants every result must keep: ordered, no overlap, within max length, samples match."""
    prev_end = -1
    for c in clips:
        assert c.start < c.end
        assert c.start >= prev_end, "clips overlap"
        assert c.end - c.start <= 30 * SR
        assert c.samples.dtype == np.float32 and c.samples.shape == (c.end - c.start,)
        if x is not None:
            np.testing.assert_array_equal(c.samples, x[c.start - offset : c.end - offset])
        prev_end = c.end


def run(x: np.ndarray, sizes: int | list[int] = 16000, offset: int = 0, **kw: float) -> list[SpeechClip]:
    clips = list(energy_speech(blocks_of(x, sizes, offset), **kw))
    check_clips(clips, x, offset)
    return clips


# -- silence ---------------------------------------------------------------------------------------


def test_digital_silence_gives_no_clips() -> None:
    assert run(np.zeros(60 * SR, dtype=np.float32)) == []


@pytest.mark.parametrize("db", [-90.0, -70.0, -50.0, -35.0])
def test_steady_noise_gives_no_clips(db: float) -> None:
    assert run(noise(60, db)) == []


def test_noise_with_hum_gives_no_clips() -> None:
    x = noise(40, -55) + tone(40 * SR, db=-50, freq=50)
    assert run(x) == []


def test_empty_stream() -> None:
    assert list(energy_speech([])) == []
    assert list(energy_speech([Block(0, np.zeros(0, dtype=np.float32))])) == []


# -- placement -------------------------------------------------------------------------------------

# (start s, end s, kind): not on the 40 ms grid; gaps longer than min_silence (500 ms)
BURSTS = [
    (1.013, 1.517, "tone"),
    (3.3217, 7.0049, "noise"),
    (8.2, 8.46, "tone"),  # 260 ms: a short word
    (12.75, 20.0011, "speech"),
    (21.1, 23.333, "noise"),
    (40.0007, 44.5, "tone"),
]


def placed(floor_db: float = -65.0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    x = noise(50, floor_db, seed=3)
    truth = []
    rng = np.random.default_rng(4)
    for a, b, kind in BURSTS:
        i, j = round(a * SR), round(b * SR)
        if kind == "tone":
            x[i:j] += tone(j - i, db=-24, freq=330)
        elif kind == "noise":
            x[i:j] += (rng.standard_normal(j - i) * 10 ** (-30 / 20)).astype(np.float32)
        else:
            s = speechlike((j - i) / SR + 1)[: j - i]
            s[-1] = 0.08  # make sure the truth ends exactly at j: a last non-zero sample
            s[0] = 0.08
            x[i:j] += s
        truth.append((i, j))
    return x, truth


@pytest.mark.parametrize("floor_db", [-80.0, -65.0, -45.0])
def test_bursts_found_within_a_frame_plus_pad(floor_db: float) -> None:
    x, truth = placed(floor_db)
    clips = run(x)
    assert len(clips) == len(truth), [(c.start / SR, c.end / SR) for c in clips]
    for c, (a, b) in zip(clips, truth, strict=True):
        # documented: clip = [first speech frame - pad, last speech frame end + pad], pad = 120 ms
        assert abs(c.start + PAD - a) <= TOL, (c.start, a)
        assert abs(c.end - PAD - b) <= TOL, (c.end, b)
        assert c.start % FRAME == 0 and c.end % FRAME == 0
        assert not c.cut


def test_speech_at_file_start_and_end_is_clamped_to_the_file() -> None:
    x = np.concatenate([speechlike(3.0), noise(3, -70), speechlike(2.5, seed=9)])
    x[-1] = 0.05
    clips = run(x)
    assert len(clips) == 2
    assert clips[0].start == 0
    assert clips[1].end == x.size  # the stream ends mid-frame: the clip ends with it
    assert abs(clips[1].start + PAD - 6 * SR) <= TOL


def test_stream_starting_at_an_offset_off_the_grid() -> None:
    x, truth = placed()
    off = 123_457  # not a multiple of 640
    clips = run(x, 7919, offset=off)
    assert len(clips) == len(truth)
    for c, (a, b) in zip(clips, truth, strict=True):
        assert abs(c.start + PAD - (a + off)) <= TOL
        assert abs(c.end - PAD - (b + off)) <= TOL
        assert c.start % FRAME == 0 and c.end % FRAME == 0  # the grid is absolute, not per block


def test_short_click_is_not_speech() -> None:
    x = noise(10, -65)
    x[5 * SR : 5 * SR + 320] += 0.5  # 20 ms click
    assert run(x) == []


def test_pauses_shorter_than_min_silence_do_not_split() -> None:
    x = noise(10, -65)
    x[1 * SR : 2 * SR] += tone(SR)
    x[2 * SR + 4800 : 3 * SR] += tone(SR - 4800)  # 300 ms pause
    assert len(run(x)) == 1
    assert len(run(x, min_silence_ms=200)) == 2


def test_neighbours_never_overlap_even_with_big_pads() -> None:
    x = noise(20, -65)
    for k in range(6):  # bursts 1 s long, 600 ms apart
        a = int((1 + k * 1.6) * SR)
        x[a : a + SR] += tone(SR)
    clips = run(x, pad_ms=2000)
    assert len(clips) == 6
    for a, b in itertools.pairwise(clips):
        assert a.end <= b.start


# -- length limit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["noise", "speech"])
def test_70s_continuous_burst_is_cut_into_clips_of_at_most_30s(kind: str) -> None:
    x = noise(90, -65)
    a, b = 10 * SR, 80 * SR
    if kind == "noise":
        x[a:b] += noise(70, -25, seed=8)
    else:
        x[a:b] += speechlike(70)
        x[b - 1] = x[a] = 0.08
    clips = run(x)
    assert len(clips) >= 3
    assert all(c.end - c.start <= 30 * SR for c in clips)
    assert clips[0].start <= a and clips[-1].end >= b  # covers it all
    assert abs(clips[0].start + PAD - a) <= TOL and abs(clips[-1].end - PAD - b) <= TOL
    for c, d in itertools.pairwise(clips):
        assert c.cut and c.end == d.start  # contiguous: nothing lost at a cut
        assert c.end - c.start >= 27 * SR  # cut in the last 3 s before the limit
    assert not clips[-1].cut


def test_cut_lands_on_the_quietest_frame_before_the_limit() -> None:
    x = noise(40, -65)
    x[1 * SR : 39 * SR] += noise(38, -25, seed=5)
    dip = 28 * SR + 3 * FRAME  # one frame much quieter, 1.8 s before the 30 s limit (clip starts 0.8 s)
    x[dip : dip + FRAME] *= 0.1
    clips = run(x)
    assert clips[0].cut and clips[0].end in (dip, dip + FRAME)


@pytest.mark.parametrize("max_clip_s", [5.0, 12.5])
def test_smaller_max_clip(max_clip_s: float) -> None:
    x = speechlike(60)
    clips = run(x, max_clip_s=max_clip_s)
    limit = int(max_clip_s * SR)
    assert all(c.end - c.start <= limit for c in clips)
    assert clips[0].start == 0 and clips[-1].end >= x.size - FRAME


# -- streaming -------------------------------------------------------------------------------------


def test_odd_block_sizes_give_the_same_clips_as_one_block() -> None:
    x, _ = placed()
    x = np.concatenate([x, speechlike(40, seed=2), noise(3, -65)])
    whole = run(x, x.size)
    for sizes in ([1, 7, 640, 641, 999, 16001, 123457], [3333], [639], [100_000, 17]):
        parts = run(x, sizes)
        assert [(c.start, c.end, c.cut) for c in parts] == [(c.start, c.end, c.cut) for c in whole]
        for p, w in zip(parts, whole, strict=True):
            np.testing.assert_array_equal(p.samples, w.samples)


def test_clips_come_out_while_the_stream_runs() -> None:
    x, truth = placed()
    seg = SpeechSegmenter()
    got_at = []
    for blk in blocks_of(x, 1600):
        for c in seg.feed(blk):
            got_at.append((c.end, blk.offset + blk.samples.size))
    assert seg.finish() == []
    assert len(got_at) == len(truth)
    for end, seen in got_at:  # out within min_silence + lookahead (+ a block) of its end
        assert seen - end <= int(1.6 * SR)


def test_gap_between_blocks_is_silence_and_overlap_is_an_error() -> None:
    tone_block = tone(2 * SR)
    blocks = [Block(0, noise(1, -65)), Block(SR, tone_block), Block(10 * SR, noise(1, -65))]
    clips = list(energy_speech(blocks))
    assert (
        len(clips) == 1 and abs(clips[0].start + PAD - SR) <= TOL and abs(clips[0].end - PAD - 3 * SR) <= TOL
    )
    with pytest.raises(ValueError, match="overlaps"):
        list(energy_speech([Block(0, noise(1, -65)), Block(SR // 2, noise(1, -65))]))


def test_caller_may_reuse_its_buffer() -> None:
    x, truth = placed()
    buf = np.empty(4000, dtype=np.float32)

    def reused() -> Iterator[Block]:
        for i in range(0, x.size, buf.size):
            n = min(buf.size, x.size - i)
            buf[:n] = x[i : i + n]
            yield Block(i, buf[:n])

    clips = list(energy_speech(reused()))
    check_clips(clips, x)
    assert len(clips) == len(truth)


def test_float64_and_int_offsets_accepted() -> None:
    x, truth = placed()
    clips = list(
        energy_speech(Block(int(i), x[i : i + 8000].astype(np.float64)) for i in range(0, x.size, 8000))
    )
    assert len(clips) == len(truth)


def test_nan_samples_do_not_crash() -> None:
    x, truth = placed()
    x[int(30.5 * SR) : 31 * SR] = np.nan
    assert len(list(energy_speech(blocks_of(x, 16000)))) == len(truth)


# -- memory ----------------------------------------------------------------------------------------


class LongStream:
    """Speech-like runs (1-8 utterances of 1-6 s with short gaps) and pauses of 0.6-3 s over a noise
    bed, yielded block by block from a small pool (about 3 MB, built before anything is measured)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(6)
        self.pool = [speechlike(float(d), seed=k) for k, d in enumerate(rng.uniform(1, 6, 8))]
        bed = noise(1, -62, seed=7)
        self.bed = np.concatenate([bed, bed])  # any block of <= 1 s is a slice of it

    def blocks(self, seconds: int, block: int = 16000) -> Iterator[Block]:
        rng = np.random.default_rng(6)
        pos, total = 0, seconds * SR
        while pos < total:
            pieces: list[np.ndarray | int] = []
            for _ in range(int(rng.integers(1, 9))):
                pieces += [self.pool[int(rng.integers(len(self.pool)))], int(rng.uniform(0.05, 0.3) * SR)]
            pieces[-1] = int(rng.uniform(0.6, 3) * SR)
            for piece in pieces:
                size = piece if isinstance(piece, int) else piece.size
                for i in range(0, size, block):
                    n = min(block, size - i, total - pos)
                    if n <= 0:
                        return
                    k = pos % SR
                    bed = self.bed[k : k + n]
                    yield Block(pos, bed if isinstance(piece, int) else piece[i : i + n] + bed)
                    pos += n


def _peak_and_count(stream: LongStream, seconds: int) -> tuple[int, int, float]:
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        n = 0
        longest = 0
        for clip in energy_speech(stream.blocks(seconds)):
            n += 1
            longest = max(longest, clip.end - clip.start)
        dt = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert longest <= 30 * SR
    return peak, n, dt


def test_one_hour_stream_runs_in_flat_memory() -> None:
    stream = LongStream()
    peak_short, n_short, _ = _peak_and_count(stream, 300)
    peak_long, n_long, dt = _peak_and_count(stream, 3600)
    print(
        f"5 min: peak {peak_short / 2**20:.1f} MiB, {n_short} clips; "
        f"1 h: peak {peak_long / 2**20:.1f} MiB, {n_long} clips, {dt:.1f} s under tracemalloc"
    )
    assert n_long > 8 * n_short > 0
    # the open clip (<= 30 s of float32 = 1.9 MB), its copy as it is emitted, ~1.6 s of lookback
    assert peak_long < 8 * 2**20, peak_long
    assert peak_long < peak_short * 1.25 + 2**20, (peak_short, peak_long)


@pytest.mark.parametrize("db", [-58.0, -50.0, -42.0])
def test_room_tone_after_digital_silence_is_background(db: float) -> None:
    x = np.concatenate([np.zeros(5 * SR, dtype=np.float32), noise(60, db)])
    assert run(x) == []
    x[30 * SR : 34 * SR] += speechlike(4)
    x[50 * SR : 52 * SR] += speechlike(2, seed=3)
    clips = run(x)
    assert len(clips) == 2
    for c, (a, b) in zip(clips, [(30 * SR, 34 * SR), (50 * SR, 52 * SR)], strict=True):
        assert abs(c.start + PAD - a) <= TOL and abs(c.end - PAD - b) <= TOL
