"""`transcribe -` (and `chat -a -`) with a terminal on stdin says on stderr what it waits for,
instead of waiting silently; Ctrl-D then ends it as an empty input (exit 3)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")


@pytest.mark.parametrize("argv", [["transcribe", "-"], ["chat", "-a", "-", "what is it?"]])
def test_dash_on_a_terminal_says_it_reads_stdin(argv: list[str], fake_model: Path) -> None:
    child = pexpect.spawn(sys.executable, ["-m", "gemmapipe", *argv], env=dict(os.environ), encoding="utf-8",
                          timeout=30)
    try:
        child.expect("reading the input from standard input, a terminal")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3
    assert "<stdin>" in child.before
