"""Kept conversations as files on disk: --continue from another folder, stdin and URL attachments
kept by content, a saved file loaded back with --session PATH, chat --list, and cut-off schema
answers refused (as describe does)."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.parts import Image

from fake_engine import fake_engine  # noqa: F401  (fixture)
from media_factory import write_image

pytestmark = pytest.mark.usefixtures("fake_model")


def sessions(cli_env: Path) -> Path:
    return cli_env / "data" / "gemmapipe" / "sessions"


def test_continue_from_another_folder_keeps_the_attachment(cli_env: Path, fake_engine: list,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first = cli_env / "first"
    first.mkdir()
    write_image(first / "pic.png", size=(96, 96))
    monkeypatch.chdir(first)
    assert run(["chat", "-a", "pic.png", "what is it?"]) == 0
    saved = json.loads((sessions(cli_env) / "last.json").read_text())
    assert saved["turns"][0]["attachments"] == [str(first / "pic.png")]
    elsewhere = cli_env / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run(["chat", "--continue", "and now?"]) == 0
    msgs = fake_engine[-1].requests[-1][0]
    assert [m.role for m in msgs] == ["user", "assistant", "user"]
    assert isinstance(msgs[0].parts[0], Image)


def test_stdin_attachment_is_kept_by_content(cli_env: Path, fake_engine: list,  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    png = write_image(cli_env / "i.png", size=(96, 96)).read_bytes()
    (cli_env / "i.png").unlink()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(png)))
    assert run(["chat", "-a", "-", "describe it"]) == 0
    saved = json.loads((sessions(cli_env) / "last.json").read_text())
    (kept,) = saved["turns"][0]["attachments"]
    assert kept.startswith("last.files/")
    assert (sessions(cli_env) / kept).read_bytes() == png
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert run(["chat", "--continue", "again"]) == 0
    assert isinstance(fake_engine[-1].requests[-1][0][0].parts[0], Image)
    again = json.loads((sessions(cli_env) / "last.json").read_text())
    assert again["turns"][0]["attachments"] == [kept]  # kept once, not copied again


def test_session_path_saves_there_and_loads_back(cli_env: Path, fake_engine: list,  # noqa: F811
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(cli_env)
    assert run(["chat", "--session", "./chats/talk.json", "one"]) == 0
    target = cli_env / "chats" / "talk.json"
    assert json.loads(target.read_text())["turns"][0]["text"] == "one"
    assert not list(sessions(cli_env).glob("*talk*"))  # a path, not a name in the store
    assert run(["chat", "--session", str(target), "two"]) == 0
    assert [t["text"] for t in json.loads(target.read_text())["turns"]][::2] == ["one", "two"]
    assert [m.role for m in fake_engine[-1].requests[-1][0]] == ["user", "assistant", "user"]


def test_continue_with_session_is_refused(cli_env: Path, fake_engine: list,  # noqa: F811
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["chat", "--continue", "--session", "x", "hi"]) == 2
    assert "--continue: cannot be used with --session" in capsys.readouterr().err
    assert not fake_engine


def test_list_shows_name_time_turns_first_prompt(cli_env: Path, fake_engine: list,  # noqa: F811
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["chat", "--session", "trip", "plan a trip\nto Lisbon"]) == 0
    assert run(["chat", "--session", "trip", "and back?"]) == 0
    assert run(["chat", "hello there"]) == 0
    (sessions(cli_env) / "broken.json").write_text("{nope")
    capsys.readouterr()
    assert run(["chat", "--list"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    by_name = {r[0]: r for r in rows}
    assert set(by_name) == {"trip", "last", "broken"}
    assert by_name["trip"][2:] == ["2", "plan a trip to Lisbon"]
    assert by_name["last"][2:] == ["1", "hello there"]
    assert by_name["broken"][2] == "?" and "unreadable" in by_name["broken"][3]
    assert all(len(r[1]) == len("2025-01-01 12:00") for r in rows)
    assert len(fake_engine) == 3  # --list loads no model


def test_cut_off_schema_answer_is_an_error(cli_env: Path, fake_engine: list,  # noqa: F811
                                           capsys: pytest.CaptureFixture[str]) -> None:
    fake_engine.replies = ['{ "a"']
    schema = '{"type": "object", "properties": {"a": {"type": "string"}}}'
    assert run(["chat", "--schema", schema, "--max-tokens", "5", "give json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == '{ "a"\n'
    assert "the answer on stdout is incomplete" in captured.err
    assert "not valid JSON" in captured.err and "--max-tokens" in captured.err
    assert not (sessions(cli_env) / "last.json").exists()  # a failed turn is not kept
    fake_engine.replies = ['{"a": "b"}']
    assert run(["chat", "--schema", schema, "give json"]) == 0


@contextlib.contextmanager
def loopback_server(files: dict[str, bytes]) -> Iterator[str]:
    """A one-thread HTTP server on 127.0.0.1 serving `files` (404 otherwise)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_attachment_is_fetched_and_kept(cli_env: Path, fake_engine: list,  # noqa: F811
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    png = write_image(cli_env / "i.png", size=(96, 96)).read_bytes()
    with loopback_server({"/pic.png": png}) as base:
        assert run(["chat", "-a", f"{base}/pic.png", "what is it?"]) == 0
        assert isinstance(fake_engine[-1].requests[-1][0][0].parts[0], Image)
        (kept,) = json.loads((sessions(cli_env) / "last.json").read_text())["turns"][0]["attachments"]
        assert (sessions(cli_env) / kept).read_bytes() == png
        capsys.readouterr()
        assert run(["chat", "-a", f"{base}/missing.png", "what is it?"]) == 3
        assert f"error: {base}/missing.png: cannot fetch: HTTP 404" in capsys.readouterr().err
        monkeypatch.setenv("GEMMAPIPE_SPOOL_MAX", "100")  # the PNG is 271 bytes
        assert run(["chat", "-a", f"{base}/pic.png", "what is it?"]) == 3
        assert "spool limit" in capsys.readouterr().err
    assert run(["chat", "-a", f"{base}/pic.png", "gone?"]) == 3  # the server is gone: no connection
    assert "cannot fetch" in capsys.readouterr().err
