"""Still images: orientation, modes, animation, bombs, geometry, size at the token budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gemmapipe.core.errors import BadInput
from gemmapipe.core.media.geometry import PATCH, fit_size, mtmd_keeps, tokens_for
from gemmapipe.core.media.image import load_image
from gemmapipe.core.media.source import open_input

from media_factory import truncate, write_image, write_png_header, write_video


def _load(p: Path, **kw: int) -> np.ndarray:
    with open_input(str(p)) as src:
        return load_image(src, **kw)


def _check_geometry(a: np.ndarray, lo: int = 70, hi: int = 280) -> None:
    h, w, c = a.shape
    assert c == 3 and a.dtype == np.uint8 and a.flags.c_contiguous
    assert w % PATCH == 0 and h % PATCH == 0
    assert lo <= tokens_for(w, h) <= hi
    assert mtmd_keeps(w, h, min_tokens=lo, max_tokens=hi)


def test_size_follows_the_budget(tmp_path: Path) -> None:
    p = write_image(tmp_path / "big.jpg", (1920, 1080))
    a = _load(p)
    _check_geometry(a)
    assert (a.shape[1], a.shape[0]) == fit_size(1920, 1080, min_tokens=70, max_tokens=280)
    b = _load(p, max_tokens=1120, min_tokens=70)
    _check_geometry(b, 70, 1120)
    assert tokens_for(b.shape[1], b.shape[0]) > 800


def test_small_image_is_scaled_up_to_the_minimum(tmp_path: Path) -> None:
    a = _load(write_image(tmp_path / "tiny.png", (20, 20)))
    _check_geometry(a)
    assert a.shape[0] == a.shape[1]


@pytest.mark.parametrize(
    ("orientation", "top_left", "portrait"),
    [(1, "red", True), (3, "blue", True), (6, "blue", False), (8, "red", False)],
)
def test_exif_orientation(tmp_path: Path, orientation: int, top_left: str, portrait: bool) -> None:
    # stored picture: 200 wide x 300 high, red top half, blue bottom half
    p = write_image(tmp_path / "o.jpg", (200, 300), split=True, exif_orientation=orientation)
    a = _load(p)
    h, w, _ = a.shape
    assert (h > w) == portrait
    px = a[h // 8, w // 8].astype(int)
    if top_left == "red":
        assert px[0] > 200 and px[2] < 60
    else:
        assert px[2] > 200 and px[0] < 60


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "L", "1", "CMYK", "I;16", "I", "F"])
def test_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    fmt = {"CMYK": "JPEG", "I;16": "PNG", "I": "TIFF", "F": "TIFF"}.get(mode, "PNG")
    suffix = {"JPEG": ".jpg", "TIFF": ".tif"}.get(fmt, ".png")
    p = write_image(tmp_path / f"m{suffix}", (96, 64), mode=mode, fmt=fmt)
    a = _load(p)
    _check_geometry(a)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    p = tmp_path / "g16.png"
    Image.fromarray(np.full((64, 96), 32768, dtype=np.uint16)).save(p)  # half scale in 16 bits
    a = _load(p)
    assert 120 <= int(a.mean()) <= 135


def test_transparency_goes_on_white(tmp_path: Path) -> None:
    p = tmp_path / "t.png"
    Image.new("RGBA", (96, 96), (0, 0, 0, 0)).save(p)
    assert _load(p).min() >= 250
    q = tmp_path / "pt.png"
    im = Image.new("P", (96, 96), 0)
    im.putpalette([0, 0, 0] * 256)
    im.info["transparency"] = 0
    im.save(q, transparency=0)
    assert _load(q).min() >= 250


@pytest.mark.parametrize("suffix", [".gif", ".png", ".webp"])
def test_animated_images_use_the_first_frame(tmp_path: Path, suffix: str) -> None:
    p = write_image(tmp_path / f"anim{suffix}", (96, 96), frames=3, color=None)
    with open_input(str(p)) as src:
        assert src.kind == "image"
        assert src.info is not None and src.info.frames == 3
        a = load_image(src)
    assert abs(int(a[..., 0].mean()) - 0) < 12  # frame 0 is (0, 100, 200); later frames are redder


def test_webp_bmp_tiff(tmp_path: Path) -> None:
    for name in ("a.webp", "a.bmp", "a.tif"):
        _check_geometry(_load(write_image(tmp_path / name, (150, 100))))


def test_bomb_refused_before_decoding(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="bomb|too large"):
        _load(write_png_header(tmp_path / "bomb.png", 20000, 20000))


def test_truncated_image(tmp_path: Path) -> None:
    p = tmp_path / "n.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(p)
    truncate(p, 0.5)
    with pytest.raises(BadInput, match="truncated|corrupt|not a readable"):
        _load(p)


def test_video_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="video"):
        _load(write_video(tmp_path / "v.mp4", seconds=0.5))


def test_wide_but_accepted(tmp_path: Path) -> None:
    a = _load(write_image(tmp_path / "pano.png", (2000, 250)))  # 8:1
    _check_geometry(a)
    assert a.shape[0] >= PATCH
