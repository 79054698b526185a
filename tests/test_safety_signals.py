"""A signal stops the work within seconds at every stage, keeps finished results, leaves nothing.

Each case runs the real CLI on real llama.cpp (the Gemma 3 270M with the probe projectors, big
enough that loading and a prefill take a while on two cores) and delivers a real signal while a
named stage runs, through the GEMMAPIPE_FAULT_SIGNAL hook (gemmapipe.core.interrupt): a helper
thread sends the signal, so it lands while the main thread is inside llama.cpp, as a user's Ctrl-C
does. The deadline is counted from the moment the signal is sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.core.errors import ExitStatus

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("cli_env")]

DEADLINE_S = 3.0


def noise_speech(path: Path, seconds: int, seed: int = 0) -> Path:
    """Bursts of noise with short pauses: every 3 s window is 'speech' to the detector."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    x = np.zeros(16000 * seconds, dtype=np.float32)
    for s in range(0, seconds - 1, 3):
        x[s * 16000:(s + 2) * 16000 + 8000] = 0.3 * rng.standard_normal(40000)
    sf.write(path, x, 16000)
    return path


def run_with_fault(argv: list[str], stage: str, sig: int, cwd: Path, *, stdin: bytes | None = None,
                   delay: float = 0.05) -> tuple[int, str, float]:
    """Run gemmapipe with a signal sent during `stage`; (exit status, stderr, seconds from the
    signal to the exit)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "GEMMAPIPE_FAULT_SIGNAL": f"{stage}:{signal.Signals(sig).name}:{delay}"}
    proc = subprocess.Popen([sys.executable, "-m", "gemmapipe", *argv], cwd=cwd, env=env,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fired: list[float] = []
    err_lines: list[str] = []

    def read_err() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            if "fault injection" in line:
                fired.append(time.monotonic())
            err_lines.append(line)

    reader = threading.Thread(target=read_err)
    reader.start()
    if stdin is not None:
        assert proc.stdin is not None
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    assert proc.stdout is not None
    proc.stdout.read()
    proc.wait(timeout=300)
    ended = time.monotonic()
    reader.join(10)
    err = "".join(err_lines)
    assert fired, f"the {stage} stage never ran:\n{err}"
    return proc.returncode, err, ended - fired[0]


def assert_clean(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.name.endswith(".part") or ".spool" in p.name]
    assert left == [], left


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("stage", ["load", "prefill", "decode"])
def test_signal_stops_the_model_at_each_stage(stage: str, sig: int, gemma3_270m: Path, audio_probe: Path,
                                              tmp_path: Path) -> None:
    """90 s of audio is 2250 tokens to prefill (seconds on two cores), then up to 300 to decode."""
    wav = noise_speech(tmp_path / "long.wav", 90)
    out = tmp_path / "out.txt"
    out.write_text("keep me\n")
    code, err, waited = run_with_fault(["chat", "-m", str(gemma3_270m), "--mmproj", str(audio_probe), "-t", "2",
                                        "--max-tokens", "300", "-a", str(wav), "-o", str(out), "Say it."],
                                       stage, sig, tmp_path)
    assert code == ExitStatus.INTERRUPTED, err
    assert waited < DEADLINE_S, f"{waited:.1f} s after the signal"
    assert "Traceback" not in err and "Exception ignored" not in err and "interrupted" in err
    assert out.read_text() == "keep me\n"  # the old output is untouched
    assert_clean(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_media_decoding(sig: int, gemma3_270m: Path, audio_probe: Path, tmp_path: Path) -> None:
    wav = noise_speech(tmp_path / "long.wav", 600)
    code, err, waited = run_with_fault(["transcribe", "-m", str(gemma3_270m), "--mmproj", str(audio_probe),
                                        "--output-dir", str(tmp_path / "o"), str(wav)], "media", sig,
                                       tmp_path, delay=0.0)
    assert code == ExitStatus.INTERRUPTED, err
    assert waited < DEADLINE_S
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []
    assert_clean(tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_spooling_stdin_leaves_no_spool(sig: int, gemma3_270m: Path, vision_probe: Path,
                                                     tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    os.environ["TMPDIR"] = str(tmpdir)
    try:
        png = b"\x89PNG\r\n\x1a\n" + b"\x00" * (64 << 20)
        code, err, waited = run_with_fault(["describe", "-m", str(gemma3_270m), "--mmproj", str(vision_probe), "-"],
                                           "spool", sig, tmp_path, stdin=png, delay=0.0)
    finally:
        del os.environ["TMPDIR"]
    assert code == ExitStatus.INTERRUPTED, err
    assert waited < DEADLINE_S
    assert list(tmpdir.iterdir()) == []


def test_signal_in_a_batch_keeps_finished_results(gemma3_270m: Path, vision_probe: Path, tmp_path: Path) -> None:
    """Ctrl-C once the first results are written: they stay whole, the unfinished ones leave nothing."""
    from media_factory import write_image

    imgs = [write_image(tmp_path / f"i{i}.png", (480, 336), color=(20 * i, 90, 160)) for i in range(8)]
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gemmapipe", "describe", "-m", str(gemma3_270m), "--mmproj",
                             str(vision_probe), "-t", "2", "--max-tokens", "120", "--output-dir", str(out),
                             *map(str, imgs)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and [p for p in out.iterdir() if p.suffix == ".txt"]:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitStatus.INTERRUPTED, err
    assert time.monotonic() - t0 < DEADLINE_S
    done = sorted(p.name for p in out.iterdir())
    assert done and len(done) < len(imgs), done
    assert all(p.endswith(".txt") and (out / p).read_text().strip() for p in done)
    assert_clean(tmp_path)


def test_second_signal_ends_at_once(gemma3_270m: Path, audio_probe: Path, tmp_path: Path) -> None:
    """The first signal starts the cleanup; a second one must end the process immediately."""
    wav = noise_speech(tmp_path / "long.wav", 60)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gemmapipe", "chat", "-m", str(gemma3_270m), "--mmproj",
                             str(audio_probe), "-t", "2", "-a", str(wav), "-o", str(tmp_path / "t.txt"), "Say it."],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < DEADLINE_S
    assert proc.returncode == ExitStatus.INTERRUPTED, err
    assert b"Traceback" not in err
    assert not (tmp_path / "t.txt").exists()
    assert_clean(tmp_path)


def test_a_signal_never_splits_creating_and_recording_a_temporary(tmp_path: Path) -> None:
    """A signal taken by another thread (as it is when the main thread holds it) still runs its Python
    handler in the main thread: inside `deferred` it only sets the flag, and KeyboardInterrupt comes
    once the step is done, so the temporary made there is recorded and removed."""
    code = f"""
import os, signal, sys, threading, time, tempfile
tempfile.tempdir = None
os.environ["TMPDIR"] = {str(tmp_path)!r}
from gemmapipe.cli.signals import install_signal_handlers
from gemmapipe.core import interrupt, sink
install_signal_handlers()
inside = "no"
try:
    with interrupt.deferred():
        threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT)).start()
        time.sleep(0.3)  # bytecode runs here: the handler runs, and must not raise
        fd, path = sink.make_temp(prefix="x-", suffix=".part")
        inside = "survived"
except KeyboardInterrupt:
    print(inside, "interrupted after the step")
sink.remove_temp_files()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "survived interrupted after the step", proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []
