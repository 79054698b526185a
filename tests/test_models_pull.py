"""`gemmapipe models pull|list|path`, and what happens when no model is configured, against a
Hugging Face Hub stand-in on loopback (HF_ENDPOINT) that serves the tiny Gemma 4 test pair under the
default file names, so huggingface_hub's real metadata and download code runs. Nothing here reaches
beyond 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gemmapipe.cli.app import run
from gemmapipe.core import models_hub as hub
from gemmapipe.core.errors import ExitStatus

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # "owner/name/file" -> bytes
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)
    cut_first_get_at: int | None = None  # drop the connection after this many bytes, once
    corrupt: bool = False  # serve a flipped byte (the metadata keeps the true sha256)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET"]


def _handler(hubsrv: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _lookup(self) -> tuple[str, bytes] | None:
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
            if not m:
                return None
            return m.group(3), hubsrv.files.get(f"{m.group(1)}/{m.group(3)}", b"")

        def _not_found(self) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("X-Error-Message", "Entry not found")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _answer(self, body: bool) -> None:
            with hubsrv.lock:
                hubsrv.requests.append((self.command, self.path, self.headers.get("Range")))
            found = self._lookup()
            if found is None or not found[1]:
                self._not_found()
                return
            data = found[1]
            sha = hashlib.sha256(data).hexdigest()
            if hubsrv.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            rng = self.headers.get("Range")
            if rng and (m := re.fullmatch(r"bytes=(\d+)-", rng)):
                start = int(m.group(1))
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Linked-Etag", f'"{sha}"')
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            payload = data[start:]
            with hubsrv.lock:
                cut, hubsrv.cut_first_get_at = hubsrv.cut_first_get_at, None
            if cut is not None:
                self.wfile.write(payload[:cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(payload)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

    return Handler


@pytest.fixture
def fake_hub(tiny_gemma4: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    model, mmproj = tiny_gemma4
    state = FakeHub(files={f"{hub.DEFAULT_REPO}/{hub.DEFAULT_MODEL_FILE}": model.read_bytes(),
                           f"{hub.DEFAULT_REPO}/{hub.DEFAULT_MMPROJ_FILE}": mmproj.read_bytes()})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", state.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no stored token, no shared cache
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "*")
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "GEMMAPIPE_MODELS_DIR"):
        monkeypatch.delenv(var, raising=False)
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


pytestmark = pytest.mark.usefixtures("cli_env")  # see conftest.py




def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _served(fake: FakeHub, name: str) -> bytes:
    return fake.files[f"{hub.DEFAULT_REPO}/{name}"]


def test_pull_downloads_verifies_and_is_idempotent(fake_hub: FakeHub, tiny_gemma4: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["models", "pull"]) == 0
    captured = capsys.readouterr()
    folder = hub.repo_dir()
    assert captured.out.splitlines() == [str(folder / hub.DEFAULT_MODEL_FILE), str(folder / hub.DEFAULT_MMPROJ_FILE)]
    assert _sha(folder / hub.DEFAULT_MODEL_FILE) == _sha(tiny_gemma4[0])
    assert _sha(folder / hub.DEFAULT_MMPROJ_FILE) == _sha(tiny_gemma4[1])
    assert "checking sha256" in captured.err and "done" in captured.err
    assert not list(folder.glob("*.part"))
    assert [p for _, p, _ in fake_hub.gets()] == [
        f"/{hub.DEFAULT_REPO}/resolve/main/{hub.DEFAULT_MODEL_FILE}",
        f"/{hub.DEFAULT_REPO}/resolve/main/{hub.DEFAULT_MMPROJ_FILE}"]

    n = len(fake_hub.requests)
    assert run(["models", "pull"]) == 0
    assert "up to date" in capsys.readouterr().err
    assert {m for m, _, _ in fake_hub.requests[n:]} == {"HEAD"}  # metadata only, no bytes again


def test_pull_resumes_an_interrupted_download(fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    data = _served(fake_hub, hub.DEFAULT_MODEL_FILE)
    etag = hashlib.sha256(data).hexdigest()
    folder = hub.repo_dir()
    folder.mkdir(parents=True)
    half = len(data) // 2
    (folder / f"{hub.DEFAULT_MODEL_FILE}.{etag[:16]}.part").write_bytes(data[:half])  # an earlier run, cut off
    (folder / f"{hub.DEFAULT_MODEL_FILE}.{'f' * 16}.part").write_bytes(b"another version")
    assert run(["models", "list"]) == 0
    assert "partial" in capsys.readouterr().out
    assert run(["models", "pull"]) == 0
    assert f"resuming at {hub.human_size(half)}" in capsys.readouterr().err
    model_gets = [r for r in fake_hub.gets() if r[1].endswith(hub.DEFAULT_MODEL_FILE)]
    assert model_gets[0][2] == f"bytes={half}-"
    assert (folder / hub.DEFAULT_MODEL_FILE).read_bytes() == data
    assert not list(folder.glob("*.part"))


def test_pull_survives_a_dropped_connection(fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    """huggingface_hub retries within the run (from the last whole chunk it wrote: here, the start)."""
    import logging

    for h in logging.getLogger("huggingface_hub").handlers:  # its handler may hold an older capture
        if isinstance(h, logging.StreamHandler):
            h.stream = sys.stderr
    data = _served(fake_hub, hub.DEFAULT_MODEL_FILE)
    fake_hub.cut_first_get_at = len(data) // 3
    assert run(["models", "pull", "--no-progress"]) == 0
    model_gets = [r for r in fake_hub.gets() if r[1].endswith(hub.DEFAULT_MODEL_FILE)]
    assert len(model_gets) == 2
    assert (hub.repo_dir() / hub.DEFAULT_MODEL_FILE).read_bytes() == data


def test_pull_rejects_a_corrupted_download(fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    fake_hub.corrupt = True
    assert run(["models", "pull"]) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "gemmapipe models pull" in err
    folder = hub.repo_dir()
    assert not (folder / hub.DEFAULT_MODEL_FILE).exists() and not list(folder.glob("*.part"))


def test_pull_unknown_file_is_exit_1(fake_hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["models", "pull", "gemma-4-12B-it-Q9_K.gguf"]) == ExitStatus.ERROR
    assert "not found on the Hub" in capsys.readouterr().err


def test_offline_never_touches_the_network(fake_hub: FakeHub, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(["models", "pull", "--offline"]) == ExitStatus.MODEL
    assert "not downloaded" in capsys.readouterr().err
    assert fake_hub.requests == []
    assert run(["models", "pull", "-q"]) == 0
    n = len(fake_hub.requests)
    capsys.readouterr()
    assert run(["models", "pull", "--offline"]) == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run(["models", "pull"]) == 0
    assert len(fake_hub.requests) == n


def test_list_and_path(fake_hub: FakeHub, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert run(["models", "path"]) == ExitStatus.MODEL
    assert "gemmapipe models pull" in capsys.readouterr().err
    assert run(["models", "list"]) == 0
    assert [line.split("\t")[3] for line in capsys.readouterr().out.splitlines()] == ["missing", "missing"]
    assert run(["models", "pull", "-q"]) == 0
    capsys.readouterr()
    assert run(["models", "list"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(r[1], r[3]) for r in rows] == [(hub.DEFAULT_MODEL_FILE, "ok"), (hub.DEFAULT_MMPROJ_FILE, "ok")]
    folder = hub.repo_dir()
    assert run(["models", "path"]) == 0
    assert capsys.readouterr().out == f"{folder / hub.DEFAULT_MODEL_FILE}\n"
    assert run(["models", "path", "--mmproj"]) == 0
    assert capsys.readouterr().out == f"{folder / hub.DEFAULT_MMPROJ_FILE}\n"
    monkeypatch.setenv("GEMMAPIPE_MODEL", str(tmp_path / "mine.gguf"))  # a configured model wins
    assert run(["models", "path"]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'mine.gguf'}\n"


def test_commands_use_the_pulled_default(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    from gemmapipe.core import session

    from fake_engine import FakeEngine

    assert run(["models", "pull", "-q"]) == 0
    seen: list[Any] = []

    def factory(config: Any, pair: Any, **kw: Any) -> Any:
        seen.append(config)
        return FakeEngine(config=config)

    monkeypatch.setattr(session, "_ENGINE_FACTORY", factory)
    assert run(["chat", "hello"]) == 0
    assert seen[0].model == hub.repo_dir() / hub.DEFAULT_MODEL_FILE
    assert seen[0].mmproj == hub.repo_dir() / hub.DEFAULT_MMPROJ_FILE


def _cli_env(fake: FakeHub, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMMAPIPE_", "HF_"))}
    env.update({"HF_ENDPOINT": fake.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1",
                "NO_PROXY": "*", "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
                "XDG_DATA_HOME": str(tmp_path / "data"), "COLUMNS": "200"})
    return env


def test_no_model_in_a_pipe_fails_with_the_command_to_run(fake_hub: FakeHub, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gemmapipe", "chat", "hello"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=_cli_env(fake_hub, tmp_path), timeout=120)
    assert proc.returncode == ExitStatus.MODEL
    assert proc.stderr.startswith("gemmapipe: error: model: no model given")
    assert "gemmapipe: hint: run: gemmapipe models pull" in proc.stderr and "7.3 GB" in proc.stderr
    assert fake_hub.requests == []  # never a surprise download
    assert not hub.repo_dir().exists() or not any(hub.repo_dir().iterdir())


@pytest.mark.model
def test_no_model_on_a_terminal_offers_the_download(fake_hub: FakeHub, tmp_path: Path) -> None:
    pexpect = pytest.importorskip("pexpect")
    env = _cli_env(fake_hub, tmp_path)
    cmd = [sys.executable, "-m", "gemmapipe", "chat", "-t", "2", "--max-tokens", "3", "hello"]

    child = pexpect.spawn(cmd[0], cmd[1:], env=env, encoding="utf-8", timeout=120)
    child.expect(r"about 7\.3 GB")
    child.expect(r"\[y/N\] ")
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == ExitStatus.MODEL
    assert fake_hub.requests == []

    child = pexpect.spawn(cmd[0], cmd[1:], env=env, encoding="utf-8", timeout=180)
    child.expect(r"\[y/N\] ")
    child.sendline("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    folder = tmp_path / "data" / "gemmapipe" / "models" / hub.DEFAULT_REPO.replace("/", "--")
    assert (folder / hub.DEFAULT_MODEL_FILE).read_bytes() == _served(fake_hub, hub.DEFAULT_MODEL_FILE)
    assert (folder / hub.DEFAULT_MMPROJ_FILE).is_file()
