"""The package installs as gemmapipe.cli / gemmapipe.core (never plain cli/core), from a wheel and
editable; man page and completions match the option spec."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_layout_and_install(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = next(out.glob("gemmapipe-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "cli" not in tops and "core" not in tops
    for required in ("gemmapipe/__init__.py", "gemmapipe/__main__.py", "gemmapipe/cli/app.py",
                     "gemmapipe/core/engine/local.py", "gemmapipe/core/py.typed"):
        assert required in names
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", "import gemmapipe.cli.app, gemmapipe.core.errors as e; "
                           "print(gemmapipe.cli.app.__file__)"], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(target))


def test_editable_install_points_at_the_repo() -> None:
    import gemmapipe.cli.app
    import gemmapipe.core.errors

    assert Path(gemmapipe.cli.app.__file__).resolve() == ROOT / "cli" / "app.py"
    assert Path(gemmapipe.core.errors.__file__).resolve() == ROOT / "core" / "errors.py"


def test_python_dash_m() -> None:
    proc = subprocess.run([sys.executable, "-m", "gemmapipe", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("gemmapipe ")


def test_man_page_and_completions_are_current() -> None:
    proc = subprocess.run([sys.executable, "-m", "gemmapipe.cli.docgen", "--check", str(ROOT)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    man = (ROOT / "man" / "gemmapipe.1").read_text()
    for name in ("transcribe", "diarize", "describe", "video", "chat", "EXIT STATUS", "GEMMAPIPE_MODEL"):
        assert name in man
    for f in ("gemmapipe.bash", "_gemmapipe", "gemmapipe.fish"):
        assert "_GEMMAPIPE_COMPLETE" in (ROOT / "completions" / f).read_text()


def test_stale_docs_are_detected(tmp_path: Path) -> None:
    (tmp_path / "man").mkdir()
    (tmp_path / "man" / "gemmapipe.1").write_text("old\n")
    proc = subprocess.run([sys.executable, "-m", "gemmapipe.cli.docgen", "--check", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "stale" in proc.stderr
