"""Still images via Pillow -> RGB uint8 at the size the model takes.

* EXIF orientation is applied; animated images (GIF, APNG, WebP) give their first frame.
* Modes: palette (with or without transparency), alpha (composited on white), CMYK, 16-bit and 32-bit
  integer or float grey, 1-bit, LAB/HSV/YCbCr -> RGB.
* Decompression bombs are refused (BadInput) from the header, before decoding: more than
  IMAGE_PIXEL_LIMIT pixels.
* Geometry is guarded: empty images and aspect ratios beyond geometry.MAX_ASPECT are refused; the result
  has both sides multiples of 48 px (at least 48) and a token count in [min_tokens, max_tokens]
  (`geometry.fit_size`), so mtmd keeps it as is.
* JPEGs are decoded at a reduced scale when much larger than the target (libjpeg DCT scaling), then
  scaled with a bicubic filter like mtmd's.
* Formats Pillow cannot read but ffmpeg can (HEIF/AVIF, JPEG XL...) are decoded with PyAV.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import BadInput
from .geometry import DEFAULT_IMAGE_TOKENS, MTMD_MIN_TOKENS, check_geometry, fit_size
from .probe import check_pixels, open_pillow

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

    from .source import Source

BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited on white."""


def _to_rgb(im: PILImage.Image) -> PILImage.Image:
    """Any Pillow mode -> RGB (alpha composited on BACKGROUND, high bit depths scaled, not clipped)."""
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        elif mode == "F":
            finite = arr[np.isfinite(arr)]
            top = float(finite.max()) if finite.size else 1.0
            scale = 1.0 if top <= 1.0 else (255.0 if top <= 255.0 else 65535.0)
        else:  # 32-bit integer: 16-bit PNGs come this way in older Pillows
            top = float(arr.max()) if arr.size else 0.0
            scale = 255.0 if top <= 255 else (65535.0 if top <= 65535 else float(2**32 - 1))
        grey = np.clip(np.nan_to_num(arr / scale, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
        return Image.fromarray((grey * 255.0 + 0.5).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "CMYK":
        return im.convert("RGB")
    return im.convert("RGB")


def _orientation(im: PILImage.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


def load_image(
    source: Source,
    *,
    max_tokens: int = DEFAULT_IMAGE_TOKENS,
    min_tokens: int = MTMD_MIN_TOKENS,
) -> np.ndarray:
    """The image as HxWx3 uint8 RGB at fit_size(w, h, min_tokens, max_tokens) (see the module docstring).

    Raises BadInput when the input is not an image (audio, video) or cannot be used.
    """

    from .faults import decode_guard

    source.require("image")
    with decode_guard(source.name):
        return _load(source, max_tokens=max_tokens, min_tokens=min(min_tokens, max_tokens))


def _load(source: Source, *, max_tokens: int, min_tokens: int) -> np.ndarray:
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = source.name
    with source.open_file() as f:
        try:
            im = open_pillow(f)
        except Image.DecompressionBombError as e:
            raise BadInput(name, f"is too large to decode safely ({e})") from None
        except UnidentifiedImageError:
            return _load_with_av(source, max_tokens=max_tokens, min_tokens=min_tokens)
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise BadInput(name, f"is not a readable image ({e})") from None
        try:
            with im:
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                orient = _orientation(im)
                w, h = im.size
                if orient in (5, 6, 7, 8):
                    w, h = h, w
                check_pixels(w, h, name)
                check_geometry(w, h, name)
                tw, th = fit_size(w, h, min_tokens=min_tokens, max_tokens=max_tokens)
                if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK"):
                    want = (th, tw) if orient in (5, 6, 7, 8) else (tw, th)
                    im.draft(im.mode, want)  # DCT-domain downscale, never below `want`
                im.load()
                out = ImageOps.exif_transpose(im) if orient != 1 else im
                out = _to_rgb(out)
                if out.size != (tw, th):
                    out = out.resize((tw, th), Image.Resampling.BICUBIC, reducing_gap=3.0)
                arr = np.asarray(out, dtype=np.uint8)
        except BadInput:
            raise
        except Image.DecompressionBombError as e:
            raise BadInput(name, f"is too large to decode safely ({e})") from None
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
            raise BadInput(name, f"cannot be decoded: truncated or corrupt ({e})") from None
    return np.ascontiguousarray(arr)


def _load_with_av(source: Source, *, max_tokens: int, min_tokens: int) -> np.ndarray:
    """First frame of an image format Pillow does not know, decoded by ffmpeg."""
    import av
    import numpy as np

    from .faults import av_bad_input
    from .probe import pick_streams

    name = source.name
    try:
        with source.open_av() as c:
            video, _ = pick_streams(c)
            if video is None:
                raise BadInput(name, "is not an image that can be decoded")
            frame: Any
            for frame in c.decode(video):
                rot = (round((getattr(frame, "rotation", 0) or 0) / 90) * 90) % 360
                w, h = (frame.height, frame.width) if rot in (90, 270) else (frame.width, frame.height)
                check_pixels(w, h, name)
                check_geometry(w, h, name)
                tw, th = fit_size(w, h, min_tokens=min_tokens, max_tokens=max_tokens)
                sw, sh = (th, tw) if rot in (90, 270) else (tw, th)
                arr: Any = frame.to_ndarray(width=sw, height=sh, format="rgb24", interpolation="BICUBIC")
                if rot:
                    arr = np.rot90(arr, rot // 90)
                return np.ascontiguousarray(arr)
    except av.error.FFmpegError as e:
        raise av_bad_input(e, name, during="decode") from None
    raise BadInput(name, "is an image file with no decodable picture")
