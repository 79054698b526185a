"""The video timeline, laid out as transformers' Gemma 4 unified processor lays a video out: each kept
frame `MM:SS <image>`, items joined by single spaces; the sound track in segments of at most 30 s cut
at pauses, each after the frames of its span and introduced by its start time; repeated frames and
silence left out."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np

from gemmapipe.core.engine.parts import Audio, Image, Text
from gemmapipe.core.media.source import open_input
from gemmapipe.core.tasks.video import (
    PROMPT_LAYOUT,
    Shot,
    Sound,
    Timeline,
    VideoOptions,
    build_timeline,
    interleave,
    item_parts,
)

SR = 16000


def av_video(path: Path, audio: np.ndarray, *, static: bool = False, size: tuple[int, int] = (96, 96)) -> Path:
    """A 1 FPS H.264 + AAC video as long as `audio` (16 kHz mono): frame k is grey level 40 + 20k
    (or always the same with `static`)."""
    import av

    seconds = -(-audio.size // SR)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=1, options={"crf": "18"})
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        aus = out.add_stream("aac", rate=SR, layout="mono")
        for k in range(seconds):
            level = 100 if static else 40 + 20 * k
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), level, np.uint8), format="rgb24")
            frame.pts = k
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        for i in range(0, audio.size, 1024):
            af = av.AudioFrame.from_ndarray(audio[None, i:i + 1024].astype(np.float32), format="flt", layout="mono")
            af.sample_rate, af.pts = SR, i
            for packet in aus.encode(af):
                out.mux(packet)
        for packet in aus.encode():
            out.mux(packet)
    return path


def tone(seconds: float, hz: float = 440.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (np.sin(2 * np.pi * hz * t) * level).astype(np.float32)


def track(total_s: float, sounds: list[tuple[float, np.ndarray]]) -> np.ndarray:
    x = np.zeros(int(total_s * SR), np.float32)
    for at, wave in sounds:
        x[int(at * SR):int(at * SR) + wave.size] = wave
    return x


def test_sound_comes_in_segments_cut_at_pauses_each_after_its_frames(tmp_path: Path) -> None:
    audio = track(8.0, [(0.5, tone(1.5)), (4.0, tone(1.2, 330))])
    with open_input(str(av_video(tmp_path / "v.mp4", audio))) as src:
        tl = build_timeline(src, VideoOptions())
    kinds = [(type(i).__name__, i.t_ms) for i in tl.items]
    # segment 1 (0.5-2.0 s, padded, starting on its whole second) comes once frames 0..2 are shown,
    # segment 2 (4.0-5.2 s, from 3 s) after frames 3..5, then the frames that follow
    assert kinds == [("Shot", 0), ("Shot", 1000), ("Shot", 2000), ("Sound", 0), ("Shot", 3000), ("Shot", 4000),
                     ("Shot", 5000), ("Sound", 3000), ("Shot", 6000), ("Shot", 7000)]
    sounds = [i for i in tl.items if isinstance(i, Sound)]
    assert [s.start for s in sounds] == [0, 3 * SR]  # on the whole second the label names
    assert [round(s.end / SR, 2) for s in sounds] == [2.12, 5.32]  # the sound's end plus a 120 ms pad
    assert tl.audio_seconds_total == 8 and tl.audio_seconds_silent == 4  # 8 - 4.44 s fed
    assert tl.saved_tokens() == round((8 * SR - sum(s.samples.size for s in sounds)) / 640)
    # what the model hears is the track itself, sample for sample (AAC aside)
    for s in sounds:
        assert np.abs(s.samples - audio[s.start:s.end]).max() < 0.05


def test_long_sound_is_cut_into_segments_of_at_most_30_s(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(70 * SR) * 0.1).astype(np.float32)  # noise: kept, it is not silence
    with open_input(str(av_video(tmp_path / "v.mp4", audio, static=True))) as src:
        tl = build_timeline(src, VideoOptions())
    sounds = [i for i in tl.items if isinstance(i, Sound)]
    assert len(sounds) == 3 and all(s.samples.size <= 30 * SR for s in sounds)
    assert sounds[0].start == 0 and sum(s.samples.size for s in sounds) == 70 * SR  # all of it, once, in order
    assert all(a.end == b.start for a, b in pairwise(sounds))
    assert tl.frames_dropped == 69  # a still picture: one frame kept
    assert isinstance(tl.items[0], Shot) and [type(i) for i in tl.items[1:]] == [Sound] * 3


def test_no_dedupe_keeps_every_frame_and_all_the_silence(tmp_path: Path) -> None:
    audio = track(5.0, [(1.0, tone(0.5))])
    with open_input(str(av_video(tmp_path / "v.mp4", audio, static=True))) as src:
        tl = build_timeline(src, VideoOptions(dedupe=False))
    shots = [i for i in tl.items if isinstance(i, Shot)]
    sounds = [i for i in tl.items if isinstance(i, Sound)]
    assert len(shots) == 5 and len(sounds) == 1
    assert sounds[0].start == 0 and sounds[0].samples.size == 5 * SR
    assert tl.audio_seconds_silent == 0 and tl.saved_tokens() == 0


def test_layout_is_the_processors() -> None:
    px = np.full((96, 96, 3), 50, np.uint8)
    items = interleave([Shot(0, px), Shot(1000, px), Shot(61000, px)],
                       [Sound(0, 2 * SR, np.ones(2 * SR, np.float32) * 0.1)])
    parts = item_parts(items)
    kinds = [p.text if isinstance(p, Text) else type(p).__name__ for p in parts]
    assert kinds == ["00:00 ", "Image", " 00:01 ", "Image", " 00:00 ", "Audio", " 01:01 ", "Image"]
    assert sum(isinstance(p, Image) for p in parts) == 3 and sum(isinstance(p, Audio) for p in parts) == 1
    assert PROMPT_LAYOUT == 2  # saved states of the bracketed per-second layout do not match this one


def test_tokens_count_frames_at_the_size_they_are_sent() -> None:
    small, big = np.zeros((240, 528, 3), np.uint8), np.zeros((288, 624, 3), np.uint8)
    assert Timeline([Shot(0, small)]).tokens() == 6 + 55
    assert Timeline([Shot(0, big)]).tokens() == 6 + 78  # raised to llama-server's 70-token minimum


def test_frames_for_a_server_are_sized_as_it_will_feed_them(tmp_path: Path) -> None:
    from gemmapipe.core.media.geometry import mtmd_keeps, tokens_for

    audio = track(2.0, [])
    mp4 = av_video(tmp_path / "v.mp4", audio, size=(720, 358))
    with open_input(str(mp4)) as src:
        local = build_timeline(src, VideoOptions(audio=False))
    with open_input(str(mp4)) as src:
        remote = build_timeline(src, VideoOptions(audio=False, frame_floor_tokens=70))
    (h, w), (rh, rw) = local.items[0].pixels.shape[:2], remote.items[0].pixels.shape[:2]  # type: ignore[union-attr]
    assert tokens_for(w, h) <= 70 < tokens_for(rw, rh)
    assert mtmd_keeps(rw, rh, min_tokens=70, max_tokens=1120)  # llama-server feeds it as sent
    assert remote.frame_tokens == tokens_for(rw, rh) and remote.tokens() == 2 * (6 + tokens_for(rw, rh))
