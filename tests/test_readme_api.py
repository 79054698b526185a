"""The README's "Using it from Python" example runs as written (model and file names swapped for the
test models and a recording of real speech), on real llama.cpp."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.model
def test_readme_session_example_runs(tiny_gemma4: tuple[Path, Path], tmp_path: Path) -> None:
    import soundfile as sf

    from media_factory import recorded_speech

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Using it from Python"):readme.index("## Development")]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    model, _ = tiny_gemma4
    x = np.zeros(5 * 16000, dtype=np.float32)
    x[8000:56000] = recorded_speech(48000)
    sf.write(tmp_path / "talk.wav", x, 16000)
    code = code.replace('"gemma-4-12B-it-Q4_K_M.gguf"', repr(str(model))).replace('"talk.mp3"',
                                                                                   repr(str(tmp_path / "talk.wav")))
    code = code.replace("generate=session.generate_options(320)", "generate=session.generate_options(8)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(" ", 2) for line in proc.stdout.splitlines()]
    assert rows and all(int(a) < int(b) for a, b, *_ in rows)  # segments with times, from the real engine
