"""The default voice-activity detector (Silero, core/tasks/silero.py) on recorded sounds.

tests/data/vad_track: 111 s of recorded speech, music, sound effects and noise with the speech
marked (README there). The acceptance targets: at most 5% of the non-speech time fed to the model,
no clip without speech, at least 98% of the speech covered. The stream properties the energy
detector's tests check on synthetic audio (tests/test_segment.py) are checked here on real speech.
"""

from __future__ import annotations

import itertools
import json
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.tasks.segment import FRAME, SAMPLE_RATE, SpeechClip, segment_speech
from gemmapipe.core.tasks.transcribe import trim_quiet_edges

from media_factory import VAD_TRACK, recorded_speech

SR = SAMPLE_RATE


@dataclass(frozen=True)
class Block:
    offset: int
    samples: np.ndarray


@pytest.fixture(scope="module")
def track() -> tuple[np.ndarray, list[tuple[int, int]]]:
    import soundfile as sf

    x, sr = sf.read(VAD_TRACK / "track.flac", dtype="float32")
    assert sr == SR
    truth = json.loads((VAD_TRACK / "truth.json").read_text())
    return x, [(a, b) for a, b in truth["speech"]]


def blocks_of(x: np.ndarray, sizes: int | list[int], offset: int = 0) -> Iterator[Block]:
    cycle = itertools.cycle([sizes] if isinstance(sizes, int) else sizes)
    i = 0
    while i < x.size:
        n = next(cycle)
        yield Block(offset + i, x[i : i + n])
        i += n


def clips_of(x: np.ndarray, sizes: int | list[int] = 16000, offset: int = 0, **kw: float) -> list[SpeechClip]:
    clips = list(segment_speech(blocks_of(x, sizes, offset), **kw))
    prev = -1
    for c in clips:  # ordered, apart, within the limit, the file's own samples
        assert prev <= c.start < c.end and c.end - c.start <= 30 * SR
        np.testing.assert_array_equal(c.samples, x[c.start - offset : c.end - offset])
        prev = c.end
    return clips


def scores(x: np.ndarray, truth: list[tuple[int, int]], spans: list[tuple[int, int]]) -> dict[str, float]:
    speech = np.zeros(x.size, dtype=bool)
    for a, b in truth:
        speech[a:b] = True
    fed = np.zeros(x.size, dtype=bool)
    for a, b in spans:
        fed[a:b] = True
    return {
        "non_speech_fed": float((fed & ~speech).sum() / (~speech).sum()),
        "speech_covered": float((fed & speech).sum() / speech.sum()),
        "clips_without_speech": sum(1 for a, b in spans if not speech[a:b].any()),
        "tokens": sum(-(-(b - a) // FRAME) for a, b in spans),
    }


# -- acceptance ------------------------------------------------------------------------------------


def test_dry_run_feeds_speech_not_music_or_noises(track: tuple, capsys: pytest.CaptureFixture[str],
                                                  cli_env: Path) -> None:
    """Through the CLI as a user would see it before a model loads: the clips and tokens of --dry-run."""
    x, truth = track
    assert run(["transcribe", "--dry-run", str(VAD_TRACK / "track.flac")]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["vad"] == "silero"
    spans = [(a * SR // 1000, b * SR // 1000) for a, b in plan["clips"]]
    s = scores(x, truth, spans)
    assert s["non_speech_fed"] <= 0.05, s
    assert s["clips_without_speech"] == 0, s
    assert s["speech_covered"] >= 0.98, s
    # the tokens reported are those of the clips (ms rounding aside), well under the whole track's
    assert abs(plan["tokens"]["audio"] - s["tokens"]) <= len(spans)
    assert plan["tokens"]["audio"] < 0.45 * plan["audio_windows"]
    assert plan["tokens"]["total"] == plan["tokens"]["audio"]


def test_energy_detector_is_still_there_and_feeds_the_noises(track: tuple, capsys: pytest.CaptureFixture[str],
                                                             cli_env: Path) -> None:
    x, truth = track
    assert run(["diarize", "--dry-run", "--vad", "energy", str(VAD_TRACK / "track.flac")]) == 0
    plan = json.loads(capsys.readouterr().out)
    spans = [(a * SR // 1000, b * SR // 1000) for a, b in plan["clips"]]
    s = scores(x, truth, spans)
    assert plan["vad"] == "energy" and s["speech_covered"] >= 0.98
    assert s["clips_without_speech"] >= 5 and s["non_speech_fed"] > 0.5  # why it is not the default
    assert all(b - a <= 20_000 for a, b in plan["clips"])  # diarize's 20 s clips


def test_unknown_detector_is_a_usage_error(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["transcribe", "--vad", "webrtc", "--dry-run", str(VAD_TRACK / "track.flac")]) == 2
    assert capsys.readouterr().err.startswith("gemmapipe: error: --vad: unknown detector 'webrtc'")


def test_fed_clips_meet_the_targets_and_edges_are_close(track: tuple) -> None:
    x, truth = track
    fed = [trim_quiet_edges(c) for c in clips_of(x)]
    s = scores(x, truth, [(c.start, c.end) for c in fed])
    assert s["non_speech_fed"] <= 0.05 and s["clips_without_speech"] == 0 and s["speech_covered"] >= 0.98, s
    for a, b in truth:  # each turn's edges: within the pad (120 ms) plus two frames of the clip edges
        starts = [c.start for c in fed if c.start <= a + 2 * FRAME and c.end > a]
        ends = [c.end for c in fed if c.end >= b - 2 * FRAME and c.start < b]
        assert starts and a - starts[0] <= 120 * SR // 1000 + 2 * FRAME, (a, starts)
        assert ends and ends[-1] - b <= 120 * SR // 1000 + 2 * FRAME, (b, ends)


# -- the stream properties -------------------------------------------------------------------------


def test_same_clips_however_the_stream_is_split(track: tuple) -> None:
    x, _ = track
    whole = clips_of(x, x.size)
    assert whole and all(c.start % FRAME == 0 and (c.end % FRAME == 0 or c.end == x.size) for c in whole)
    for sizes in ([7, 640, 641, 999, 16001, 123457], [511], [100_000, 17]):
        parts = clips_of(x, sizes)
        assert [(c.start, c.end, c.cut) for c in parts] == [(c.start, c.end, c.cut) for c in whole]


def test_grid_is_absolute_at_an_offset(track: tuple) -> None:
    x, _ = track
    plain = clips_of(x)
    off = 123_457  # not on the 640 grid
    shifted = clips_of(x, 7919, offset=off)
    assert len(shifted) == len(plain)
    for c, d in zip(plain, shifted, strict=True):
        assert d.start % FRAME == 0 and d.end % FRAME == 0
        assert abs(d.start - off - c.start) <= 2 * FRAME and abs(d.end - off - c.end) <= 2 * FRAME


def test_long_speech_is_cut_into_clips_of_at_most_30s() -> None:
    x = np.concatenate([np.zeros(SR, dtype=np.float32), recorded_speech(70 * SR), np.zeros(SR, dtype=np.float32)])
    clips = clips_of(x)
    assert len(clips) >= 3
    assert clips[0].start <= SR and clips[-1].end >= 71 * SR  # covers it all
    for c, d in itertools.pairwise(clips):
        assert c.cut and c.end == d.start  # contiguous: nothing lost at a cut
        assert c.end - c.start >= 27 * SR  # cut in the last 3 s before the limit
    assert not clips[-1].cut
    assert all(c.end - c.start <= 12 * SR for c in clips_of(x, max_clip_s=12.0))


def test_digital_silence_costs_no_network_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from gemmapipe.core.tasks import silero

    calls = []
    real = silero.silero_session()

    class Counting:
        def run(self, *a: object, **kw: object) -> object:
            calls.append(1)
            return real.run(*a, **kw)

    monkeypatch.setattr(silero, "silero_session", lambda: Counting())
    t0 = time.perf_counter()
    assert clips_of(np.zeros(600 * SR, dtype=np.float32), SR) == []
    assert calls == [] and time.perf_counter() - t0 < 10  # ten minutes of silence: no model call
    x = np.zeros(20 * SR, dtype=np.float32)
    x[5 * SR : 8 * SR] = recorded_speech(3 * SR)
    clips = clips_of(x)
    assert len(clips) == 1 and 0 < len(calls) <= 3 * SR // 512 + 8  # only the speech was scored
    fed = trim_quiet_edges(clips[0])
    assert (fed.start, fed.end) == (5 * SR, 8 * SR)  # sample-exact after the quiet-edge trim


def test_nan_samples_do_not_poison_the_detector(track: tuple) -> None:
    x, truth = track
    y = x.copy()
    a, b = truth[0][1] + SR // 2, truth[0][1] + SR  # in the pause after the first turn
    y[a:b] = np.nan
    clips = list(segment_speech(blocks_of(y, 16000)))
    s = scores(x, truth, [(c.start, c.end) for c in clips])
    assert s["speech_covered"] >= 0.98 and s["clips_without_speech"] == 0


def test_clips_come_out_while_the_stream_runs(track: tuple) -> None:
    from gemmapipe.core.tasks.segment import make_segmenter

    x, _ = track
    seg = make_segmenter("silero")
    lag = []
    for blk in blocks_of(x, 1600):
        for c in seg.feed(blk):
            lag.append(blk.offset + blk.samples.size - c.end)
    seg.finish()
    assert lag and max(lag) <= int(1.0 * SR)  # min_silence (500 ms) + a chunk + a block


@pytest.mark.slow
def test_ten_minutes_stream_in_flat_memory() -> None:
    """Speech and pauses over room tone: peak memory of 10 minutes is that of 1 (the network runs all along)."""
    bed = (10 ** (-55 / 20) * np.random.default_rng(3).standard_normal(SR)).astype(np.float32)

    def stream(seconds: int) -> Iterator[Block]:
        for s in range(seconds):
            yield Block(s * SR, bed + recorded_speech(SR, s * SR) if s % 5 < 3 else bed)

    def peak(seconds: int) -> tuple[int, int]:
        tracemalloc.start()
        try:
            n = sum(1 for _ in segment_speech(stream(seconds)))
            return tracemalloc.get_traced_memory()[1], n
        finally:
            tracemalloc.stop()

    short, n_short = peak(60)
    long, n_long = peak(600)
    assert n_long >= 9 * n_short > 0
    assert long < 8 * 2**20 and long < short * 1.25 + 2**20, (short, long)
