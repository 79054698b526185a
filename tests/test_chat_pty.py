"""The interactive chat in a real pseudo-terminal: two turns with an attachment, the second
evaluating only its new tokens (the engine's counters, printed with -v)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from media_factory import write_image

pexpect = pytest.importorskip("pexpect")
pytestmark = pytest.mark.model


def test_interactive_two_turns_reuse_kv(tiny_gemma4: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = tiny_gemma4
    img = write_image(tmp_path / "i.png", size=(96, 96))
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "dumb", "COLUMNS": "120"}
    child = pexpect.spawn(sys.executable, ["-m", "gemmapipe", "chat", "-m", str(model), "-t", "2",
                                           "--max-tokens", "6", "-v", "-a", str(img)],
                          env=env, encoding="utf-8", timeout=120, dimensions=(40, 120))
    try:
        child.expect(">>> ")
        child.sendline("what is in the picture?")
        child.expect(r"prompt (\d+) tokens, (\d+) evaluated")
        first_total, first_eval = int(child.match.group(1)), int(child.match.group(2))
        assert first_eval == first_total  # everything is new in the first turn
        assert first_total > 81  # the attached image (81 tokens) is in it
        child.expect(">>> ")
        child.sendline("and the colour?")
        child.expect(r"prompt (\d+) tokens, (\d+) evaluated")
        second_total, second_eval = int(child.match.group(1)), int(child.match.group(2))
        assert second_total > first_total
        assert second_eval < second_total - first_total + 16  # the image and first turn were reused
        child.expect(">>> ")
        child.sendline("/save " + str(tmp_path / "s.json"))
        child.expect("saved to")
        child.expect(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    saved = (tmp_path / "s.json").read_text()
    assert "what is in the picture?" in saved and "and the colour?" in saved
    assert re.search(r'"attachments": \[\s*"[^"]*i\.png"', saved)


def test_interactive_ctrl_c_in_a_real_decode_stops_the_answer_only(tiny_gemma4: tuple[Path, Path],
                                                                    tmp_path: Path) -> None:
    """A real SIGINT while llama.cpp decodes (the fault hook sends it 20 ms into the first decode):
    the answer is marked as interrupted, the session goes on, and the next turn is answered from a
    consistent KV cache (what the first turn evaluated is reused, not re-evaluated)."""
    model, _ = tiny_gemma4
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "dumb", "GEMMAPIPE_FAULT_SIGNAL": "decode:INT:0.02"}
    child = pexpect.spawn(sys.executable, ["-m", "gemmapipe", "chat", "-m", str(model), "-t", "2",
                                           "--max-tokens", "3000", "-v", "--temperature", "1", "--seed", "1"],
                          env=env, encoding="utf-8", timeout=120, dimensions=(40, 120))
    try:
        child.expect(">>> ")
        child.sendline("talk for a long time")
        child.expect("fault injection: SIGINT during decode")
        child.expect(r"\[interrupted\]")
        child.expect(r"prompt (\d+) tokens, (\d+) evaluated, (\d+) generated")
        first_total, generated = int(child.match.group(1)), int(child.match.group(3))
        assert 0 < generated < 3000
        child.expect(">>> ")
        child.sendline("short now")
        child.expect(r"prompt (\d+) tokens, (\d+) evaluated")
        second_total, second_eval = int(child.match.group(1)), int(child.match.group(2))
        assert second_total > first_total
        assert second_eval < second_total - first_total + 16  # the first prompt came from the cache
        child.expect(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
