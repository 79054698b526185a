"""Pipes and cron: batch options, signals, and faults (memory, unwritable output, full disk)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.errors import ExitStatus

from fake_engine import fake_engine  # noqa: F401  (fixture)
from media_factory import recorded_speech, write_tone

pytestmark = pytest.mark.usefixtures("fake_model")  # see conftest.py




def speech(path: Path, seconds: float = 2.0) -> Path:
    import soundfile as sf

    x = np.zeros(int(seconds * 16000), dtype=np.float32)
    x[8000:24000] = recorded_speech(16000)
    sf.write(path, x, 16000)
    return path


def test_files_from_newlines_and_nul(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [write_tone(tmp_path / f"a{i}.wav", "wav", seconds=0.5) for i in range(3)]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(map(str, files[:2])) + "\n\n")
    assert run(["transcribe", "--dry-run", str(files[2]), "--files-from", str(lst)]) == 0
    names = [Path(json.loads(x)["file"]).name for x in capsys.readouterr().out.splitlines()]
    assert names == ["a2.wav", "a0.wav", "a1.wav"]
    nul = tmp_path / "list0"
    nul.write_bytes(b"\0".join(str(f).encode() for f in files) + b"\0")
    assert run(["transcribe", "--dry-run", "--files-from", str(nul)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_fail_fast_stops_at_first_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        fake_engine: list) -> None:  # noqa: F811
    good = [speech(tmp_path / f"g{i}.wav") for i in range(2)]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"\x00" * 100)
    code = run(["transcribe", "-f", "jsonl", "--fail-fast", str(good[0]), str(bad), str(good[1])])
    assert code == ExitStatus.PARTIAL
    out = capsys.readouterr()
    files = {Path(json.loads(x)["file"]).name for x in out.out.splitlines()}
    assert files == {"g0.wav"}  # g1 never ran
    assert "--fail-fast" in out.err


def test_skip_existing_makes_reruns_idempotent(tmp_path: Path, fake_engine: list) -> None:  # noqa: F811
    inputs = [str(speech(tmp_path / f"s{i}.wav")) for i in range(2)]
    out = tmp_path / "out"
    assert run(["transcribe", "-f", "vtt", "--output-dir", str(out), *inputs]) == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert sorted(first) == ["s0.vtt", "s1.vtt"]
    (out / "s1.vtt").unlink()
    assert run(["transcribe", "-f", "vtt", "--output-dir", str(out), "--skip-existing", *inputs]) == 0
    assert (out / "s0.vtt").stat().st_mtime_ns == first["s0.vtt"]  # untouched
    assert (out / "s1.vtt").exists()
    assert len(fake_engine[-1].requests) == 2  # only the missing one: its spoken-language question, its one clip


def test_errors_as_records(tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_engine: list) -> None:  # noqa: F811
    good = speech(tmp_path / "good.wav")
    missing = tmp_path / "missing.wav"
    assert run(["transcribe", "-f", "jsonl", "--errors-as-records", str(good), str(missing)]) == ExitStatus.PARTIAL
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    errors = [r for r in records if "error" in r]
    assert len(errors) == 1 and errors[0]["file"] == str(missing)


def test_memory_refused_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       fake_engine: list, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from gemmapipe.core import memory

    monkeypatch.setattr(memory, "available_memory", lambda: 100 * 2**20)
    assert run(["transcribe", "--gpu-layers", "0", str(speech(tmp_path / "a.wav"))]) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert "gemmapipe: error: memory: needs about" in err and "GiB is available" in err
    assert not fake_engine  # nothing was loaded


def test_unwritable_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_engine: list) -> None:  # noqa: F811
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    code = run(["transcribe", "--output-dir", str(blocker / "sub"), str(speech(tmp_path / "a.wav"))])
    assert code == ExitStatus.ERROR
    assert capsys.readouterr().err.startswith(f"gemmapipe: error: output directory {blocker / 'sub'}")


def _cli(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "gemmapipe", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, **kw)  # type: ignore[call-overload]


def test_full_disk_leaves_nothing(tmp_path: Path) -> None:
    files = [str(write_tone(tmp_path / f"t{i}.wav", "wav", seconds=0.2)) for i in range(20)]
    out = tmp_path / "plans.jsonl"

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))  # writes past 2 kB fail with EFBIG

    proc = _cli("transcribe", "--dry-run", "-o", str(out), *files, preexec_fn=small_files)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitStatus.ERROR, err
    assert err.decode().startswith(f"gemmapipe: error: output {out}: cannot write: File too large")
    assert b"Traceback" not in err
    assert list(tmp_path.glob("*.jsonl*")) == [] and list(tmp_path.glob(".plans*")) == []


def test_sigpipe_is_quiet(tmp_path: Path) -> None:
    files = [str(write_tone(tmp_path / f"t{i}.wav", "wav", seconds=0.1)) for i in range(400)]
    proc = _cli("transcribe", "--dry-run", *files)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # like `| head -1`
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"error" not in err
    assert proc.returncode in (0, 141)


@pytest.mark.model
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_exits_130_and_cleans_up(sig: int, tiny_gemma4: tuple[Path, Path], tmp_path: Path) -> None:
    import soundfile as sf

    model, _ = tiny_gemma4
    x = np.zeros(16000 * 600, dtype=np.float32)
    for s in range(0, 600, 3):  # ten minutes of 2 s bursts
        x[s * 16000:(s + 2) * 16000] = recorded_speech(32000, offset=s * 16000)
    wav = tmp_path / "long.wav"
    sf.write(wav, x, 16000)
    out = tmp_path / "out"
    proc = _cli("transcribe", "-m", str(model), "-t", "1", "--max-tokens", "64", "--output-dir", str(out), str(wav))
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob(".*.part")):
        time.sleep(0.05)  # wait until it is writing
    assert list(out.glob(".*.part")), "never started writing"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitStatus.INTERRUPTED, err
    assert b"Traceback" not in err and b"interrupted" in err
    assert list(out.iterdir()) == []  # no partial file, no temp file
