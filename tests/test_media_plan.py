"""plan_input: what an input costs, from its headers, consistent with what decoding yields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gemmapipe.core.errors import BadInput
from gemmapipe.core.media.audio import read_audio, windows_for
from gemmapipe.core.media.frames import iter_frames
from gemmapipe.core.media.geometry import tokens_for
from gemmapipe.core.media.image import load_image
from gemmapipe.core.media.source import open_input
from gemmapipe.core.plan import plan_input

from media_factory import Pipe, write_image, write_tone, write_video


def test_video_plan_matches_decoding(tmp_path: Path) -> None:
    p = write_video(tmp_path / "v.mp4", seconds=3.0, fps=10, size=(320, 180), with_audio=True)
    with open_input(str(p)) as src:
        plan = plan_input(src, want_audio=True, want_frames=True, fps=2)
        json.dumps(plan)  # serializable
        frames = list(iter_frames(src, fps=2))
        audio = read_audio(src)
    assert plan["kind"] == "video" and plan["file"] == str(p)
    assert plan["duration_ms"] == pytest.approx(3000, abs=60)
    assert plan["frames"] == len(frames) == 6
    w, h = plan["frame_size"]
    assert frames[0].pixels.shape == (h, w, 3)
    assert plan["tokens_per_frame"] == tokens_for(w, h)
    assert plan["tokens"]["frames"] == 6 * tokens_for(w, h)
    assert abs(plan["audio_windows"] - windows_for(audio.shape[0])) <= 2
    assert plan["tokens"]["audio"] == plan["audio_windows"]
    assert plan["tokens"]["total"] == plan["tokens"]["frames"] + plan["tokens"]["audio"]
    assert {s["type"] for s in plan["streams"]} == {"video", "audio"}


def test_audio_plan_with_range(tmp_path: Path) -> None:
    p = write_tone(tmp_path / "a.flac", "flac", 4.0, 16000, 1)
    with open_input(str(p)) as src:
        plan = plan_input(src, want_audio=True, want_frames=False, start_ms=1000, end_ms=2000)
    assert plan["audio_samples"] == 16000
    assert plan["audio_windows"] == 25
    assert plan["tokens"] == {"audio": 25, "total": 25}
    assert plan["range_ms"] == [1000, 2000]


def test_image_plan(tmp_path: Path) -> None:
    p = write_image(tmp_path / "i.jpg", (1600, 1200))
    with open_input(str(p)) as src:
        plan = plan_input(src, want_audio=False, want_frames=True, image_tokens=280)
        a = load_image(src, max_tokens=280)
    assert plan["kind"] == "image" and plan["frames"] == 1
    assert plan["image_size"] == [a.shape[1], a.shape[0]]
    assert plan["tokens"]["image"] == tokens_for(a.shape[1], a.shape[0]) <= 280


def test_max_frames_caps_the_plan(tmp_path: Path) -> None:
    p = write_video(tmp_path / "v.mp4", seconds=4.0, fps=5)
    with open_input(str(p)) as src:
        plan = plan_input(src, want_audio=False, want_frames=True, fps=5, max_frames=3, frame_tokens=30)
        frames = list(iter_frames(src, fps=5, max_frames=3, max_tokens=30))
    assert plan["frames"] == len(frames) == 3
    assert plan["tokens"]["frames"] == 3 * plan["tokens_per_frame"] <= 90


def test_plan_refuses_missing_modalities(tmp_path: Path) -> None:
    silent = write_video(tmp_path / "v.mp4", seconds=0.5)
    with open_input(str(silent)) as src, pytest.raises(BadInput, match="no audio"):
        plan_input(src, want_audio=True, want_frames=True)
    with open_input(str(write_tone(tmp_path / "a.wav"))) as src, pytest.raises(BadInput, match="audio file"):
        plan_input(src, want_audio=False, want_frames=True)
    with open_input(str(write_image(tmp_path / "i.png"))) as src, pytest.raises(BadInput, match="image"):
        plan_input(src, want_audio=True, want_frames=False)


def test_plan_of_a_pipe_without_length(tmp_path: Path) -> None:
    data = write_tone(tmp_path / "a.mp3", "mp3", 1.0).read_bytes()
    with open_input("-", stdin=Pipe(data)) as src:
        plan = plan_input(src, want_audio=True, want_frames=False)
    assert plan["file"] == "<stdin>"
    assert plan["audio_windows"] is None and plan["tokens"]["total"] is None
    assert any("unknown" in n for n in plan["notes"])
