"""The interactive chat as a user meets it, in a real pseudo-terminal (the fake engine, streamed
slowly, in a child process: tests/fake_cli.py): Ctrl-C clears the line at the prompt and stops an
answer mid-way (marked, the session goes on, and a later Ctrl-C is not taken for a second one),
unknown commands are named, /attach completes paths, Ctrl-D leaves, the session becomes "last",
and a /save FILE loads back with --session FILE."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from media_factory import write_image

pexpect = pytest.importorskip("pexpect")
FAKE_CLI = str(Path(__file__).with_name("fake_cli.py"))


def spawn(fake_model: Path, cli_env: Path, *args: str, **env: str) -> object:
    full = {**os.environ, "XDG_DATA_HOME": str(cli_env / "data"), "XDG_CONFIG_HOME": str(cli_env / "config"),
            "XDG_CACHE_HOME": str(cli_env / "cache"), "GEMMAPIPE_MODEL": str(fake_model), "TERM": "dumb", **env}
    return pexpect.spawn(sys.executable, [FAKE_CLI, "chat", *args], env=full, encoding="utf-8", timeout=30,
                         dimensions=(40, 120), cwd=str(cli_env))


def test_ctrl_c_clears_the_line_and_stops_an_answer(fake_model: Path, cli_env: Path) -> None:
    words = [f"w{i}" for i in range(60)]
    child = spawn(fake_model, cli_env, FAKE_REPLY=" ".join(words), FAKE_DELAY="0.05")
    try:
        child.expect(">>> ")
        child.send("half a line")
        time.sleep(0.3)
        child.sendintr()  # at the prompt: the line is dropped, the session stays
        child.expect(">>> ")
        child.sendline("tell me")
        time.sleep(0.8)  # ~15 of the 60 words
        child.sendintr()
        child.expect(r"\[interrupted\]")
        child.expect(">>> ")
        child.sendintr()  # a later Ctrl-C is a first one again, not "the second: exit at once"
        child.expect(">>> ")
        child.sendline("/frobnicate")
        child.expect("unknown command /frobnicate; commands: /attach")
        child.expect(">>> ")
        child.sendline("again")
        child.expect("w59")
        child.expect(">>> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before
    turns = json.loads((cli_env / "data" / "gemmapipe" / "sessions" / "last.json").read_text())["turns"]
    assert [t["text"] for t in turns if t["role"] == "user"] == ["tell me", "again"]
    stopped = turns[1]["text"].split()
    assert 3 < len(stopped) < 50 and stopped == words[:len(stopped)]  # the part shown, kept
    assert turns[3]["text"] == " ".join(words)


def test_attach_completes_paths_and_save_loads_back(fake_model: Path, cli_env: Path) -> None:
    (cli_env / "pics").mkdir()
    write_image(cli_env / "pics" / "picture-one.png", size=(96, 96))
    saved = cli_env / "kept.json"
    child = spawn(fake_model, cli_env)
    try:
        child.expect(">>> ")
        child.send("/att\t")
        child.expect("/attach ")
        child.send("pics/pic\t")
        child.expect("picture-one.png")
        child.sendline("")
        child.expect("attached pics/picture-one.png")
        child.expect(">>> ")
        child.sendline("what is it?")
        child.expect("canned reply")
        child.expect(">>> ")
        child.sendline(f"/save {saved}")
        child.expect("saved to")
        child.expect(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    data = json.loads(saved.read_text())
    assert data["turns"][0]["attachments"] == [str(cli_env / "pics" / "picture-one.png")]
    # the saved file is a session: --session FILE continues it (one-shot, from elsewhere)
    other = cli_env / "other"
    other.mkdir()
    one_shot = pexpect.spawn(sys.executable, [FAKE_CLI, "chat", "--session", str(saved), "and then?"],
                             env={**os.environ, "XDG_DATA_HOME": str(cli_env / "data"),
                                  "GEMMAPIPE_MODEL": str(fake_model)}, encoding="utf-8", cwd=str(other), timeout=30)
    one_shot.expect(pexpect.EOF)
    one_shot.close()
    assert one_shot.exitstatus == 0, one_shot.before
    turns = json.loads(saved.read_text())["turns"]
    assert [t["text"] for t in turns if t["role"] == "user"] == ["what is it?", "and then?"]
