"""Frames: the frame shown at t = 0, 1/fps, 2/fps ..., RGB uint8 already at the model's size."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.core.errors import BadInput, UsageError
from gemmapipe.core.media.frames import Frame, FramePlan, frame_plan, frame_size, iter_frames
from gemmapipe.core.media.geometry import PATCH, tokens_for
from gemmapipe.core.media.source import open_input

from media_factory import frame_color, frame_index_of, truncate, write_image, write_tone, write_video


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".ts", ".mov"])
def test_frame_shown_at_each_second(tmp_path: Path, suffix: str) -> None:
    p = write_video(tmp_path / f"v{suffix}", seconds=2.0, fps=10)  # frame i shown during [i/10, (i+1)/10)
    with open_input(str(p)) as src:
        frames = list(iter_frames(src, fps=4))
    assert [f.t_ms for f in frames] == [0, 250, 500, 750, 1000, 1250, 1500, 1750]
    assert [f.index for f in frames] == list(range(8))
    # at t = 250 ms frame 2 (200..300) is on screen, at 750 ms frame 7
    assert [frame_index_of(f.pixels) for f in frames] == [0, 2, 5, 7, 10, 12, 15, 17]
    for f in frames:
        assert isinstance(f, Frame)
        assert f.pixels.dtype == np.uint8 and f.pixels.flags.c_contiguous
        assert f.pixels.shape == (240, 384, 3)  # 160x96 scaled up to 8 x 5 patches (40 tokens)


def test_default_one_per_second_and_size(tmp_path: Path) -> None:
    p = write_video(tmp_path / "v.mp4", seconds=3.0, fps=5, size=(320, 180))
    with open_input(str(p)) as src:
        frames = list(iter_frames(src))
    assert [f.t_ms for f in frames] == [0, 1000, 2000]
    assert [frame_index_of(f.pixels) for f in frames] == [0, 5, 10]
    h, w, _ = frames[0].pixels.shape
    assert (w, h) == frame_size(320, 180, max_tokens=70)
    assert w % PATCH == 0 and h % PATCH == 0 and tokens_for(w, h) <= 70


def test_token_budget_sets_size(tmp_path: Path) -> None:
    p = write_video(tmp_path / "v.mp4", seconds=1.0, size=(640, 360))
    with open_input(str(p)) as src:
        small = next(iter(iter_frames(src, max_tokens=20)))
        big = next(iter(iter_frames(src, max_tokens=280)))
    assert tokens_for(small.pixels.shape[1], small.pixels.shape[0]) <= 20
    assert 140 <= tokens_for(big.pixels.shape[1], big.pixels.shape[0]) <= 280


def test_rotation_is_honoured(tmp_path: Path) -> None:
    p = write_video(tmp_path / "r.mp4", seconds=1.0, size=(160, 96), rotation=90, split=True)
    with open_input(str(p)) as src:
        assert src.info is not None and src.info.rotation == 90
        assert (src.info.width, src.info.height) == (96, 160)
        f = next(iter(iter_frames(src)))
    h, w, _ = f.pixels.shape
    assert h > w  # portrait, as a player shows it
    # the coloured top half of the coded picture ends up on the left (90 degrees counter-clockwise)
    color = np.array(frame_color(0))
    assert np.abs(f.pixels[h // 2, w // 8].astype(int) - color).max() < 12
    assert f.pixels[h // 2, w - w // 8].max() < 12


def test_start_end_and_max_frames(tmp_path: Path) -> None:
    p = write_video(tmp_path / "v.mp4", seconds=2.0, fps=10)
    with open_input(str(p)) as src:
        part = list(iter_frames(src, fps=5, start_ms=900, end_ms=1500))
        assert [f.t_ms for f in part] == [1000, 1200, 1400]
        assert [frame_index_of(f.pixels) for f in part] == [10, 12, 14]
        spread = list(iter_frames(src, fps=10, max_frames=4))  # 20 sample times -> 4 spread evenly
        assert [f.t_ms for f in spread] == [0, 500, 1000, 1500]
        assert [frame_index_of(f.pixels) for f in spread] == [0, 5, 10, 15]


def test_seek_for_a_late_start(tmp_path: Path) -> None:
    p = write_video(tmp_path / "v.mp4", seconds=7.0, fps=4, gop=8)
    with open_input(str(p)) as src:
        late = list(iter_frames(src, fps=2, start_ms=5500))
    assert [f.t_ms for f in late] == [5500, 6000, 6500]
    assert [f.source_ms for f in late] == [5500, 6000, 6500]


def test_fps_faster_than_the_video_repeats_frames(tmp_path: Path) -> None:
    p = write_video(tmp_path / "v.mp4", seconds=1.0, fps=2)
    with open_input(str(p)) as src:
        frames = list(iter_frames(src, fps=8))
    assert [frame_index_of(f.pixels) for f in frames] == [0, 0, 0, 0, 1, 1, 1, 1]
    frames[0].pixels[:] = 0  # frames do not share buffers
    assert frames[1].pixels.max() > 0


def test_image_is_one_frame(tmp_path: Path) -> None:
    with open_input(str(write_image(tmp_path / "i.png", (300, 200)))) as src:
        frames = list(iter_frames(src))
    assert len(frames) == 1 and frames[0].t_ms == 0
    assert tokens_for(frames[0].pixels.shape[1], frames[0].pixels.shape[0]) <= 70


def test_audio_file_has_no_frames(tmp_path: Path) -> None:
    with open_input(str(write_tone(tmp_path / "a.mp3", "mp3"))) as src, pytest.raises(BadInput, match="no video"):
        list(iter_frames(src))


def test_bad_arguments(tmp_path: Path) -> None:
    with open_input(str(write_video(tmp_path / "v.mp4", seconds=0.5))) as src:
        for kw in ({"fps": 0}, {"fps": float("nan")}, {"max_frames": 0}, {"start_ms": 400, "end_ms": 100}):
            with pytest.raises(UsageError):
                list(iter_frames(src, **kw))  # type: ignore[arg-type]


def test_truncated_video_is_refused(tmp_path: Path) -> None:
    p = write_video(tmp_path / "v.mkv", seconds=4.0, fps=10)
    truncate(p, 0.4)
    with pytest.raises(BadInput, match="truncated"), open_input(str(p)) as src:
        list(iter_frames(src))


def test_frame_plan() -> None:
    fp = frame_plan(10_000, fps=1.0)
    assert fp.count == 10 and fp.t_ms(9) == 9000
    fp = frame_plan(10_500, fps=2.0, start_ms=1_200, end_ms=3_000)
    assert fp.count == 3 and [fp.t_ms(i) for i in range(3)] == [1500, 2000, 2500]
    fp = frame_plan(None, fps=1.0, max_frames=3)
    assert fp.count == 3
    fp = frame_plan(3_600_000, fps=1.0, max_frames=60)
    assert fp.count == 60 and fp.step == Fraction(60_000)
    fp = frame_plan(400, fps=1.0, start_ms=100)  # shorter than a step: still one frame
    assert fp.count == 1 and fp.t_ms(0) == 100


def test_skipping_unshown_frames_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gemmapipe.core.media import frames as frames_mod

    p = write_video(tmp_path / "b.mp4", seconds=2.4, fps=10, preset="veryfast")  # B-frames, some not referenced
    with open_input(str(p)) as src:
        fast = [(f.t_ms, f.source_ms, f.pixels) for f in iter_frames(src, fps=3.3)]
        monkeypatch.setattr(frames_mod, "_NONREF_SKIP", set())
        full = [(f.t_ms, f.source_ms, f.pixels) for f in iter_frames(src, fps=3.3)]
    assert [(a, b) for a, b, _ in fast] == [(a, b) for a, b, _ in full]
    assert all(np.array_equal(x, y) for (_, _, x), (_, _, y) in zip(fast, full, strict=True))
    assert [frame_index_of(px) for _, _, px in fast] == [t // 100 for t, _, _ in fast]


def _frames_with(src: object, threads: str, monkeypatch: pytest.MonkeyPatch, **kw: object) -> list[tuple]:
    monkeypatch.setenv("GEMMAPIPE_VIDEO_THREADS", threads)
    return [(f.t_ms, f.index, f.source_ms, f.pixels) for f in iter_frames(src, **kw)]  # type: ignore[arg-type]


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return [x[:3] for x in a] == [x[:3] for x in b] and all(
        np.array_equal(x[3], y[3]) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize(
    ("suffix", "preset", "kw"),
    [
        (".mp4", "veryfast", {"fps": 4}),  # B-frames: keyframe decode times lead their pictures
        (".mkv", "ultrafast", {"fps": 3.3}),
        (".mp4", "ultrafast", {"fps": 5, "start_ms": 1300, "end_ms": 7100}),
        (".mov", "veryfast", {"fps": 10, "max_frames": 23}),
    ],
)
def test_parallel_chunks_give_the_sequential_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, preset: str, kw: dict[str, object]
) -> None:
    from gemmapipe.core.media import frames as frames_mod

    p = write_video(tmp_path / f"v{suffix}", seconds=8.0, fps=10, gop=7, preset=preset)
    with open_input(str(p)) as src:
        monkeypatch.setenv("GEMMAPIPE_VIDEO_THREADS", "3")
        assert src.info is not None
        plan = frame_plan(src.info.video_duration_ms or src.info.duration_ms, fps=kw["fps"], start_ms=kw.get("start_ms"),  # type: ignore[arg-type]
                          end_ms=kw.get("end_ms"), max_frames=kw.get("max_frames"))  # type: ignore[arg-type]
        chunked = frames_mod._chunk_plan(src, plan, src.info.video_origin_pts)
        assert chunked is not None and len(chunked[1]) >= 2  # the parallel path is really taken
        par = _frames_with(src, "3", monkeypatch, **kw)
        seq = _frames_with(src, "1", monkeypatch, **kw)
    assert len(seq) == plan.count
    assert _same(par, seq)
    assert [i for _, i, _, _ in par] == list(range(len(par)))
    # each frame is the one on screen at its time (frame colours repeat every 25 frames)
    assert [frame_index_of(px) for _, _, _, px in par] == [(t // 100) % 25 for t, _, _, _ in par]


def test_a_chunk_that_lands_late_seeks_earlier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk told to start from a keyframe after its first sample time retries from an earlier point."""
    from gemmapipe.core.media import frames as frames_mod

    p = write_video(tmp_path / "v.mp4", seconds=8.0, fps=10, gop=10)
    real = frames_mod._chunk_plan
    calls: list[object] = []

    def late(source: object, plan: FramePlan, origin: int | None) -> object:
        out = real(source, plan, origin)  # type: ignore[arg-type]
        assert out is not None
        w, chunks = out
        # every chunk after the first seeks to the keyframe one GOP after its first sample time
        bad = [(a, b, None if k is None else k + 10 * 1024) for a, b, k in chunks]
        calls.append(bad)
        return w, bad

    real_decode = frames_mod._decode
    restarts: list[bool] = []

    def decode(*a: object, **k: object) -> object:
        again = yield from real_decode(*a, **k)  # type: ignore[arg-type]
        restarts.append(again)
        return again

    with open_input(str(p)) as src:
        seq = _frames_with(src, "1", monkeypatch, fps=2)
        monkeypatch.setattr(frames_mod, "_chunk_plan", late)
        monkeypatch.setattr(frames_mod, "_decode", decode)
        par = _frames_with(src, "2", monkeypatch, fps=2)
    assert calls and any(restarts) and _same(par, seq)


def test_parallel_decoding_stops_at_a_truncation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write_video(tmp_path / "v.mkv", seconds=8.0, fps=10, gop=10)
    truncate(p, 0.5)
    monkeypatch.setenv("GEMMAPIPE_VIDEO_THREADS", "2")
    with pytest.raises(BadInput, match="truncated"), open_input(str(p)) as src:
        list(iter_frames(src, fps=2))
