"""A 3-hour input streams through segmentation and transcription in flat memory, and the last
segment's timestamps are exact (sample counts, no accumulated drift).

The in-memory stream uses noise bursts as speech, which only the energy detector takes for speech:
it runs with vad="energy". The file on disk holds recorded speech and runs the default (Silero)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.core.tasks import transcribe as tx

from fake_engine import FakeEngine
from media_factory import recorded_speech

SR = 16000
HOURS = 3


@dataclass
class Block:
    offset: int
    samples: np.ndarray


def three_hours(bursts_s: list[float], burst_len: float = 2.0, block_s: int = 30) -> Iterator[Block]:
    rng = np.random.default_rng(0)
    noise = (10 ** (-70 / 20) * rng.standard_normal(block_s * SR)).astype(np.float32)
    speech = (0.3 * rng.standard_normal(int(burst_len * SR))).astype(np.float32)
    for offset in range(0, HOURS * 3600 * SR, block_s * SR):
        block = noise.copy()
        for b in bursts_s:
            a = int(b * SR) - offset
            if -speech.size < a < block.size:
                lo, hi = max(a, 0), min(a + speech.size, block.size)
                block[lo:hi] = speech[lo - a:hi - a]
        yield Block(offset, block)


@pytest.mark.slow
def test_three_hours_flat_memory_exact_timestamps(monkeypatch: pytest.MonkeyPatch) -> None:
    bursts = [10.0, 5400.0, 3 * 3600 - 60.0]  # 0:00:10, 1:30:00, 2:59:00
    monkeypatch.setattr("gemmapipe.core.media.audio.iter_audio", lambda source, **kw: three_hours(bursts))
    engine = FakeEngine(replies=["words"])

    class Src:
        name = "long.wav"

    tracemalloc.start()
    result = tx.transcribe(Src(), lambda: engine, tx.TranscribeOptions(vad="energy"),  # type: ignore[arg-type]
                           templated=lambda e: True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [round(s.start_ms / 1000) for s in result.segments] == [10, 5400, 10740]
    last = result.segments[-1]
    # within the VAD's 200 ms pad plus one 40 ms window of the true edges, at the end of 3 hours
    assert abs(last.start_ms - 10_740_000) <= 240 and abs(last.end_ms - 10_742_000) <= 240
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MiB"  # a 3-hour float32 signal would be 690 MB
    # silence never reached the model: one request per burst, plus the spoken-language question (no language given)
    assert len(engine.requests) == 4 and engine.requests[0][1].grammar is not None


def test_segment_timestamps_come_from_sample_counts() -> None:
    class Clip:
        start, end = 10_742_000 * 16, 10_744_000 * 16 + 7  # ms * 16 = samples

        samples = np.ones(32_007, dtype=np.float32)

    seg = next(tx.iter_segments(iter([Clip()]), lambda: FakeEngine(replies=["x"]), tx.TranscribeOptions(),
                                templated=lambda e: True))
    assert (seg.start_ms, seg.end_ms) == (10_742_000, 10_744_000)


@pytest.mark.slow
def test_three_hour_file_streams_from_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same through the real media layer: a 3-hour 8 kHz WAV written in blocks, decoded and
    resampled by PyAV, never held whole (a float32 copy at 16 kHz would be 690 MB)."""
    import soundfile as sf

    from gemmapipe.core.media.source import open_input

    sr = 8000
    bursts = [10.0, 5400.0, 3 * 3600 - 60.0]
    speech = recorded_speech(4 * sr)  # 2 s at 8 kHz (pairs averaged: a crude low-pass)
    speech = (speech[0::2] + speech[1::2]) / 2
    path = tmp_path / "three-hours.wav"
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:
        block = np.zeros(600 * sr, dtype=np.float32)
        for start in range(0, HOURS * 3600, 600):
            block[:] = 0.0
            for b in bursts:
                if start <= b < start + 600:
                    i = int((b - start) * sr)
                    block[i:i + speech.size] = speech
            f.write(block)
    monkeypatch.setenv("GEMMAPIPE_AUDIO_PROCS", "0")  # measure this process alone
    engine = FakeEngine(replies=["words"])
    tracemalloc.start()
    with open_input(str(path)) as src:
        result = tx.transcribe(src, lambda: engine, tx.TranscribeOptions(), templated=lambda e: True)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [round(s.start_ms / 1000) for s in result.segments] == [10, 5400, 10740]
    last = result.segments[-1]
    assert abs(last.start_ms - 10_740_000) <= 40 and abs(last.end_ms - 10_742_000) <= 40
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.1f} MiB"
