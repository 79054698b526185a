"""Geometry: sizes llama.cpp's gemma4uv preprocessing keeps as they are."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemmapipe.core.errors import BadInput
from gemmapipe.core.media.geometry import (
    MAX_ASPECT,
    PATCH,
    check_geometry,
    fit_size,
    mtmd_keeps,
    mtmd_size,
    tokens_for,
)


@pytest.mark.parametrize(
    ("w", "h", "tokens"),
    [(224, 224, 81), (1024, 768, 336), (1920, 1080, 920), (4000, 3000, 1064)],
)
def test_mtmd_size_matches_llama_cpp_defaults(w: int, h: int, tokens: int) -> None:
    # the examples computed from llama.cpp's calc_size_preserved_ratio with its default [70, 1120]
    size = mtmd_size(w, h, min_tokens=70, max_tokens=1120)
    assert tokens_for(*size) == tokens
    assert size[0] % PATCH == 0 and size[1] % PATCH == 0


def test_fit_size_common_cases() -> None:
    assert fit_size(1280, 720, min_tokens=35, max_tokens=70) == (528, 288)  # 11 x 6 = 66 tokens
    assert fit_size(1920, 1080, min_tokens=70, max_tokens=280) == (1056, 576)
    w, h = fit_size(64, 64, min_tokens=35, max_tokens=70)
    assert w == h and 35 <= tokens_for(w, h) <= 70


def test_min_equals_max_is_still_a_fixed_point() -> None:
    # mtmd's own formula is not idempotent here (66 tokens < 70 would be scaled up to 84)
    w, h = fit_size(1280, 720, min_tokens=70, max_tokens=70)
    assert tokens_for(w, h) == 70
    assert mtmd_keeps(w, h, min_tokens=70, max_tokens=70)


@settings(max_examples=300, deadline=None)
@given(
    w=st.integers(1, 20000),
    h=st.integers(1, 20000),
    lo=st.integers(1, 400),
    span=st.integers(0, 1200),
)
def test_fit_size_is_kept_by_mtmd(w: int, h: int, lo: int, span: int) -> None:
    hi = lo + span
    fw, fh = fit_size(w, h, min_tokens=lo, max_tokens=hi)
    assert fw % PATCH == 0 and fh % PATCH == 0
    assert fw >= PATCH and fh >= PATCH
    assert lo <= tokens_for(fw, fh) <= hi
    assert mtmd_keeps(fw, fh, min_tokens=lo, max_tokens=hi)
    # also kept by a context configured more loosely (what the engine does: min 1, max the largest budget)
    assert mtmd_keeps(fw, fh, min_tokens=1, max_tokens=max(hi, 1120))


def test_fit_size_keeps_aspect_roughly() -> None:
    for w, h in [(1280, 720), (720, 1280), (1000, 1000), (3000, 1000), (400, 3000)]:
        fw, fh = fit_size(w, h, min_tokens=70, max_tokens=280)
        assert abs((fw / fh) / (w / h) - 1) < 0.25


def test_max_side_bounds_the_long_side() -> None:
    fw, fh = fit_size(4000, 400, min_tokens=1, max_tokens=1120, max_side=40)
    assert max(fw, fh) // PATCH <= 40


def test_fit_size_rejects_bad_budgets() -> None:
    with pytest.raises(ValueError):
        fit_size(100, 100, min_tokens=10, max_tokens=5)
    with pytest.raises(ValueError):
        fit_size(0, 100, min_tokens=1, max_tokens=5)


def test_check_geometry() -> None:
    check_geometry(1000, 100, "x")
    check_geometry(int(100 * MAX_ASPECT), 100, "x")
    with pytest.raises(BadInput, match="aspect ratio"):
        check_geometry(1, 100000, "x")
    with pytest.raises(BadInput, match="0x0"):
        check_geometry(0, 0, "x")
