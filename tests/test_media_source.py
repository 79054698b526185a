"""open_input: kinds from content, bad inputs, standard input (spooled or streamed)."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest

from gemmapipe.core.errors import BadInput, ExitStatus
from gemmapipe.core.media.audio import read_audio
from gemmapipe.core.media.frames import iter_frames
from gemmapipe.core.media.image import load_image
from gemmapipe.core.media.probe import probe
from gemmapipe.core.media.source import isobmff_layout, open_input, sniff_image

from media_factory import (
    Pipe,
    truncate,
    write_image,
    write_mp3_with_cover,
    write_png_header,
    write_random,
    write_text,
    write_tone,
    write_video,
    write_wav_with_format_tag,
)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "ogg", "opus", "m4a", "mkv", "webm"])
def test_audio_kind_from_content_not_name(tmp_path: Path, fmt: str) -> None:
    p = write_tone(tmp_path / f"clip.{fmt}", fmt, 0.5, 22050, 2)
    disguised = p.rename(tmp_path / "clip.jpg")  # the extension lies
    with open_input(str(disguised)) as src:
        assert src.kind == "audio"
        assert src.path == str(disguised)
        info = probe(src)
        assert info.has_audio and not info.has_video
        assert info.duration_ms is not None and 400 <= info.duration_ms <= 600
        assert info.channels == 2


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".ts"])
def test_video_kind(tmp_path: Path, suffix: str) -> None:
    p = write_video(tmp_path / f"v{suffix}", seconds=1.0, with_audio=True)
    with open_input(str(p)) as src:
        assert src.kind == "video"
        info = probe(src)
        assert info.has_audio and info.has_video
        assert (info.width, info.height) == (160, 96)
        assert info.fps == pytest.approx(10, abs=0.5)


def test_image_kind(tmp_path: Path) -> None:
    p = write_image(tmp_path / "pic.mp3", fmt="PNG")  # named like audio, is a PNG
    with open_input(str(p)) as src:
        assert src.kind == "image"
        assert src.format == "PNG"


# ------------------------------------------------------------------------------------- bad inputs


def _bad(spec: str, match: str, **kw: object) -> BadInput:
    with pytest.raises(BadInput, match=match) as ei, open_input(spec, **kw):  # type: ignore[arg-type]
        pass
    assert ei.value.exit_status == ExitStatus.BAD_INPUT
    return ei.value


def test_missing_path(tmp_path: Path) -> None:
    _bad(str(tmp_path / "nope.wav"), "no such file")


def test_directory(tmp_path: Path) -> None:
    _bad(str(tmp_path), "directory")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    _bad(str(p), "empty")


def test_empty_stdin() -> None:
    _bad("-", "empty", stdin=Pipe(b""))


def test_random_bytes(tmp_path: Path) -> None:
    _bad(str(write_random(tmp_path / "noise.mp4")), "not a readable")


def test_text_file(tmp_path: Path) -> None:
    # ffmpeg would happily open this as an ANSI-art "video" (tty demuxer)
    _bad(str(write_text(tmp_path / "notes.txt")), "text")
    _bad(str(write_text(tmp_path / "playlist.m3u8", "#EXTM3U\n#EXTINF:10,\nhttp://example.invalid/a.ts\n")), "text")


def test_text_on_stdin() -> None:
    _bad("-", "text", stdin=Pipe(b"just some words\n" * 100))


def test_truncated_mp3(tmp_path: Path) -> None:
    p = truncate(write_tone(tmp_path / "a.mp3", "mp3", 2.0, 44100, 1), 0.5)
    _bad(str(p), "truncated")


def test_truncated_mp4_index_at_end(tmp_path: Path) -> None:
    p = truncate(write_video(tmp_path / "v.mp4", seconds=1.0, with_audio=True), 0.5)
    _bad(str(p), "not a readable|truncated")


def test_truncated_mp4_index_first(tmp_path: Path) -> None:
    p = truncate(write_video(tmp_path / "v.mp4", seconds=1.0, with_audio=True, moov_at_end=False), 0.5)
    _bad(str(p), "truncated")


def test_truncated_ogg(tmp_path: Path) -> None:
    p = truncate(write_tone(tmp_path / "a.ogg", "ogg", 2.0, 44100, 1), 0.5)
    _bad(str(p), "truncated")


def test_truncated_flac_fails_when_decoded(tmp_path: Path) -> None:
    p = truncate(write_tone(tmp_path / "a.flac", "flac", 2.0, 16000, 1, kind="noise"), 0.5)
    with pytest.raises(BadInput, match="truncated|corrupt"), open_input(str(p)) as src:
        read_audio(src)


def test_unsupported_codec(tmp_path: Path) -> None:
    _bad(str(write_wav_with_format_tag(tmp_path / "odd.wav")), "codec")


def test_zero_size_image(tmp_path: Path) -> None:
    _bad(str(write_png_header(tmp_path / "zero.png", 0, 0)), "cannot be read|0x0|empty")


def test_extreme_aspect_image(tmp_path: Path) -> None:
    e = _bad(str(write_image(tmp_path / "strip.png", (1, 100000))), "aspect ratio")
    assert e.hint


def test_decompression_bomb(tmp_path: Path) -> None:
    _bad(str(write_png_header(tmp_path / "bomb.png", 30000, 30000)), "too large|bomb")


def test_audio_when_image_required(tmp_path: Path) -> None:
    with open_input(str(write_tone(tmp_path / "a.wav"))) as src, pytest.raises(BadInput, match="audio file"):
        load_image(src)


def test_no_audio_when_audio_required(tmp_path: Path) -> None:
    with open_input(str(write_video(tmp_path / "v.mp4", seconds=0.5))) as src:
        assert src.kind == "video"
        with pytest.raises(BadInput, match="no audio"):
            read_audio(src)


def test_cover_art_does_not_make_a_video(tmp_path: Path) -> None:
    with open_input(str(write_mp3_with_cover(tmp_path / "song.mp3"))) as src:
        assert any(s.get("attached_pic") for s in probe(src).streams)
        assert src.kind == "audio"
        assert not probe(src).has_video
        assert read_audio(src).shape[0] == pytest.approx(8000, abs=1200)


# ------------------------------------------------------------------------------------------ stdin


def test_stdin_mp4_index_at_end_is_spooled(tmp_path: Path) -> None:
    data = write_video(tmp_path / "v.mp4", seconds=1.0, with_audio=True).read_bytes()
    assert isobmff_layout(data[:65536]) == "mdat-first"
    with open_input("-", stdin=Pipe(data)) as src:
        assert src.spooled and not src.streamed
        assert src.kind == "video"
        assert src.path is not None and os.path.exists(src.path)
        spool = src.path
        assert read_audio(src).shape[0] == pytest.approx(16000, abs=400)
        assert len(list(iter_frames(src))) == 1
    assert not os.path.exists(spool)  # removed on exit


def test_stdin_mp4_index_first_is_streamed(tmp_path: Path) -> None:
    data = write_video(tmp_path / "v.mp4", seconds=1.0, with_audio=True, moov_at_end=False).read_bytes()
    assert isobmff_layout(data[:65536]) == "moov-first"
    with open_input("-", stdin=Pipe(data)) as src:
        assert src.streamed and not src.spooled
        assert src.kind == "video"
        assert read_audio(src).shape[0] == pytest.approx(16000, abs=400)
        assert len(list(iter_frames(src, fps=2))) == 2  # a second pass over the kept copy


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_stdin_audio_is_streamed(tmp_path: Path, fmt: str) -> None:
    p = write_tone(tmp_path / f"a.{fmt}", fmt, 1.0, 16000, 1)
    data = p.read_bytes()
    with open_input(str(p)) as ref:
        expect = read_audio(ref)
        sha = ref.sha256()
    pipe = Pipe(data)
    with open_input("-", stdin=pipe, single_pass=True) as src:
        assert src.streamed and not src.spooled and src.path is None
        assert src.kind == "audio"
        assert src.name == "<stdin>"
        got = read_audio(src)
        with pytest.raises(RuntimeError):
            read_audio(src)  # single pass: no second decode
    assert pipe.consumed == len(data)
    assert abs(got.shape[0] - expect.shape[0]) <= 400
    with open_input("-", stdin=Pipe(data)) as src:
        assert src.sha256() == sha
        assert abs(read_audio(src).shape[0] - expect.shape[0]) <= 400


def test_stdin_pipe_is_not_read_ahead_when_streaming(tmp_path: Path) -> None:
    from gemmapipe.core.media.audio import iter_audio

    data = write_tone(tmp_path / "a.wav", "wav", 90.0, 16000, 1).read_bytes()  # 2.9 MB
    pipe = Pipe(data, chunk=65536)
    with open_input("-", stdin=pipe, single_pass=True) as src:
        blocks = iter_audio(src, block_samples=16000)
        next(blocks)
        # decoding started long before the pipe was drained (the decoder runs at most ~30 s ahead)
        assert pipe.consumed < len(data) // 2
        blocks.close()


def test_stdin_seekable(tmp_path: Path) -> None:
    data = write_video(tmp_path / "v.mkv", seconds=1.0, with_audio=True).read_bytes()
    with open_input("-", stdin=io.BytesIO(data)) as src:
        assert not src.streamed and not src.spooled
        assert src.kind == "video"
        assert read_audio(src).shape[0] > 15000
        assert len(list(iter_frames(src))) == 1


def test_stdin_image_is_spooled(tmp_path: Path) -> None:
    data = write_image(tmp_path / "p.png", (100, 60)).read_bytes()
    with open_input("-", stdin=Pipe(data)) as src:
        assert src.kind == "image" and src.spooled
        assert load_image(src).ndim == 3


def test_named_pipe_path(tmp_path: Path) -> None:
    data = write_tone(tmp_path / "a.flac", "flac", 0.5, 16000, 1).read_bytes()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed)
    t.start()
    try:
        with open_input(str(fifo)) as src:
            assert src.kind == "audio" and src.streamed
            assert read_audio(src).shape[0] == pytest.approx(8000, abs=200)
    finally:
        t.join(5)


def test_sniffers() -> None:
    assert sniff_image(b"\x89PNG\r\n\x1a\n....") == "PNG"
    assert sniff_image(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_image(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff_image(b"\x00\x00\x00\x1cftypavif") == "AVIF"
    assert isobmff_layout(b"ID3\x03") is None
