"""What an input holds, from container (or image) headers: kind, duration, streams, sizes.

`probe(source)` is free after `open_input` (which probes once to learn the kind); the probe reads the
container headers and decodes at most the first frame of the main stream, to prove the stream decodes
and to read the display rotation that ffmpeg attaches to decoded frames.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import BadInput

if TYPE_CHECKING:
    from .source import Source

# PyAV's stream and container classes are typed per kind (audio/video); the probe treats them alike.
Stream = Any
InputContainer = Any

IMAGE_PIXEL_LIMIT = 89_478_485
"""Images with more pixels than this are refused as decompression bombs (Pillow's own warning level,
~ 9459 x 9459; Pillow itself only refuses at twice that)."""

_PIPE_IMAGE_FORMATS = ("image2", "image2pipe")


@dataclass
class MediaInfo:
    """Container metadata.  Sizes are display sizes (rotation and sample aspect ratio applied)."""

    kind: str  # "image" | "audio" | "video"
    format: str  # ffmpeg demuxer name, or Pillow/magic image format
    duration_ms: int | None = None  # None: unknown (e.g. a live pipe without a length in its header)
    streams: list[dict[str, Any]] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    rotation: int = 0  # degrees counter-clockwise to turn decoded frames for display
    sample_rate: int | None = None
    channels: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    has_audio: bool = False
    has_video: bool = False
    frames: int | None = None  # video frames (if the container says) or image frames (animation)
    bit_rate: int | None = None
    video_stream: int | None = None  # index of the video stream used
    audio_stream: int | None = None  # index of the audio stream used
    video_duration_ms: int | None = None
    audio_duration_ms: int | None = None
    video_origin_pts: int | None = None  # timestamp of the first video frame (time 0 of the frame timeline)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe(source: Source) -> MediaInfo:
    """Metadata of an opened input (cached on the Source: no decoding happens here)."""
    if source.info is None:  # pragma: no cover - open_input always fills it
        if source.kind == "image":
            source.info = probe_image(source, source.format)
        else:
            source.info = probe_media(source)
    return source.info


# ------------------------------------------------------------------------------------------- images


def open_pillow(f: Any) -> Any:
    """Image.open with Pillow's own bomb warning silenced: our pixel limit (`check_pixels`) applies,
    and Pillow's hard limit still raises DecompressionBombError (callers turn it into BadInput)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(f)


def check_pixels(w: int, h: int, name: str) -> None:
    """The decompression-bomb guard: BadInput for more than IMAGE_PIXEL_LIMIT pixels."""
    if w * h > IMAGE_PIXEL_LIMIT:
        raise BadInput(name, f"is {w}x{h} pixels, more than the {IMAGE_PIXEL_LIMIT:,} accepted (decompression bomb "
                             "guard)", "scale it down first")


def probe_image(source: Source, fmt: str) -> MediaInfo:
    """Header of a still image via Pillow (size after EXIF orientation); refuses unusable images."""
    from PIL import Image, UnidentifiedImageError

    from .geometry import check_geometry

    with source.open_file() as f:
        try:
            im = open_pillow(f)
            with im:
                w, h = im.size
                n_frames = int(getattr(im, "n_frames", 1) or 1)
                orientation = 1
                try:
                    orientation = int(im.getexif().get(0x0112, 1) or 1)
                except Exception:  # broken EXIF: ignore orientation, like most viewers
                    orientation = 1
                real_fmt = im.format or fmt
                mode = im.mode
        except Image.DecompressionBombError as e:
            raise BadInput(source.name, f"is too large to decode safely ({e})") from None
        except UnidentifiedImageError:
            if fmt in ("HEIF", "AVIF"):
                return _probe_image_av(source, fmt)
            raise BadInput(source.name, f"looks like a {fmt} image but cannot be read (corrupt or truncated)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise BadInput(source.name, f"is not a readable {fmt} image ({e})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    check_pixels(w, h, source.name)
    check_geometry(w, h, source.name)
    return MediaInfo(
        kind="image",
        format=real_fmt,
        width=w,
        height=h,
        frames=n_frames,
        has_video=False,
        streams=[
            {
                "index": 0,
                "type": "image",
                "codec": real_fmt,
                "width": w,
                "height": h,
                "mode": mode,
                "frames": n_frames,
                "exif_orientation": orientation,
            }
        ],
    )


def _probe_image_av(source: Source, fmt: str) -> MediaInfo:
    """A still image Pillow cannot read (HEIF/AVIF, JPEG XL, ...) decoded by ffmpeg instead."""
    info = probe_media(source, as_image=True)
    info.format = fmt if info.format.startswith("mov") else info.format
    return info


# -------------------------------------------------------------------------------------------- PyAV


def _is_attached_pic(s: Stream) -> bool:
    import av

    try:
        return bool(s.disposition & av.stream.Disposition.attached_pic)
    except Exception:  # pragma: no cover - very old PyAV
        return False


def _decodable(s: Stream) -> bool:
    try:
        ctx = s.codec_context
    except Exception:
        return False
    return ctx is not None and bool(ctx.name)


def _pick(streams: list[Stream]) -> Stream | None:
    """The default-disposition stream if there is one, else the first."""
    import av

    if not streams:
        return None
    for s in streams:
        try:
            if s.disposition & av.stream.Disposition.default:
                return s
        except Exception:  # pragma: no cover
            break
    return streams[0]


def _ms(value: Any, time_base: Any) -> int | None:
    if value is None or time_base is None:
        return None
    return round(float(value * time_base) * 1000)


def pick_streams(c: InputContainer) -> tuple[Stream | None, Stream | None]:
    """(video, audio) streams used for decoding: decodable, and no cover art as video."""
    video = _pick([s for s in c.streams.video if not _is_attached_pic(s) and _decodable(s)])
    audio = _pick([s for s in c.streams.audio if _decodable(s)])
    return video, audio


def _stream_dict(s: Stream) -> dict[str, Any]:
    d: dict[str, Any] = {
        "index": s.index,
        "type": s.type,
        "codec": s.codec_context.name if _decodable(s) else None,
        "decodable": _decodable(s),
        "duration_ms": _ms(s.duration, s.time_base),
    }
    lang = s.metadata.get("language") if s.metadata else None
    if lang and lang != "und":
        d["language"] = lang
    if s.type == "audio" and _decodable(s):
        ctx = s.codec_context
        d.update(sample_rate=ctx.sample_rate, channels=ctx.channels, layout=ctx.layout.name)
    elif s.type == "video":
        if _decodable(s):
            ctx = s.codec_context
            d.update(width=ctx.width, height=ctx.height)
        rate = s.average_rate or s.guessed_rate
        d["fps"] = round(float(rate), 3) if rate else None
        if s.frames:
            d["frames"] = s.frames
        if _is_attached_pic(s):
            d["attached_pic"] = True
    return d


def _first_frame(c: InputContainer, s: Stream, name: str) -> Any:
    """Decode packets of `s` until one frame comes out (proves the stream decodes); None if none does."""
    import av

    errors = 0
    packets = 0
    try:
        for packet in c.demux(s):
            packets += 1
            try:
                frames = s.decode(packet)
            except av.error.EOFError:
                break
            except av.error.FFmpegError:
                errors += 1
                if errors >= 8:
                    break
                continue
            if frames:
                return frames[0]
            if packets >= 400:
                break
    except av.error.FFmpegError as e:
        from .faults import av_bad_input

        raise av_bad_input(e, name, during="decode") from None
    return None


def _check_truncated(
    c: InputContainer, video: Stream | None, audio: Stream | None, size: int | None, name: str
) -> None:
    """Cheap early truncation checks on a file of known size (BadInput)."""
    if not size:
        return
    # 1. an index (mp4/mov sample tables, avi idx1, ...) pointing past the end of the file
    for s in (video, audio):
        if s is None:
            continue
        try:
            entries = s.index_entries
            n = len(entries)
            ends = [entries[i].pos + entries[i].size for i in range(max(0, n - 4), n)]
        except Exception:  # pragma: no cover - index not available
            continue
        if ends and max(ends) > size:
            raise BadInput(
                name,
                f"is truncated: its index points {max(ends) - size:,} bytes past the end of the file",
                "re-download or re-export it",
            )
    # 2. MP3 whose header (Xing/Info frame count) announces more audio than the bytes can hold
    if c.format.name == "mp3" and audio is not None and c.duration:
        rate = audio.bit_rate or 0
        seconds = c.duration / 1_000_000
        if rate > 0 and seconds > 0 and size * 8 / seconds < 0.85 * rate:
            have = size * 8 / rate
            raise BadInput(
                name,
                f"is truncated: its header announces {seconds:.1f} s but the file holds about {have:.1f} s",
                "re-download or re-export it",
            )


def probe_media(source: Source, *, as_image: bool = False) -> MediaInfo:
    """Probe an audio/video container with PyAV (raises BadInput)."""
    name = source.name
    with source._probe_container() as c:
        fmt = c.format.name
        if fmt == "tty":
            raise BadInput(name, "is text, not an audio, video or image file")
        video, audio = pick_streams(c)
        undecodable = [
            s for s in c.streams if s.type in ("audio", "video") and not _decodable(s) and not _is_attached_pic(s)
        ]
        if video is None and audio is None:
            if undecodable:
                raise BadInput(
                    name, "uses a codec this build of ffmpeg cannot decode", "convert it, e.g. to WAV, MP4 or PNG"
                )
            raise BadInput(name, "has no audio or video stream")
        is_image = as_image or (
            video is not None and audio is None and (fmt.endswith("_pipe") or fmt in _PIPE_IMAGE_FORMATS)
        )
        kind = "image" if is_image else ("video" if video is not None else "audio")
        info = MediaInfo(kind=kind, format=fmt, streams=[_stream_dict(s) for s in c.streams])
        for s in undecodable:
            info.notes.append(f"stream {s.index} ({s.type}) uses a codec that cannot be decoded; ignored")
        if c.duration is not None and c.duration > 0:
            info.duration_ms = int(c.duration // 1000)
        if c.bit_rate:
            info.bit_rate = int(c.bit_rate)
        if audio is not None:
            ctx = audio.codec_context
            info.has_audio = True
            info.audio_stream = audio.index
            info.audio_codec = ctx.name
            info.sample_rate = ctx.sample_rate or None
            info.channels = ctx.channels or None
            info.audio_duration_ms = _ms(audio.duration, audio.time_base)
        if video is not None:
            vctx = video.codec_context
            info.has_video = True
            info.video_stream = video.index
            info.video_codec = vctx.name
            rate = video.average_rate or video.guessed_rate
            info.fps = round(float(rate), 3) if rate else None
            info.frames = video.frames or None
            info.video_duration_ms = _ms(video.duration, video.time_base)
            info.width, info.height = vctx.width or None, vctx.height or None
        if info.duration_ms is None:
            known = [d for d in (info.audio_duration_ms, info.video_duration_ms) if d]
            info.duration_ms = max(known) if known else None
        _check_truncated(c, video, audio, source.size if source.seekable else None, name)

        main = video if video is not None else audio
        assert main is not None
        first = _first_frame(c, main, name)
        if first is None:
            what = "video" if main is video else "audio"
            raise BadInput(name, f"has a {what} stream but no frame of it can be decoded (corrupt or truncated)")
        if video is not None and main is video:
            w, h = first.width, first.height
            rot = (round((getattr(first, "rotation", 0) or 0) / 90) * 90) % 360
            sar = video.sample_aspect_ratio or getattr(first, "sample_aspect_ratio", None)
            if sar and sar.numerator > 0 and sar != 1:
                w = max(1, round(w * float(sar)))
            if rot in (90, 270):
                w, h = h, w
            info.width, info.height, info.rotation = w, h, rot
            info.video_origin_pts = first.pts
            from .geometry import check_geometry

            check_geometry(w, h, name)
    if info.kind == "image":
        info.frames = info.frames or 1
    if info.kind == "audio" and info.duration_ms is None and info.audio_duration_ms:
        info.duration_ms = info.audio_duration_ms
    return info
