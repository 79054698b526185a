"""The video timeline: per-second audio cut from the stream, repeated frames and silent seconds
dropped, and no label left for a second that has nothing to show."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gemmapipe.core.engine.parts import Audio, Image, Text
from gemmapipe.core.media.source import open_input
from gemmapipe.core.tasks.video import VideoOptions, build_timeline, unit_parts

from media_factory import write_video


def test_audio_is_cut_per_second_from_the_stream(tmp_path: Path) -> None:
    mp4 = write_video(tmp_path / "v.mp4", seconds=3.0, fps=10, with_audio=True)
    with open_input(str(mp4)) as src:
        tl = build_timeline(src, VideoOptions(dedupe=False))
    assert [u.t_ms for u in tl.units] == [0, 1000, 2000]
    sizes = [u.audio.size for u in tl.units if u.audio is not None]
    assert sizes[:2] == [16000, 16000] and 0 < sizes[2] <= 16000


def test_empty_seconds_get_no_label(tmp_path: Path) -> None:
    still = np.full((96, 96, 3), 50, dtype=np.uint8)
    from gemmapipe.core.tasks.video import Timeline, Unit

    units = [Unit(0, still, None), Unit(1000, None, None), Unit(2000, None, np.ones(16000, np.float32) * 0.1)]
    parts = unit_parts(units)
    labels = [p.text for p in parts if isinstance(p, Text) and p.text.startswith("[")]
    assert labels == ["[00:00] ", "[00:02] "]
    assert sum(isinstance(p, Image) for p in parts) == 1 and sum(isinstance(p, Audio) for p in parts) == 1
    tl = Timeline(units=units, frames_total=3, frames_dropped=2)
    assert tl.saved_tokens(70) == 2 * 70 + 8  # two frames and one label
