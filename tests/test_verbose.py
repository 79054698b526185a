"""-v is gemmapipe's own account on stderr (the model and context it loads, and a timing summary at
the end: load, prompt with KV-cache reuse, decode tokens/s); -vv adds llama.cpp's log. Run as a
user does: the real command in a child process on the tiny Gemma 4 pair."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from media_factory import write_image

pytestmark = pytest.mark.model


def describe(tiny_gemma4: tuple[Path, Path], tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    model, _ = tiny_gemma4
    imgs = [str(write_image(tmp_path / f"i{n}.png", size=(96, 96), color=(40 * n, 90, 200))) for n in range(2)]
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "d"), "XDG_CONFIG_HOME": str(tmp_path / "c"),
           "XDG_CACHE_HOME": str(tmp_path / "k")}
    return subprocess.run([sys.executable, "-m", "gemmapipe", "describe", "-m", str(model), "-t", "2",
                           "--max-tokens", "4", *flags, *imgs], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_v_is_gemmapipes_account_with_a_timing_summary(tiny_gemma4: tuple[Path, Path], tmp_path: Path) -> None:
    done = describe(tiny_gemma4, tmp_path, "-v")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert all(line.startswith("gemmapipe: ") for line in lines), lines  # nothing of llama.cpp's
    text = "\n".join(lines)
    assert re.search(r"loading tiny-gemma4\.gguf \+ mmproj-tiny-gemma4\.gguf \(n_ctx \d+\)", text)
    assert re.search(r"loaded in [\d.]+ s: context \d+ tokens, threads 2", text)
    assert re.search(r"^gemmapipe: load [\d.]+ s$", text, re.M)
    # two images behind one prompt: the second reuses the prompt's tokens from the KV cache
    m = re.search(r"^gemmapipe: prompt (\d+) tokens \((\d+) evaluated, (\d+) from the KV cache\) in [\d.]+ s, "
                  r"[\d.]+ tokens/s$", text, re.M)
    assert m and int(m.group(1)) == int(m.group(2)) + int(m.group(3)) and int(m.group(3)) > 0
    assert re.search(r"^gemmapipe: generated [1-8] tokens in [\d.]+ s", text, re.M)
    assert lines[-1].startswith("gemmapipe: generated")  # the summary ends the run


def test_vv_adds_llama_cpps_log(tiny_gemma4: tuple[Path, Path], tmp_path: Path) -> None:
    done = describe(tiny_gemma4, tmp_path, "-vv")
    assert done.returncode == 0, done.stderr
    native = [line for line in done.stderr.splitlines() if not line.startswith("gemmapipe: ")]
    assert any("llama_model_loader" in line for line in native)
    assert "gemmapipe: load " in done.stderr
    quiet = describe(tiny_gemma4, tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""
