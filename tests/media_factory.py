"""Small media files generated on the fly for tests (PyAV, numpy, Pillow, soundfile; no ffmpeg CLI).

Every writer takes the destination path and returns it, so tests can write `p = write_tone(tmp_path / "a.mp3")`.
Files are kept tiny (a second or two, small frames) so each test stays well under a second.

Video frames carry their index in their colour: frame i is filled with `frame_color(i)`, so a test can
tell which frame was picked with `frame_index_of(pixels)`.
"""

from __future__ import annotations

import functools
import json
import struct
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

# fmt -> (container format, audio codec, forced sample rate or None, codec options)
AUDIO_FORMATS: dict[str, tuple[str, str, int | None, dict[str, str]]] = {
    "wav": ("wav", "pcm_s16le", None, {}),
    "wav24": ("wav", "pcm_s24le", None, {}),
    "wavf32": ("wav", "pcm_f32le", None, {}),
    "flac": ("flac", "flac", None, {}),
    "mp3": ("mp3", "libmp3lame", None, {}),
    "ogg": ("ogg", "vorbis", None, {"strict": "experimental"}),
    "oggflac": ("ogg", "flac", None, {}),
    "opus": ("ogg", "libopus", 48000, {}),
    "m4a": ("ipod", "aac", None, {}),
    "mp4": ("mp4", "aac", None, {}),
    "mkv": ("matroska", "flac", None, {}),
    "webm": ("webm", "libopus", 48000, {}),
}


VAD_TRACK = Path(__file__).parent / "data" / "vad_track"  # recorded speech, music and noises (README there)


@functools.lru_cache(maxsize=1)
def _speech_pool() -> np.ndarray:
    import soundfile as sf

    x, _ = sf.read(VAD_TRACK / "track.flac", dtype="float32")
    truth = json.loads((VAD_TRACK / "truth.json").read_text())
    bed = truth["speech"][2]  # the turn over a music bed stays out
    return np.concatenate([x[a:b] for a, b in truth["prompts"] if not bed[0] <= a < bed[1]])


def recorded_speech(n: int, offset: int = 0) -> np.ndarray:
    """`n` samples of real recorded speech (16 kHz float32, about -20 dBFS): the prompts of the VAD
    test track back to back, 33 s with no pause a detector cuts at, looped from `offset`. The
    stand-in wherever a test needs speech (noise bursts are no speech to the default detector)."""
    pool = _speech_pool()
    idx = (offset + np.arange(n)) % pool.size
    return pool[idx].copy()


def speech_file(path: str | Path, bursts: list[tuple[float, float]], total: float) -> Path:
    """Recorded speech at known times (seconds) in silence, as a 16 kHz WAV of `total` seconds."""
    import soundfile as sf

    x = np.zeros(int(total * 16000), dtype=np.float32)
    for a, b in bursts:
        n = int((b - a) * 16000)
        x[int(a * 16000):int(a * 16000) + n] = recorded_speech(n, offset=int(a * 16000))
    sf.write(path, x, 16000)
    return Path(path)


def signal(
    kind: str, seconds: float, sr: int, channels: int, *, freq: float = 440.0, amplitude: float = 0.5, seed: int = 0
) -> np.ndarray:
    """float32 samples shaped (channels, n): a sine (each channel a different frequency), noise or silence."""
    n = round(seconds * sr)
    t = np.arange(n, dtype=np.float64) / sr
    if kind == "sine":
        rows = [amplitude * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
        return np.stack(rows).astype(np.float32)
    if kind == "noise":
        rng = np.random.default_rng(seed)
        return (amplitude * rng.uniform(-1, 1, size=(channels, n))).astype(np.float32)
    if kind == "silence":
        return np.zeros((channels, n), dtype=np.float32)
    raise ValueError(kind)


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo", 6: "5.1"}.get(channels, f"{channels}c")


def _encode_audio(
    container: Any, data: np.ndarray, sr: int, codec: str, options: dict[str, str], layout: str | None = None
) -> None:
    import av

    channels = data.shape[0]
    layout = layout or _layout(channels)
    stream = container.add_stream(codec, rate=sr)
    stream.layout = layout
    if options:
        stream.codec_context.options = dict(options)
    fmt = stream.format.name
    frame_size = stream.codec_context.frame_size or 1024
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=sr, frame_size=frame_size)
    pts = 0
    for i in range(0, data.shape[1], 4096):
        # packed: PyAV's from_ndarray miscounts the planes of planar 8-channel audio
        chunk = np.ascontiguousarray(data[:, i : i + 4096].T).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout=layout)
        frame.sample_rate = sr
        frame.pts = pts
        pts += frame.samples
        for out in resampler.resample(frame):
            container.mux(stream.encode(out))
    for out in resampler.resample(None):
        container.mux(stream.encode(out))
    container.mux(stream.encode(None))


def write_tone(
    path: str | Path,
    fmt: str = "wav",
    seconds: float = 1.0,
    sr: int = 16000,
    channels: int = 1,
    *,
    kind: str = "sine",
    freq: float = 440.0,
    amplitude: float = 0.5,
    layout: str | None = None,
) -> Path:
    """An audio-only file: `fmt` is a key of AUDIO_FORMATS (wav, flac, mp3, ogg, opus, m4a, mp4, mkv, webm...).

    `layout` names the channel layout (e.g. "7.1"); by default mono, stereo, 5.1 or "<n>c" (unnamed)."""
    import av

    path = Path(path)
    cfmt, codec, forced_sr, options = AUDIO_FORMATS[fmt]
    sr = forced_sr or sr
    data = signal(kind, seconds, sr, channels, freq=freq, amplitude=amplitude)
    if codec == "vorbis" and channels != 2:  # ffmpeg's own Vorbis encoder writes stereo only
        data = np.repeat(data[:1], 2, axis=0)
    with av.open(str(path), "w", format=cfmt) as container:
        _encode_audio(container, data, sr, codec, options, layout)
    return path


def write_mp3_with_cover(path: str | Path, seconds: float = 0.5, sr: int = 16000) -> Path:
    """An MP3 carrying a PNG cover picture (an ID3 APIC frame: a video stream marked attached_pic)."""
    import av

    path = Path(path)
    with av.open(str(path), "w", format="mp3") as c:
        a = c.add_stream("libmp3lame", rate=sr)
        a.layout = "mono"
        img = c.add_stream("png", rate=1)
        img.width, img.height, img.pix_fmt = 64, 64, "rgb24"
        img.disposition = av.stream.Disposition.attached_pic
        pic = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 200, np.uint8), format="rgb24")
        for pkt in img.encode(pic):
            c.mux(pkt)
        c.mux(img.encode(None))
        fr = av.AudioFrame.from_ndarray(signal("sine", seconds, sr, 1), format="fltp", layout="mono")
        fr.sample_rate = sr
        fr.pts = 0
        rs = av.AudioResampler(format=a.format.name, layout="mono", rate=sr, frame_size=a.codec_context.frame_size)
        for out in [*rs.resample(fr), *rs.resample(None)]:
            c.mux(a.encode(out))
        c.mux(a.encode(None))
    return path


def write_float_wav(path: str | Path, samples: np.ndarray, sr: int = 16000) -> Path:
    """A 32-bit float WAV with exactly these samples (may hold NaN/inf or values beyond [-1, 1])."""
    import soundfile as sf

    path = Path(path)
    sf.write(str(path), np.asarray(samples, dtype=np.float32), sr, subtype="FLOAT", format="WAV")
    return path


def frame_color(i: int) -> tuple[int, int, int]:
    """The flat colour of video frame i (distinct for i < 25 even after lossy coding)."""
    return ((i * 10) % 250, 255 - (i * 10) % 250, 128)


def frame_index_of(pixels: np.ndarray) -> int:
    """Which frame index a decoded (flat-coloured) frame shows, from its mean red level."""
    return round(float(pixels[..., 0].mean()) / 10)


def write_video(
    path: str | Path,
    seconds: float = 2.0,
    fps: int = 10,
    size: tuple[int, int] = (160, 96),
    with_audio: bool = False,
    *,
    moov_at_end: bool = True,
    codec: str | None = None,
    rotation: int = 0,
    split: bool = False,
    audio_codec: str | None = None,
    gop: int | None = None,
    preset: str = "ultrafast",
) -> Path:
    """A short video; the container comes from the suffix (.mp4 .mov .mkv .webm .avi .ts).

    Frame i is flat `frame_color(i)` (or, with `split`, that colour on top and black below, to check
    orientation).  `moov_at_end` (mp4/mov only): the index after the media data, as plain ffmpeg writes it;
    False writes it first (faststart).  `rotation` sets a display matrix (degrees counter-clockwise).
    """
    import av

    path = Path(path)
    suffix = path.suffix.lower()
    fmt = {
        ".mp4": "mp4",
        ".m4v": "mp4",
        ".mov": "mov",
        ".mkv": "matroska",
        ".webm": "webm",
        ".avi": "avi",
        ".ts": "mpegts",
    }[suffix]
    if codec is None:
        codec = "libvpx-vp9" if fmt == "webm" else "libx264"
    if audio_codec is None:
        audio_codec = "libopus" if fmt == "webm" else ("mp3" if fmt == "avi" else "aac")
        if audio_codec == "mp3":
            audio_codec = "libmp3lame"
    options = {} if moov_at_end or fmt not in ("mp4", "mov") else {"movflags": "faststart"}
    w, h = size
    n = round(seconds * fps)
    with av.open(str(path), "w", format=fmt, options=options) as container:
        vs = container.add_stream(codec, rate=fps)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p"
        vs.time_base = Fraction(1, fps)
        opts = {"crf": "18"} if codec == "libx264" else {}
        if codec == "libx264":
            opts["preset"] = preset  # "ultrafast" has no B-frames; "veryfast" has (3, pyramid)
        if codec.startswith("libvpx"):
            opts = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}
        vs.codec_context.options = opts
        if gop:
            vs.codec_context.gop_size = gop
        if rotation:
            vs.set_display_rotation(rotation)
        asr = 48000
        a_stream = None
        if with_audio:
            a_stream = container.add_stream(audio_codec, rate=asr)
            a_stream.layout = "mono"
        for i in range(n):
            arr = np.empty((h, w, 3), dtype=np.uint8)
            arr[:] = frame_color(i)
            if split:
                arr[h // 2 :] = 0
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(vs.encode(frame))
        container.mux(vs.encode(None))
        if a_stream is not None:
            data = signal("sine", seconds, asr, 1)
            fmt_name = a_stream.format.name
            fs = a_stream.codec_context.frame_size or 1024
            rs = av.AudioResampler(format=fmt_name, layout="mono", rate=asr, frame_size=fs)
            af = av.AudioFrame.from_ndarray(data, format="fltp", layout="mono")
            af.sample_rate = asr
            af.pts = 0
            for out in [*rs.resample(af), *rs.resample(None)]:
                container.mux(a_stream.encode(out))
            container.mux(a_stream.encode(None))
    return path


def write_image(
    path: str | Path,
    size: tuple[int, int] = (64, 48),
    *,
    mode: str = "RGB",
    fmt: str | None = None,
    color: Any = None,
    exif_orientation: int | None = None,
    frames: int = 1,
    split: bool = False,
) -> Path:
    """An image via Pillow.  `fmt` defaults from the suffix; `frames` > 1 writes an animated GIF/PNG/WebP.

    `split`: red top half, blue bottom half (to check orientation).  `exif_orientation` 1..8 is stored
    in the EXIF (JPEG, PNG, WebP, TIFF).
    """
    from PIL import Image

    path = Path(path)
    w, h = size

    def make(i: int) -> Image.Image:
        if split:
            arr = np.zeros((h, w, 3), dtype=np.uint8)
            arr[: h // 2] = (255, 0, 0)
            arr[h // 2 :] = (0, 0, 255)
            im = Image.fromarray(arr, "RGB")
            return im if mode == "RGB" else im.convert(mode)
        c = color if color is not None else ((40 * i) % 256, 100, 200)
        if mode in ("I;16", "I", "F") and not isinstance(c, int | float):
            c = 40000
        if mode in ("L", "1", "P") and not isinstance(c, int):
            c = 128
        if mode == "RGBA" and len(c) == 3:
            c = (*c, 128)
        if mode == "LA" and not (isinstance(c, tuple) and len(c) == 2):
            c = (128, 128)
        if mode == "CMYK" and len(c) == 3:
            c = (0, 255, 255, 0)
        return Image.new(mode, (w, h), c)

    imgs = [make(i) for i in range(frames)]
    kwargs: dict[str, Any] = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    if frames > 1:
        kwargs.update(save_all=True, append_images=imgs[1:], duration=100, loop=0)
    imgs[0].save(str(path), format=fmt, **kwargs)
    return path


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png_header(path: str | Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (e.g. 0x0, or huge, for bomb tests) with a 1-row body."""
    path = Path(path)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" + b"\x00" * 3 * max(1, min(width, 16)))
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def write_wav_with_format_tag(path: str | Path, tag: int = 0x7777, seconds: float = 0.5, sr: int = 16000) -> Path:
    """A WAV whose fmt chunk names a codec nobody decodes (unsupported codec test)."""
    path = Path(path)
    n = round(seconds * sr)
    data = bytes(2 * n)
    fmt = struct.pack("<HHIIHH", tag, 1, sr, sr * 2, 2, 16)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    return path


def truncate(path: str | Path, fraction: float = 0.5, dest: str | Path | None = None) -> Path:
    """Keep the first `fraction` of a file's bytes (in place, or into `dest`)."""
    path = Path(path)
    data = path.read_bytes()
    out = Path(dest) if dest is not None else path
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def write_random(path: str | Path, n: int = 20000, seed: int = 1) -> Path:
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def write_text(path: str | Path, text: str = "hello world\nthis is not media\n" * 50) -> Path:
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


class Pipe:
    """A non-seekable, pipe-like binary reader over bytes (what sys.stdin.buffer is for `cat f | prog -`).

    Reads return at most `chunk` bytes, like a pipe does.
    """

    def __init__(self, data: bytes, chunk: int = 4096) -> None:
        self._data = data
        self._pos = 0
        self._chunk = chunk
        self.closed = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = len(self._data) - self._pos
        n = min(n, self._chunk)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def read1(self, n: int = -1) -> bytes:
        return self.read(n)

    def tell(self) -> int:
        raise OSError("pipe: not seekable")

    def seek(self, *_: Any) -> int:
        raise OSError("pipe: not seekable")

    def fileno(self) -> int:
        raise OSError("no fileno")

    @property
    def consumed(self) -> int:
        return self._pos


def corrupt_audio_packets(path: str | Path, seed: int = 3) -> Path:
    """Overwrite the bytes of every audio packet of a container (in place) with random bytes: the
    headers and the video stay intact, so the file opens and probes, but its audio does not decode."""
    import av

    path = Path(path)
    with av.open(str(path)) as c:
        spans = [(p.pos, p.size) for p in c.demux(c.streams.audio[0]) if p.pos is not None and p.size]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for pos, size in spans:
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path
