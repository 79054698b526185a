"""Image geometry for Gemma 4 unified vision (gemma4uv): sizes mtmd keeps as they are.

gemma4uv cuts an image into 48x48 patches (GGUF patch_size 16 x merge 3); each patch is one token.
Before that, llama.cpp's `mtmd_image_preprocessor_dyn_size` (tools/mtmd/mtmd-image.cpp,
`img_tool::calc_size_preserved_ratio`, align 48, min/max pixels = image_min/max_tokens * 48 * 48)
rescales every image:

    w, h = max(48, round48(W)), max(48, round48(H))
    if w*h > max_pixels:   beta = sqrt(H*W / max_pixels); w, h = max(48, floor48(W/beta)), max(48, floor48(H/beta))
    elif w*h < min_pixels: beta = sqrt(min_pixels / (H*W)); w, h = ceil48(W*beta), ceil48(H*beta)

(float32 arithmetic, `std::round` = half away from zero), and `img_tool::resize` copies the image
untouched when the computed size equals the input size.  Hence an image whose sides are multiples of
48 and whose token count lies in [image_min_tokens, image_max_tokens] is fed AS IS.

`fit_size` mirrors that computation (so our frames/images get the size mtmd would have chosen) and
then makes sure the result is such a fixed point: the mtmd formula is not always one (the "min" branch
rounds both sides up and can overshoot the maximum; the "max" branch can land under the minimum).

How the engine must configure mtmd so nothing is rescaled: `image_min_tokens` <= the smallest
`min_tokens` and `image_max_tokens` >= the largest `max_tokens` passed here for that context
(for example image_min_tokens=1 and image_max_tokens=max(frame budget, image budget)).

The x/y position lookup table of the projector has no bound check in llama.cpp, so geometry is
guarded: aspect ratios beyond MAX_ASPECT are refused (BadInput) and every side is at least one patch.
"""

from __future__ import annotations

import math
import struct

from ..errors import BadInput

PATCH = 48
"""Side of one vision token's patch, in pixels."""

MAX_ASPECT = 10.0
"""Largest accepted ratio between the long and the short side of an image or video frame.

1x100000-like inputs are refused instead of being squeezed into a 1-patch-high strip whose column
index could run past the projector's position table.  At 1120 tokens (mtmd's default maximum) a
10:1 image is at most ~106 patches long."""

DEFAULT_IMAGE_TOKENS = 280
"""Google's processor budget for a still image."""

DEFAULT_FRAME_TOKENS = 70
"""Google's processor budget for a video frame."""

MTMD_MIN_TOKENS = 70
MTMD_MAX_TOKENS = 1120
"""llama.cpp's own gemma4uv bounds when image_min/max_tokens are not set."""


def _f32(x: float) -> float:
    """Round a Python float to the nearest float32, like a C++ `float`."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


def _cround(x: float) -> int:
    """C++ std::round for the non-negative values used here: half away from zero."""
    return math.floor(x + 0.5)


def mtmd_size(width: int, height: int, *, min_tokens: int, max_tokens: int) -> tuple[int, int]:
    """The size llama.cpp's gemma4uv preprocessing resizes a width x height image to (float32 mirror)."""
    if width <= 0 or height <= 0:
        return (0, 0)
    a = PATCH
    fa = _f32(float(a))
    min_pixels = min_tokens * a * a
    max_pixels = max_tokens * a * a

    def round_by(x: float) -> int:
        return _cround(_f32(_f32(x) / fa)) * a

    def ceil_by(x: float) -> int:
        return math.ceil(_f32(_f32(x) / fa)) * a

    def floor_by(x: float) -> int:
        return math.floor(_f32(_f32(x) / fa)) * a

    w_bar = max(a, round_by(width))
    h_bar = max(a, round_by(height))
    if max_pixels > 0 and h_bar * w_bar > max_pixels:
        beta = _f32(math.sqrt(_f32(_f32(_f32(float(height)) * width) / max_pixels)))
        h_bar = max(a, floor_by(_f32(height / beta)))
        w_bar = max(a, floor_by(_f32(width / beta)))
    elif min_pixels > 0 and h_bar * w_bar < min_pixels:
        beta = _f32(math.sqrt(_f32(_f32(float(min_pixels)) / _f32(_f32(float(height)) * width))))
        h_bar = ceil_by(_f32(height * beta))
        w_bar = ceil_by(_f32(width * beta))
    return (w_bar, h_bar)


def tokens_for(width: int, height: int) -> int:
    """Tokens gemma4uv spends on an image of this (already 48-aligned) size."""
    return (width // PATCH) * (height // PATCH)


def mtmd_keeps(width: int, height: int, *, min_tokens: int, max_tokens: int) -> bool:
    """True when mtmd configured with these token bounds feeds a width x height image unchanged."""
    return mtmd_size(width, height, min_tokens=min_tokens, max_tokens=max_tokens) == (width, height)


def aspect_ok(width: int, height: int, max_aspect: float = MAX_ASPECT) -> bool:
    if width <= 0 or height <= 0:
        return False
    return max(width, height) / min(width, height) <= max_aspect


def check_geometry(width: int, height: int, subject: str, *, max_aspect: float = MAX_ASPECT) -> None:
    """Refuse (BadInput) sizes the model cannot take: empty, or an aspect ratio beyond `max_aspect`."""
    if width <= 0 or height <= 0:
        raise BadInput(subject, f"the picture is {width}x{height} pixels (empty)")
    if not aspect_ok(width, height, max_aspect):
        ratio = max(width, height) / min(width, height)
        raise BadInput(
            subject,
            f"the picture is {width}x{height} pixels, an aspect ratio of {ratio:.0f}:1 "
            f"(at most {max_aspect:g}:1 is accepted)",
            "crop it, or split it into pieces, before passing it in",
        )


def _best_grid(width: int, height: int, min_tokens: int, max_tokens: int, max_side: int | None) -> tuple[int, int]:
    """Patch grid (cols, rows) with cols*rows in [min_tokens, max_tokens] closest in aspect to width/height.

    Ties go to the grid with more tokens.  Used when mtmd's own formula is not a fixed point.
    """
    target = math.log(width / height)
    best: tuple[float, int, int, int] | None = None  # (aspect error, -tokens, cols, rows)
    limit = max_side if max_side is not None else max_tokens
    for rows in range(1, min(max_tokens, limit) + 1):
        hi = min(max_tokens // rows, limit)
        lo = max(1, -(-min_tokens // rows))
        if lo > hi:
            continue
        ideal = rows * width / height
        for cols in {min(max(math.floor(ideal), lo), hi), min(max(math.ceil(ideal), lo), hi)}:
            err = abs(math.log(cols / rows) - target)
            cand = (round(err, 12), -(cols * rows), cols, rows)
            if best is None or cand < best:
                best = cand
    if best is None:
        raise ValueError(f"no patch grid holds between {min_tokens} and {max_tokens} tokens")
    return best[2], best[3]


def fit_size(
    width: int,
    height: int,
    *,
    min_tokens: int,
    max_tokens: int,
    max_side: int | None = None,
) -> tuple[int, int]:
    """The (width, height) to scale a width x height picture to before handing it to mtmd.

    Both sides are multiples of PATCH, at least PATCH, and tokens_for(result) lies in
    [min_tokens, max_tokens], so mtmd configured with image_min_tokens <= min_tokens and
    image_max_tokens >= max_tokens keeps it unchanged.  The choice is mtmd's own whenever that is a fixed
    point, else the patch grid in range closest to the picture's aspect ratio.  `max_side` (in patches)
    optionally bounds the longer side, e.g. by the projector's position-table length.

    Raises ValueError for impossible budgets; geometry of untrusted pictures is checked by
    `check_geometry` (BadInput) before this is called.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid picture size {width}x{height}")
    if min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError(f"invalid token budget [{min_tokens}, {max_tokens}]")
    w, h = mtmd_size(width, height, min_tokens=min_tokens, max_tokens=max_tokens)
    cols, rows = w // PATCH, h // PATCH
    if min_tokens <= cols * rows <= max_tokens and (max_side is None or max(cols, rows) <= max_side):
        return (w, h)
    cols, rows = _best_grid(width, height, min_tokens, max_tokens, max_side)
    return (cols * PATCH, rows * PATCH)
