"""models list/rm as a user meets them: the configured model and everything in the models folder
listed (with which pair commands use), a header row on a terminal, rm that deletes only inside the
models folder, and one description of a missing model everywhere."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from gemmapipe.cli.app import run
from gemmapipe.core import models_hub as hub

from gguf_factory import write_text_model


def rows(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines()]


def test_list_shows_configured_and_every_gguf_here(fake_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = hub.models_dir()
    (root / "someone--other").mkdir(parents=True)
    write_text_model(root / "someone--other" / "other.gguf", n_embd=64)
    write_text_model(root / "loose.gguf", n_embd=64)
    assert run(["models", "list"]) == 0
    table = {r[1]: r for r in rows(capsys.readouterr().out)}
    assert table["m.gguf"][3:] == ["ok", str(fake_model), "model"]
    assert table["mmproj-m.gguf"][3:] == ["ok", str(fake_model.parent / "mmproj-m.gguf"), "mmproj"]
    assert table["other.gguf"][0] == "someone/other" and table["other.gguf"][3] == "ok"
    assert table["loose.gguf"][3] == "ok" and table["loose.gguf"][5] == "-"
    assert hub.DEFAULT_MODEL_FILE not in table  # a configured model: the default is not "missing"


def test_list_has_a_header_on_a_terminal(fake_model: Path, cli_env: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "gemmapipe", "models", "list"], env=dict(os.environ),
                          encoding="utf-8", timeout=30, dimensions=(20, 250))
    child.expect(pexpect.EOF)
    child.close()
    lines = child.before.splitlines()
    assert lines[0].split() == ["REPO", "FILE", "SIZE", "STATUS", "PATH", "USED"]
    assert any(line.split()[1:2] == ["m.gguf"] and line.split()[-1] == "model" for line in lines[1:])


def test_rm_deletes_inside_the_models_folder_only(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = hub.repo_dir("someone/other")
    folder.mkdir(parents=True)
    write_text_model(folder / "other.gguf", n_embd=64)
    (folder / "other.gguf.0123456789abcdef.part").write_bytes(b"half")
    write_text_model(folder / "keep.gguf", n_embd=64)
    outside = cli_env / "mine.gguf"
    write_text_model(outside, n_embd=64)
    assert run(["models", "rm", "other.gguf"]) == 0
    assert f"removed {folder / 'other.gguf'}" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["keep.gguf"]
    assert run(["models", "rm", "other.gguf"]) == 2
    assert "other.gguf: no such model in" in capsys.readouterr().err
    assert run(["models", "rm", str(outside)]) == 2 and outside.exists()
    assert run(["models", "rm", "keep.gguf"]) == 0
    assert not folder.exists()  # the emptied repository folder goes too


def test_a_missing_model_is_described_one_way(cli_env: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    wav = cli_env / "x.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    seen = []
    for argv in (["models", "path"], ["transcribe", str(wav)], ["chat", "hi"], ["describe", str(wav)]):
        assert run(argv) == 4, argv
        seen.append(capsys.readouterr().err)
    assert len(set(seen)) == 1, seen
    assert seen[0].startswith("gemmapipe: error: model: no model given\ngemmapipe: hint: run: gemmapipe models pull")
    assert "--model PATH" in seen[0]
