"""The progress bar on a real terminal (tmux): with the length of the input known it shows a
percentage and the time left, and with stdout on the same terminal the transcript lines printed
while it runs stay whole, with no trace of the bar among them."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from media_factory import recorded_speech

FAKE_CLI = str(Path(__file__).with_name("fake_cli.py"))
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


def speech_wav(path: Path, starts: list[float], total: float) -> Path:
    import soundfile as sf

    x = np.zeros(int(total * 16000), dtype=np.float32)
    for a in starts:
        n = int(1.2 * 16000)
        x[int(a * 16000):int(a * 16000) + n] = recorded_speech(n, offset=int(a * 16000))
    sf.write(path, x, 16000)
    return path


def test_transcribe_bar_shows_percent_and_keeps_stdout_whole(fake_model: Path, cli_env: Path) -> None:
    wav = speech_wav(cli_env / "talk.wav", [1.0 + 3 * i for i in range(8)], 26.0)
    sock = f"gp-{time.monotonic_ns()}"
    env = {"GEMMAPIPE_MODEL": str(fake_model), "XDG_DATA_HOME": str(cli_env / "data"),
           "XDG_CONFIG_HOME": str(cli_env / "config"), "XDG_CACHE_HOME": str(cli_env / "cache"),
           "FAKE_REPLY": "the quick brown fox jumps", "FAKE_DELAY": "0.06", "TERM": "xterm-256color"}
    cmd = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.quote(sys.executable), FAKE_CLI,
                    "transcribe", "--vad", "energy", shlex.quote(str(wav)), "; echo EXIT=$?; sleep 60"])
    tmux = ["tmux", "-L", sock, "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-x", "100", "-y", "40", "env " + cmd], check=True)
    try:
        seen_percent = False
        screen = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen = subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True).stdout
            seen_percent = seen_percent or ("talk.wav" in screen and "%" in screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.05)
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    assert "EXIT=0" in lines, screen
    transcript = lines[:lines.index("EXIT=0")]
    assert transcript == ["the quick brown fox jumps"] * 8, screen  # whole lines, nothing of the bar
    assert seen_percent, "no percentage was shown"
