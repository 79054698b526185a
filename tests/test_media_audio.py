"""Audio: any input -> float32 mono 16 kHz in [-1, 1], in blocks with exact sample offsets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gemmapipe.core.errors import BadInput, UsageError
from gemmapipe.core.media.audio import SAMPLE_RATE, WINDOW, AudioBlock, iter_audio, read_audio, windows_for
from gemmapipe.core.media.source import open_input

from media_factory import signal, write_float_wav, write_image, write_tone, write_video


def _tone_freq(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.shape[0])))
    return float(np.argmax(spec) * SAMPLE_RATE / x.shape[0])


@pytest.mark.parametrize(
    ("fmt", "sr", "channels"),
    [
        ("wav", 44100, 2),
        ("wav24", 8000, 1),
        ("wavf32", 48000, 1),
        ("flac", 22050, 2),
        ("mp3", 44100, 2),
        ("ogg", 44100, 2),
        ("opus", 48000, 1),
        ("m4a", 44100, 1),
        ("mkv", 32000, 6),
        ("webm", 48000, 2),
    ],
)
def test_any_format_to_16k_mono_float(tmp_path: Path, fmt: str, sr: int, channels: int) -> None:
    p = write_tone(tmp_path / f"a.{fmt}", fmt, 1.0, sr, channels, freq=500.0)
    with open_input(str(p)) as src:
        x = read_audio(src)
    assert x.dtype == np.float32 and x.ndim == 1
    assert x.shape[0] == pytest.approx(SAMPLE_RATE, abs=700)  # codec priming/padding aside
    assert np.isfinite(x).all() and np.abs(x).max() <= 1.0
    mid = x[2000:14000]
    assert np.abs(mid).max() > 0.05
    if channels == 1:
        assert _tone_freq(mid) == pytest.approx(500, abs=10)


def test_downmix_is_the_channel_mean(tmp_path: Path) -> None:
    # left = 0.8 * sine, right = -0.4 * sine  ->  mean = 0.2 * sine (ffmpeg's -ac 1 would give 0.28)
    n = SAMPLE_RATE
    s = np.sin(2 * np.pi * 200 * np.arange(n) / SAMPLE_RATE)
    data = np.stack([0.8 * s, -0.4 * s]).T.astype(np.float32)
    import soundfile as sf

    p = tmp_path / "st.wav"
    sf.write(str(p), data, SAMPLE_RATE, subtype="FLOAT")
    with open_input(str(p)) as src:
        x = read_audio(src)
    assert x.shape[0] == n
    np.testing.assert_allclose(x, 0.2 * s, atol=1e-4)


def test_loud_stereo_does_not_clip(tmp_path: Path) -> None:
    s = np.sin(2 * np.pi * 100 * np.arange(SAMPLE_RATE) / SAMPLE_RATE).astype(np.float32)
    import soundfile as sf

    p = tmp_path / "loud.wav"
    sf.write(str(p), np.stack([s, s]).T * 0.99, SAMPLE_RATE, subtype="PCM_16")
    with open_input(str(p)) as src:
        x = read_audio(src)
    assert np.abs(x).max() == pytest.approx(0.99, abs=0.01)


def test_blocks_have_exact_offsets(tmp_path: Path) -> None:
    p = write_tone(tmp_path / "a.flac", "flac", 3.3, 44100, 2, kind="noise")
    with open_input(str(p)) as src:
        whole = read_audio(src)
        blocks = list(iter_audio(src, block_samples=7000))
    assert all(isinstance(b, AudioBlock) for b in blocks)
    assert [b.offset for b in blocks] == [i * 7000 for i in range(len(blocks))]
    assert all(len(b) == 7000 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 7000
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), whole)
    assert blocks[1].start_ms == 7000 * 1000 // SAMPLE_RATE


def test_trim_start_end_keeps_file_offsets(tmp_path: Path) -> None:
    p = write_tone(tmp_path / "a.wav", "wav", 3.0, 16000, 1, kind="noise")
    with open_input(str(p)) as src:
        whole = read_audio(src)
        part = list(iter_audio(src, start_ms=1250, end_ms=2500, block_samples=8000))
    assert part[0].offset == 20000
    got = np.concatenate([b.samples for b in part])
    np.testing.assert_array_equal(got, whole[20000:40000])


def test_trim_by_seeking_matches_decoding(tmp_path: Path) -> None:
    # 25 s at 8 kHz: a start past 20 s is reached with a seek, and must land on the same samples
    p = write_tone(tmp_path / "long.flac", "flac", 25.0, 8000, 1, kind="noise")
    with open_input(str(p)) as src:
        whole = read_audio(src)
        tail = list(iter_audio(src, start_ms=21_000, end_ms=23_000))
    assert tail[0].offset == 21 * SAMPLE_RATE
    got = np.concatenate([b.samples for b in tail])
    assert got.shape[0] == 2 * SAMPLE_RATE
    # the resampler restarts after a seek: allow its edge, compare the body exactly enough
    np.testing.assert_allclose(got[200:-200], whole[21 * SAMPLE_RATE + 200 : 23 * SAMPLE_RATE - 200], atol=2e-3)


def test_start_past_the_end(tmp_path: Path) -> None:
    p = write_tone(tmp_path / "a.wav", "wav", 1.0, 16000, 1)
    with open_input(str(p)) as src, pytest.raises(BadInput, match="past the end"):
        read_audio(src, start_ms=5000)


def test_bad_ranges(tmp_path: Path) -> None:
    p = write_tone(tmp_path / "a.wav", "wav", 1.0)
    with open_input(str(p)) as src:
        with pytest.raises(UsageError):
            read_audio(src, start_ms=-1)
        with pytest.raises(UsageError):
            read_audio(src, start_ms=500, end_ms=500)


def test_nan_and_inf_are_replaced_and_reported(tmp_path: Path) -> None:
    x = (0.5 * np.sin(np.arange(16000) / 10)).astype(np.float32)
    x[100:110] = np.nan
    x[5000] = np.inf
    x[6000] = -np.inf
    x[7000] = 3.0  # out of range: clipped
    p = write_float_wav(tmp_path / "bad.wav", x)
    with open_input(str(p)) as src:
        blocks = list(iter_audio(src))
        y = np.concatenate([b.samples for b in blocks])
        assert any("non-finite" in w for w in src.warnings)
    assert np.isfinite(y).all()
    assert np.abs(y).max() <= 1.0
    assert sum(b.nonfinite for b in blocks) == 12
    assert (y[100:110] == 0).all()
    assert y[7000] == 1.0


def test_video_audio_track(tmp_path: Path) -> None:
    p = write_video(tmp_path / "v.mp4", seconds=1.0, with_audio=True)
    with open_input(str(p)) as src:
        x = read_audio(src)
    assert x.shape[0] == pytest.approx(SAMPLE_RATE, abs=600)


def test_image_has_no_audio(tmp_path: Path) -> None:
    with open_input(str(write_image(tmp_path / "i.png"))) as src, pytest.raises(BadInput, match="image"):
        read_audio(src)


def test_windows_for() -> None:
    assert WINDOW == 640
    assert windows_for(0) == 0
    assert windows_for(1) == 1
    assert windows_for(640) == 1
    assert windows_for(641) == 2
    assert windows_for(16000) == 25


def test_mono_16k_float_wav_is_bit_exact(tmp_path: Path) -> None:
    x = signal("noise", 1.0, 16000, 1, amplitude=0.9)[0]
    p = write_float_wav(tmp_path / "exact.wav", x)
    with open_input(str(p)) as src:
        np.testing.assert_array_equal(read_audio(src), x)


# ------------------------------------------------------------------------- helper decoding processes


class _SpyPool:
    """Wraps audio._Pool to record the pools created and the jobs sent (and check they are cleaned up)."""

    made: list = []  # noqa: RUF012
    jobs: list = []  # noqa: RUF012

    def __init__(self, real: type) -> None:
        self.real = real

    def __call__(self, n: int):  # type: ignore[no-untyped-def]
        pool = self.real(n)
        submit = pool.submit

        def spy(w: int, job: dict):  # type: ignore[no-untyped-def]
            _SpyPool.jobs.append(job)
            return submit(w, job)

        pool.submit = spy
        _SpyPool.made.append(pool)
        return pool


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> list:
    from gemmapipe.core.media import _sndfile, audio

    monkeypatch.setattr(audio, "PROCESS_MIN_SECONDS", 1.0)
    monkeypatch.setattr(audio, "IDLE_CPUS_FOR_HELPERS", -1e9)  # whatever the machine's load
    monkeypatch.setattr(_sndfile, "PIECE_SECONDS", 2)
    monkeypatch.setattr(_sndfile, "MIN_SECONDS", 1.0)
    monkeypatch.delenv("GEMMAPIPE_AUDIO_PROCS", raising=False)
    monkeypatch.delenv("GEMMAPIPE_AUDIO_SNDFILE", raising=False)
    _SpyPool.made = []
    _SpyPool.jobs = []
    monkeypatch.setattr(audio, "_Pool", _SpyPool(audio._Pool))
    return _SpyPool.made


def _in_process(p: Path, monkeypatch: pytest.MonkeyPatch, **kw: int) -> np.ndarray:
    with monkeypatch.context() as m:
        m.setenv("GEMMAPIPE_AUDIO_PROCS", "0")
        with open_input(str(p)) as src:
            return read_audio(src, **kw)


@pytest.mark.parametrize(("sr", "channels"), [(44100, 2), (22050, 1), (48000, 2), (8000, 1)])
def test_long_mp3_pieces_in_helpers_join_to_float_precision(
    tmp_path: Path, sr: int, channels: int, small_pieces: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemmapipe.core.media import _sndfile

    p = write_tone(tmp_path / "long.mp3", "mp3", 6.5, sr, channels, kind="noise")
    with open_input(str(p)) as src:
        got = read_audio(src)
    jobs = [j for j in _SpyPool.jobs if j["mode"] == "sndfile"]
    assert len(jobs) == 4 and [j["first"] for j in jobs] == [0, 2 * sr, 4 * sr, 6 * sr]
    assert all(proc.poll() is not None for pool in small_pieces for proc in pool.procs)  # and are gone
    monkeypatch.setattr(_sndfile, "PIECE_SECONDS", 60)  # one piece: a plain sequential read
    with open_input(str(p)) as src:
        whole = read_audio(src)
    assert got.shape == whole.shape
    assert np.abs(got - whole).max() <= 2.5e-7  # 1-2 float32 ulps where pieces join (see _sndfile)
    # FFmpeg's decoder through PyAV: the same length, the same signal to decoder precision
    ref = _in_process(p, monkeypatch)
    assert got.shape == ref.shape == (round(6.5 * 16000),)
    assert np.abs(got - ref).max() < 1e-4


def test_long_mp3_start_seeks_to_the_same_samples(
    tmp_path: Path, small_pieces: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gemmapipe.core.media import audio

    monkeypatch.setattr(audio, "SEEK_MIN_MS", 2000)
    p = write_tone(tmp_path / "long.mp3", "mp3", 8.0, 44100, 2, kind="noise")
    with open_input(str(p)) as src:
        full = read_audio(src)
        _SpyPool.jobs = []
        blocks = list(iter_audio(src, start_ms=5250, end_ms=7000))
    assert _SpyPool.jobs[0]["mode"] == "sndfile" and _SpyPool.jobs[0]["first"] > 0  # a seek, not the top
    assert blocks[0].offset == 5250 * 16
    part = np.concatenate([b.samples for b in blocks])
    assert part.shape == (1750 * 16,)
    assert np.abs(part - full[5250 * 16 : 7000 * 16]).max() < 1e-6


def test_sndfile_can_be_switched_off(tmp_path: Path, small_pieces: list, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write_tone(tmp_path / "long.mp3", "mp3", 3.0, 44100, 2, kind="noise")
    monkeypatch.setenv("GEMMAPIPE_AUDIO_SNDFILE", "0")
    with open_input(str(p)) as src:
        got = read_audio(src)
    assert [j["mode"] for j in _SpyPool.jobs] == ["whole"]
    np.testing.assert_array_equal(got, _in_process(p, monkeypatch))


@pytest.mark.parametrize("fmt", ["m4a", "flac"])
def test_whole_stream_in_one_helper(
    tmp_path: Path, fmt: str, small_pieces: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_tone(tmp_path / f"a.{fmt}", fmt, 3.0, 44100, 2, kind="noise")
    with open_input(str(p)) as src:
        got = read_audio(src)
    assert len(small_pieces) == 1 and small_pieces[0].size == 1
    np.testing.assert_array_equal(got, _in_process(p, monkeypatch))


@pytest.mark.parametrize("fmt", ["m4a", "mp3"])
def test_helpers_stop_when_the_reader_stops(tmp_path: Path, small_pieces: list, fmt: str) -> None:
    p = write_tone(tmp_path / f"long.{fmt}", fmt, 6.5, 44100, 2, kind="noise")
    with open_input(str(p)) as src:
        blocks = iter_audio(src, block_samples=4000)
        first = next(blocks)
        blocks.close()
    assert first.offset == 0
    assert all(proc.poll() is not None for proc in small_pieces[0].procs)


def test_helpers_report_bad_input(tmp_path: Path, small_pieces: list) -> None:
    p = write_tone(tmp_path / "long.flac", "flac", 4.0, 44100, 1, kind="noise")
    with open_input(str(p)) as src:
        # damage the file after it was opened: the helpers meet the corruption while decoding
        data = bytearray(p.read_bytes())
        p.write_bytes(bytes(data[: len(data) // 2]))
        with pytest.raises(BadInput, match="truncated|corrupt|decod"):
            read_audio(src)


def test_falls_back_when_helpers_cannot_run(
    tmp_path: Path, small_pieces: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    p = write_tone(tmp_path / "a.m4a", "m4a", 3.0, 44100, 1, kind="noise")
    ref = _in_process(p, monkeypatch)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # helpers exit at once
    with open_input(str(p)) as src:
        got = read_audio(src)
    np.testing.assert_array_equal(got, ref)
