"""Nothing the user gave is lost (issue 13): standard input that fails, never ends or is closed;
channel layouts; audio tracks that fail and NaN samples are said, not hidden; names that would break
the one-line error.  Every case goes through the CLI and checks the exit status, stderr, stdout and
what is left on disk (no spool files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.parts import Audio
from gemmapipe.core.errors import ExitStatus

from fake_engine import fake_engine  # noqa: F401  (fixture)
from media_factory import (
    Pipe,
    corrupt_audio_packets,
    recorded_speech,
    truncate,
    write_float_wav,
    write_image,
    write_random,
    write_tone,
    write_video,
)

pytestmark = pytest.mark.usefixtures("fake_model")  # see conftest.py

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def wav_header(rate: int = 16000, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV header announcing an endless data chunk (what a live recorder writes to a pipe)."""
    import struct

    fmt = struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", 0xFFFFFFFF)


class Endless:
    """A pipe: `head`, then `fill` bytes "for ever": up to `budget` bytes, then end of file (so that a
    regression fails the test instead of filling the disk)."""

    def __init__(self, head: bytes, fill: bytes = b"\x00", budget: int = 64 << 20) -> None:
        self.head = head
        self.fill = fill
        self.budget = budget
        self.given = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        n = 65536 if n is None or n < 0 else min(n, 1 << 20, self.budget - self.given)
        if n <= 0:
            return b""
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
        else:
            out = self.fill * (n // len(self.fill) or 1)
        self.given += len(out)
        return out


class Stdin:
    """What sys.stdin is, over a binary reader (only .buffer is used for `-`)."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer

    def isatty(self) -> bool:
        return False

    def read(self) -> str:
        return ""


class Failing(Pipe):
    """A pipe whose reads fail with EIO after `ok` bytes."""

    def __init__(self, data: bytes, ok: int) -> None:
        super().__init__(data)
        self.ok = ok

    def read(self, n: int = -1) -> bytes:
        if self.consumed >= self.ok:
            raise OSError(5, "Input/output error")
        return super().read(min(n if n and n > 0 else 4096, self.ok - self.consumed))


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$TMPDIR for the run (in this process and in the CLI subprocesses)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def spools(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def one_error(err: str, text: str) -> None:
    """stderr is exactly one error line (and at most one hint), and the error says `text`."""
    lines = err.splitlines()
    assert lines and lines[0].startswith("gemmapipe: error: ") and text in lines[0], err
    assert all(x.startswith("gemmapipe: hint: ") for x in lines[1:]) and len(lines) <= 2, err
    assert "Traceback" not in err and "internal" not in err


def cli(*args: str, stdin: Any = None, shell_stdin: str | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    """The real command in a subprocess (the environment, TMPDIR included, is this test's)."""
    cmd = [sys.executable, "-m", "gemmapipe", *args]
    if shell_stdin is not None:  # e.g. "<&-": bash sets stdin up, then becomes the command
        import shlex

        cmd = ["bash", "-c", "exec " + " ".join(map(shlex.quote, cmd)) + " " + shell_stdin]
    return subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kw)


# ----------------------------------------------------------------------------------- standard input


def _bad_inputs(tmp: Path) -> dict[str, bytes]:
    mp4 = write_video(tmp / "v.mp4", seconds=2.0, fps=10, with_audio=True)  # index at the end: spooled
    return {
        "png-magic-then-junk": PNG_MAGIC + bytes(range(256)) * 64,  # spooled whole, Pillow refuses it
        "truncated-mp4": truncate(mp4, 0.5, tmp / "t.mp4").read_bytes(),  # spooled whole, probe fails
        "random-after-ftyp": b"\x00\x00\x00\x18ftypisom" + write_random(tmp / "r").read_bytes(),
        "wav-header-junk-body": wav_header()[:20] + b"\xff" * 5000,  # streamed (a feed spool), probe fails
        "mpeg-ts-junk": b"\x47" + write_random(tmp / "r2", seed=7).read_bytes(),
    }


@pytest.mark.parametrize("case", ["png-magic-then-junk", "truncated-mp4", "random-after-ftyp",
                                  "wav-header-junk-body", "mpeg-ts-junk"])
@pytest.mark.parametrize("command", ["describe", "transcribe"])
def test_stdin_that_fails_while_probed_leaves_no_spool(case: str, command: str, tmp_path: Path, spool_dir: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       fake_engine: list) -> None:  # noqa: F811
    data = _bad_inputs(tmp_path)[case]
    monkeypatch.setattr(sys, "stdin", Stdin(Pipe(data)))
    assert run([command, "-"]) == ExitStatus.BAD_INPUT
    out = capsys.readouterr()
    assert out.out == ""
    one_error(out.err, "gemmapipe: error: <stdin>: ")
    assert spools(spool_dir) == []
    assert not fake_engine  # refused before any model was loaded


@pytest.mark.parametrize("head", [PNG_MAGIC, wav_header()], ids=["png-spooled-whole", "wav-streamed"])
def test_endless_stdin_stops_at_the_spool_limit(head: bytes, spool_dir: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch,
                                                fake_engine: list) -> None:  # noqa: F811
    monkeypatch.setenv("GEMMAPIPE_SPOOL_MAX", "2M")
    pipe = Endless(head, b"\x01\x00")
    monkeypatch.setattr(sys, "stdin", Stdin(pipe))
    command = "describe" if head == PNG_MAGIC else "transcribe"
    assert run([command, "-"]) == ExitStatus.BAD_INPUT
    out = capsys.readouterr()
    assert out.out == ""
    one_error(out.err, "gemmapipe: error: <stdin>: is larger than the 2 MiB spool limit")
    assert "GEMMAPIPE_SPOOL_MAX" in out.err  # the hint says how to raise it
    assert 2 << 20 <= pipe.given <= (2 << 20) + (2 << 20)  # it stopped reading near the limit
    assert spools(spool_dir) == []


def test_a_stdin_under_the_spool_limit_still_works(tmp_path: Path, spool_dir: Path,
                                                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                   fake_engine: list) -> None:  # noqa: F811
    png = write_image(tmp_path / "i.png", size=(96, 96)).read_bytes()
    monkeypatch.setenv("GEMMAPIPE_SPOOL_MAX", str(len(png)))  # exactly its size is allowed
    monkeypatch.setattr(sys, "stdin", Stdin(Pipe(png)))
    fake_engine.replies = ["a square"]
    assert run(["describe", "-"]) == 0
    assert capsys.readouterr().out == "a square\n"
    monkeypatch.setenv("GEMMAPIPE_SPOOL_MAX", str(len(png) - 1))
    monkeypatch.setattr(sys, "stdin", Stdin(Pipe(png)))
    assert run(["describe", "-"]) == ExitStatus.BAD_INPUT
    one_error(capsys.readouterr().err, f"is larger than the {len(png) - 1:,} bytes spool limit")
    assert spools(spool_dir) == []


@pytest.mark.parametrize("value", ["lots", "-1", "0", "4X", "1.5G"])
def test_a_bad_spool_limit_is_a_usage_error(value: str, tmp_path: Path, spool_dir: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMAPIPE_SPOOL_MAX", value)
    monkeypatch.setattr(sys, "stdin", Stdin(Pipe(PNG_MAGIC + b"\x00" * 100)))
    assert run(["describe", "-"]) == ExitStatus.USAGE
    out = capsys.readouterr()
    one_error(out.err, f"gemmapipe: error: GEMMAPIPE_SPOOL_MAX: is not a size: {value!r}")
    assert out.out == "" and spools(spool_dir) == []


def test_spool_limit_units() -> None:
    from gemmapipe.core.media import source

    env = os.environ.get("GEMMAPIPE_SPOOL_MAX")
    try:
        for text, n in [("4G", 4 << 30), ("4GiB", 4 << 30), ("512m", 512 << 20), ("3KB", 3 << 10),
                        ("12345", 12345), ("1T", 1 << 40), ("", 4 << 30)]:
            os.environ["GEMMAPIPE_SPOOL_MAX"] = text
            assert source.spool_limit() == n, text
        assert source.format_size(4 << 30) == "4 GiB" and source.format_size(1536 << 20) == "1536 MiB"
    finally:
        if env is None:
            os.environ.pop("GEMMAPIPE_SPOOL_MAX", None)
        else:
            os.environ["GEMMAPIPE_SPOOL_MAX"] = env


def test_full_spool_disk_blames_the_input_not_the_output(spool_dir: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from gemmapipe.core.media import source

    real_write = os.write

    def full(fd: int, data: Any) -> int:
        if fd > 2 and os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("gemmapipe-stdin-"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    monkeypatch.setattr(source.os, "write", full)
    monkeypatch.setattr(sys, "stdin", Stdin(Endless(PNG_MAGIC)))
    assert run(["describe", "-"]) == ExitStatus.ERROR
    out = capsys.readouterr()
    one_error(out.err, "gemmapipe: error: <stdin>: cannot be copied to a temporary file in")
    assert "No space left on device" in out.err and "output" not in out.err
    assert spools(spool_dir) == []


def test_stdin_read_error_is_one_line(spool_dir: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", Stdin(Failing(PNG_MAGIC + b"\x00" * 300000, ok=100000)))
    assert run(["describe", "-"]) == ExitStatus.BAD_INPUT
    one_error(capsys.readouterr().err, "gemmapipe: error: <stdin>: cannot be read (Input/output error)")
    assert spools(spool_dir) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_spooling_removes_the_spool(sig: int, spool_dir: Path) -> None:
    proc = cli("describe", "-", stdin=subprocess.PIPE)
    assert proc.stdin is not None

    def feed() -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(PNG_MAGIC)
            block = b"\x00" * (1 << 20)
            for _ in range(256):  # bounded: a regression must not fill the disk
                proc.stdin.write(block)
            proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.stat().st_size > (4 << 20) for p in spool_dir.iterdir()):
        time.sleep(0.05)  # until it is well into spooling
    assert spools(spool_dir), "never started spooling"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitStatus.INTERRUPTED, err
    assert b"Traceback" not in err and b"interrupted" in err
    assert spools(spool_dir) == []


@pytest.mark.parametrize(("args", "status", "subject"), [
    (["transcribe", "-"], ExitStatus.BAD_INPUT, "<stdin>"),
    (["describe", "-"], ExitStatus.BAD_INPUT, "<stdin>"),
    (["transcribe", "--dry-run", "-"], ExitStatus.BAD_INPUT, "<stdin>"),
    (["video", "-"], ExitStatus.BAD_INPUT, "<stdin>"),
    (["chat", "-a", "-", "what is it?"], ExitStatus.BAD_INPUT, "<stdin>"),
    (["transcribe", "--files-from", "-"], ExitStatus.USAGE, "--files-from -"),
    (["describe", "--dry-run", "--files-from", "-"], ExitStatus.USAGE, "--files-from -"),
])
def test_closed_stdin_is_one_clear_line(args: list[str], status: int, subject: str, spool_dir: Path) -> None:
    proc = cli(*args, shell_stdin="<&-")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert out == b""
    one_error(err.decode(), f"gemmapipe: error: {subject}: standard input is closed")
    assert spools(spool_dir) == []


def test_chat_prompt_with_closed_stdin_still_answers(spool_dir: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     fake_engine: list) -> None:  # noqa: F811
    monkeypatch.setattr(sys, "stdin", None)  # what Python sets when fd 0 is closed
    fake_engine.replies = ["hello"]
    assert run(["chat", "hi"]) == 0
    assert capsys.readouterr().out == "hello\n"
    assert run(["chat"]) == ExitStatus.USAGE  # no prompt, no terminal: nothing to ask (not an internal error)
    out = capsys.readouterr()
    one_error(out.err, "gemmapipe: error: prompt: nothing to ask")
    assert out.out == ""


# ------------------------------------------------------------------------------------ channel layouts


@pytest.mark.parametrize(("fmt", "channels", "layout", "rate"), [
    ("wav", 3, None, 16000),
    ("wav", 5, None, 44100),
    ("wav", 7, None, 16000),
    ("wav", 8, None, 16000),  # no channel mask: an unnamed 8-channel layout
    ("wav", 8, "7.1", 48000),
    ("m4a", 8, "7.1", 48000),  # AAC decodes to planar float: 8 planes
    ("m4a", 8, "7.1", 16000),
    ("flac", 8, "7.1", 44100),
    ("wav", 16, None, 16000),
])
def test_any_channel_layout_is_mixed_to_mono(fmt: str, channels: int, layout: str | None, rate: int, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             fake_engine: list) -> None:  # noqa: F811
    f = write_tone(tmp_path / f"c{channels}.{fmt.replace('wav', 'wav')}", fmt, seconds=1.0, sr=rate,
                   channels=channels, layout=layout)
    fake_engine.replies = ["a tone"]
    assert run(["chat", "-a", str(f), "what is this?"]) == 0
    out = capsys.readouterr()
    assert out.out == "a tone\n" and out.err == ""
    audio = [p for p in fake_engine[0].requests[0][0][0].parts if isinstance(p, Audio)]
    samples = np.concatenate([a.samples for a in audio])
    assert abs(samples.size - 16000) <= 1100  # one second at 16 kHz (AAC adds its priming)
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    assert 0.02 < rms <= 0.5 and np.all(np.abs(samples) <= 1.0)  # sound, not silence, and no clipping


def test_seven_one_through_a_pipe_and_transcribe(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 fake_engine: list) -> None:  # noqa: F811
    import soundfile as sf

    from media_factory import recorded_speech

    x = np.zeros((3 * 48000, 8), dtype=np.float32)  # real speech (at 48 kHz) in silence, on all 8 channels
    x[24000:96000] = np.repeat(recorded_speech(24000), 3)[:72000, None] * np.ones(8, dtype=np.float32)
    f = tmp_path / "n.wav"
    sf.write(f, x, 48000, subtype="PCM_16")
    monkeypatch.setattr(sys, "stdin", Stdin(Pipe(f.read_bytes())))
    fake_engine.replies = ["noise"]
    assert run(["transcribe", "-f", "json", "-"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [s["text"] for s in doc["segments"]] == ["noise"]
    assert fake_engine[0].requests  # the mixed audio reached the model


# ------------------------------------------------------------------------- said, not hidden: warnings


def test_video_whose_audio_track_fails_warns_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         fake_engine: list) -> None:  # noqa: F811
    mp4 = corrupt_audio_packets(write_video(tmp_path / "v.mp4", seconds=3.0, fps=10, with_audio=True))
    fake_engine.replies = ["colours"]
    assert run(["video", "--no-cache", "-f", "json", str(mp4)]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    meta = doc["meta"]
    assert doc["text"] == "colours" and meta["frames"] == 3 and meta["audio_seconds"] == 0
    assert "corrupt" in meta["audio_dropped"]
    lines = out.err.splitlines()
    dropped = [x for x in lines if "audio track cannot be decoded" in x]
    assert len(dropped) == 1 and dropped[0].startswith(f"gemmapipe: warning: {mp4}: ")
    assert all(x.startswith("gemmapipe: warning: ") for x in lines)
    assert any("audio track cannot be decoded" in w for w in meta["warnings"])
    assert not any(isinstance(p, Audio) for p in fake_engine[0].requests[0][0][0].parts)


def test_video_without_an_audio_track_has_nothing_to_warn_about(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                fake_engine: list) -> None:  # noqa: F811
    mp4 = write_video(tmp_path / "silent.mp4", seconds=2.0, fps=10, with_audio=False)
    assert run(["video", "--no-cache", "-f", "json", str(mp4)]) == 0
    out = capsys.readouterr()
    meta = json.loads(out.out)["meta"]
    assert out.err == "" and "audio_dropped" not in meta and "warnings" not in meta


def _nan_wav(path: Path) -> tuple[Path, int]:
    x = np.zeros(3 * 16000, dtype=np.float32)
    x[8000:32000] = recorded_speech(24000)
    x[10000:10007] = np.nan
    x[20000] = np.inf
    x[30000:30002] = -np.inf
    return write_float_wav(path, x), 10


def test_nan_samples_warn_once_and_are_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               fake_engine: list) -> None:  # noqa: F811
    wav, bad = _nan_wav(tmp_path / "nan.wav")
    fake_engine.replies = ["words"]
    assert run(["transcribe", "-f", "json", str(wav)]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["meta"]["nonfinite_samples"] == bad
    assert len(doc["meta"]["warnings"]) == 1
    assert out.err == f"gemmapipe: warning: {wav}: non-finite audio samples (NaN/inf) were replaced with silence\n"
    audio = [p for p in fake_engine[0].requests[0][0][0].parts if isinstance(p, Audio)]
    assert audio and all(np.isfinite(a.samples).all() for a in audio)
    # -q silences the warning; the record keeps it
    assert run(["transcribe", "-q", "-f", "json", str(wav)]) == 0
    out = capsys.readouterr()
    assert out.err == "" and json.loads(out.out)["meta"]["nonfinite_samples"] == bad


def test_nan_samples_in_a_batch_are_counted_per_input(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      fake_engine: list) -> None:  # noqa: F811
    a, bad = _nan_wav(tmp_path / "a.wav")
    b = tmp_path / "b.wav"
    b.write_bytes(a.read_bytes())
    clean = write_tone(tmp_path / "clean.wav", "wav", seconds=1.0)
    out_dir = tmp_path / "out"
    assert run(["transcribe", "-f", "json", "--output-dir", str(out_dir), str(a), str(clean), str(b)]) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == [f"gemmapipe: warning: {f}: non-finite audio samples (NaN/inf) were replaced "
                                "with silence" for f in (a, b)]  # once per input that has them
    meta = {p.stem: json.loads(p.read_text())["meta"] for p in out_dir.iterdir()}
    assert meta["a"]["nonfinite_samples"] == meta["b"]["nonfinite_samples"] == bad
    assert "nonfinite_samples" not in meta["clean"] and "warnings" not in meta["clean"]


def test_video_with_nan_audio_counts_them(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          fake_engine: list) -> None:  # noqa: F811
    import av

    mp4 = tmp_path / "nan.mkv"
    with av.open(str(mp4), "w", format="matroska") as c:
        vs = c.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("pcm_f32le", rate=16000)
        a.layout = "mono"
        for i in range(20):
            fr = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
            fr.pts = i
            c.mux(vs.encode(fr))
        c.mux(vs.encode(None))
        x = np.full((1, 32000), 0.2, np.float32)
        x[0, 100:105] = np.nan
        af = av.AudioFrame.from_ndarray(x, format="flt", layout="mono")
        af.sample_rate, af.pts = 16000, 0
        c.mux(a.encode(af))
        c.mux(a.encode(None))
    assert run(["video", "--no-cache", "-f", "json", str(mp4)]) == 0
    out = capsys.readouterr()
    meta = json.loads(out.out)["meta"]
    assert meta["nonfinite_samples"] == 5 and meta["audio_seconds"] == 2
    assert out.err.count("gemmapipe: warning: ") == 1 and "non-finite" in out.err


# ------------------------------------------------------------------------------- names in messages


@pytest.mark.parametrize("name", ["two\nlines.wav", "cr\rhere.wav", "tab\tand\x1b[31mred.wav", "del\x7f.wav"])
def test_control_characters_in_a_name_keep_the_error_on_one_line(name: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / name
    assert run(["transcribe", str(missing)]) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\r" not in err and "\x1b" not in err and "\x7f" not in err
    escaped = name.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t").replace("\x1b", "\\x1b")
    assert err == f"gemmapipe: error: {tmp_path}/{escaped.replace(chr(0x7f), chr(92) + 'x7f')}: no such file\n"


def test_control_characters_in_batch_errors_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         fake_engine: list) -> None:  # noqa: F811
    bad = tmp_path / "bad\nname.wav"
    bad.write_bytes(b"RIFF garbage")
    nan, _ = _nan_wav(tmp_path / "nan\nname.wav")
    good = write_tone(tmp_path / "good.wav", "wav", seconds=1.0)
    assert run(["transcribe", "-f", "jsonl", str(good), str(bad), str(nan)]) == ExitStatus.PARTIAL
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert all(x.startswith("gemmapipe: ") for x in lines), out.err
    assert any(x.startswith(f"gemmapipe: error: {tmp_path}/bad\\nname.wav: ") for x in lines)
    assert any(x.startswith(f"gemmapipe: warning: {tmp_path}/nan\\nname.wav: non-finite") for x in lines)
    files = {json.loads(x).get("file") for x in out.out.splitlines()}
    assert str(nan) in files  # the record keeps the real name (JSON escapes it itself)


def test_undecodable_bytes_in_a_name_are_shown_as_hex(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = os.fsdecode(b"caf\xe9.wav")  # Latin-1 on a UTF-8 system: a surrogate escape
    assert run(["transcribe", str(tmp_path / name)]) == ExitStatus.BAD_INPUT
    assert capsys.readouterr().err == f"gemmapipe: error: {tmp_path}/caf\\xe9.wav: no such file\n"


def test_printable_leaves_ordinary_text_alone() -> None:
    from gemmapipe.core.errors import printable

    assert printable("ünïcödé 日本語 /path with spaces\\x") == "ünïcödé 日本語 /path with spaces\\x"
    assert printable("a\u2028b\x85c\x00") == "a\\u2028b\\x85c\\x00"



@pytest.mark.parametrize("command", ["transcribe", "diarize", "describe", "video"])
def test_closed_stdin_is_reported_before_any_model_is_looked_for(command: str, tmp_path: Path) -> None:
    """No model configured at all: a closed stdin is still the input's exit 3, not the model's exit 4."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMMAPIPE_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "c"), XDG_DATA_HOME=str(tmp_path / "d"), XDG_CACHE_HOME=str(tmp_path / "k"))
    proc = subprocess.run(f"{sys.executable} -m gemmapipe {command} - <&-", shell=True, capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.splitlines()[0] == "gemmapipe: error: <stdin>: standard input is closed"
