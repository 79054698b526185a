"""The video prefill state cache: an optimisation, so nothing wrong with it stops a run (one warning
line, the same answer as without the cache) and nothing read from it is ever executed. Through the
CLI on the tiny Gemma 4 pair, plus the cache module's own writing and eviction."""

from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gemmapipe.cli.app import run
from gemmapipe.core import statecache
from gemmapipe.core.statecache import Key, StateCache, make_key

from media_factory import write_video

THREADS = 2
QUESTION = "what happens?"


def _states(cli_env: Path) -> Path:
    return cli_env / "cache" / "gemmapipe" / "states"


def _entries(cli_env: Path) -> list[Path]:
    return sorted(_states(cli_env).glob("*.gpstate"))


def _key_of(path: Path) -> Key:
    content, setup = path.name.removesuffix(".gpstate").split("-")
    return Key(content, setup)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("gemmapipe: warning:")]


class Video:
    """One small video, its reference answer (no cache) and a way to ask about it."""

    def __init__(self, model: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.mp4 = write_video(tmp / "v.mp4", seconds=3.0, fps=5, with_audio=True)
        self.base = ["video", "-m", str(model), "-t", str(THREADS), "--max-tokens", "5", "-f", "json", "-c", "4096"]
        self.capsys = capsys
        self.reference = self.ask("--no-cache")[0]["text"]

    def ask(self, *extra: str) -> tuple[dict[str, Any], str]:
        rc = run([*self.base, *extra, "-p", QUESTION, str(self.mp4)])
        out, err = self.capsys.readouterr()
        assert rc == 0, err
        return json.loads(out), err

    def ask_ok(self, cache: str, warnings: int) -> tuple[dict[str, Any], list[str]]:
        """Ask; the answer is the reference one, the cache was `cache`, and there were `warnings` lines."""
        doc, err = self.ask()
        found = _warnings(err)
        assert len(found) == warnings, err
        assert doc["text"] == self.reference
        assert doc["meta"].get("cache") == cache
        return doc, found


@pytest.fixture
def video(tiny_gemma4: tuple[Path, Path], cli_env: Path, capsys: pytest.CaptureFixture[str]) -> Video:
    return Video(tiny_gemma4[0], cli_env, capsys)


pytestmark = [pytest.mark.model]


# --- nothing in the cache directory is executed ---------------------------------------------------

class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_is_refused_without_being_executed(video: Video, cli_env: Path) -> None:
    video.ask_ok("miss", 0)
    marker = cli_env / "PWNED"
    planted = pickle.dumps(_Planted(marker))
    files = [p for p in _states(cli_env).iterdir() if p.is_file()]
    assert files
    for p in files:  # whatever the cache keeps, under the very names it would read
        p.write_bytes(planted)
    (_states(cli_env) / "0123abcd.state").write_bytes(planted)  # the old pickled format's name
    _, warned = video.ask_ok("miss", 1)
    assert "not a gemmapipe state file" in warned[0] and "rebuilt" in warned[0]
    video.ask_ok("hit", 0)  # rebuilt by the run that refused it
    assert not marker.exists()
    assert not (_states(cli_env) / "0123abcd.state").exists()  # old-format files are dropped, never read


# --- every problem with the cache is one warning and a run without it -----------------------------

def _rewrite(path: Path, edit: Callable[[dict[str, Any]], object]) -> None:
    """Re-save an entry with its header info edited: a well-formed file whose contents are wrong."""
    key = _key_of(path)
    entry = StateCache(path.parent).get(key)
    assert entry is not None
    info = json.loads(json.dumps(entry.info))
    edit(info)
    assert StateCache(path.parent).put(key, info, bytes(entry.payload))


@pytest.mark.parametrize(("edit", "says"), [
    (lambda i: i["engine"].pop("n_past"), "lacks 'n_past'"),  # a state lacking a key
    (lambda i: i.pop("units"), "lacks 'units'"),
    (lambda i: i["engine"].__setitem__("n_past", "12"), "'n_past'"),  # a wrong type
    (lambda i: i["engine"].__setitem__("chunks", {"a": 1}), "'chunks' has the wrong type"),
    (lambda i: i.__setitem__("units", [["0", 0]]), "'units' have the wrong type"),
    (lambda i: i.__setitem__("units", [[0, 1, 1]]), "'units' have the wrong type"),  # layout 1's rows
    (lambda i: i["engine"]["chunks"][1].__setitem__(3, 5), "do not add up"),
    (lambda i: i["engine"].__setitem__("prefix_sha256", "0" * 64), "the saved prompt is not"),
], ids=["missing-key", "missing-units", "wrong-type", "wrong-type-chunks", "wrong-type-units",
        "old-layout-units", "inconsistent", "other-prompt"])
def test_a_malformed_entry_is_ignored_and_rebuilt(video: Video, cli_env: Path,
                                                  edit: Callable[[dict[str, Any]], object], says: str) -> None:
    video.ask_ok("miss", 0)
    [entry] = _entries(cli_env)
    _rewrite(entry, edit)
    _, warned = video.ask_ok("miss", 1)
    assert says in warned[0] and str(entry) in warned[0], warned
    video.ask_ok("hit", 0)


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-100] ^= 0xFF
    p.write_bytes(bytes(data))


def _future_version(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[8:12] = struct.pack("<I", 99)
    p.write_bytes(bytes(data))


def _garbage_state(p: Path) -> None:  # well-formed, checksum right, but llama.cpp's bytes are not a state
    key = _key_of(p)
    entry = StateCache(p.parent).get(key)
    assert entry is not None
    StateCache(p.parent).put(key, entry.info, os.urandom(len(entry.payload)))


def _grow(p: Path) -> None:
    with open(p, "ab") as fh:
        fh.write(b"x")


@pytest.mark.parametrize(("damage", "says"), [
    (_truncate, "truncated"), (_flip, "checksum mismatch"), (_future_version, "format version 99"),
    (_garbage_state, "llama.cpp refused"), (_grow, "more than its header says"),
    (lambda p: p.write_bytes(b""), "not a gemmapipe state file"),
], ids=["truncated", "corrupt", "future-version", "not-a-state", "longer", "empty"])
def test_a_damaged_entry_is_ignored_and_rebuilt(video: Video, cli_env: Path, damage: Callable[[Path], object],
                                                says: str) -> None:
    video.ask_ok("miss", 0)
    [entry] = _entries(cli_env)
    damage(entry)
    _, warned = video.ask_ok("miss", 1)
    assert says in warned[0] and "ignored, it will be rebuilt" in warned[0], warned
    video.ask_ok("hit", 0)


def test_a_foreign_entry_is_ignored(video: Video, cli_env: Path) -> None:
    video.ask_ok("miss", 0)
    [mine] = _entries(cli_env)
    assert run([*video.base[:-2], "-c", "3072", "-p", QUESTION, str(video.mp4)]) == 0  # another setup's entry
    video.capsys.readouterr()
    [other] = [p for p in _entries(cli_env) if p != mine]
    os.replace(other, mine)  # under this setup's name
    _, warned = video.ask_ok("miss", 1)
    assert "foreign" in warned[0]
    video.ask_ok("hit", 0)


def test_an_entry_that_is_a_directory(video: Video, cli_env: Path) -> None:
    video.ask_ok("miss", 0)
    [entry] = _entries(cli_env)
    entry.unlink()
    entry.mkdir()
    (entry / "inside").write_text("keep me")
    for _ in range(2):  # not fixed by us, not fatal either: the same single line each run
        _, warned = video.ask_ok("miss", 1)
        assert "is not a regular file" in warned[0] and "running without the cache" in warned[0]
    assert (entry / "inside").read_text() == "keep me"


def test_the_states_path_is_a_file(video: Video, cli_env: Path) -> None:
    states = _states(cli_env)
    states.parent.mkdir(parents=True, exist_ok=True)
    states.write_text("not a directory")
    _, warned = video.ask_ok("miss", 1)
    assert "is not a directory" in warned[0]
    assert states.read_text() == "not a directory"


def test_an_unwritable_cache_dir(video: Video, cli_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    states = _states(cli_env)
    states.mkdir(parents=True)
    if os.geteuid() == 0:  # root writes anywhere: refuse files in this directory as the kernel would
        real = tempfile.mkstemp

        def mkstemp(suffix: str | None = None, prefix: str | None = None, dir: str | None = None,
                    text: bool = False) -> tuple[int, str]:
            if dir is not None and Path(dir) == states:
                raise PermissionError(13, "Permission denied", str(dir))
            return real(suffix, prefix, dir, text)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    else:
        states.chmod(0o500)
    try:
        _, warned = video.ask_ok("miss", 1)
        assert "cannot save to" in warned[0] and "Permission denied" in warned[0]
        assert list(states.iterdir()) == []
    finally:
        states.chmod(0o700)


def test_quiet_silences_the_warning(video: Video, cli_env: Path) -> None:
    video.ask_ok("miss", 0)
    [entry] = _entries(cli_env)
    _truncate(entry)
    doc, err = video.ask("-q")
    assert _warnings(err) == [] and doc["text"] == video.reference


# --- the cache module: atomic writes, eviction ----------------------------------------------------

def _key(n: int) -> Key:
    return make_key({"n": n}, {"setup": 1})


def test_entries_round_trip_and_keys_split_content_from_setup(tmp_path: Path) -> None:
    cache = StateCache(tmp_path / "states")
    assert cache.get(_key(1)) is None and not cache.has_content(_key(1).content)
    assert cache.put(_key(1), {"a": [1, 2]}, b"payload")
    entry = cache.get(_key(1))
    assert entry is not None and entry.info == {"a": [1, 2]} and bytes(entry.payload) == b"payload"
    assert not entry.payload.readonly  # handed to ctypes without a copy
    other_setup = make_key({"n": 1}, {"setup": 2})
    assert other_setup.content == _key(1).content and other_setup.name != _key(1).name
    assert cache.has_content(_key(1).content) and cache.get(other_setup) is None
    assert cache.warnings == []


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()],
                         ids=["disk-full", "interrupted"])
def test_a_failed_save_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                failure: BaseException) -> None:
    warned: list[str] = []
    cache = StateCache(tmp_path, warn=warned.append)
    assert cache.put(_key(1), {}, b"old")

    def replace(*_: object) -> None:
        raise failure

    monkeypatch.setattr(statecache.os, "replace", replace)
    if isinstance(failure, OSError):
        assert not cache.put(_key(1), {}, b"new")
        assert len(warned) == 1 and "No space left on device" in warned[0]
    else:
        with pytest.raises(KeyboardInterrupt):
            cache.put(_key(1), {}, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{_key(1).name}.gpstate"]
    monkeypatch.undo()
    entry = StateCache(tmp_path).get(_key(1))
    assert entry is not None and bytes(entry.payload) == b"old"  # the old entry, whole


def test_eviction_drops_the_least_recently_used_beyond_the_cap(tmp_path: Path) -> None:
    payload = b"x" * 1000
    size = len(payload) + 200  # prelude and a small header
    cache = StateCache(tmp_path, cap_bytes=3 * size)
    now = time.time()
    for n in range(3):
        assert cache.put(_key(n), {}, payload)
        os.utime(cache.path(_key(n)), (now - 100 + n, now - 100 + n))  # 0 oldest, 2 newest
    assert cache.get(_key(0)) is not None  # a hit makes 0 the most recently used
    assert cache.put(_key(3), {}, payload)
    assert [cache.path(_key(n)).exists() for n in range(4)] == [True, False, True, True]


def test_eviction_clears_stale_temporaries_and_the_old_format(tmp_path: Path) -> None:
    stale, fresh = tmp_path / ".k.abc.part", tmp_path / ".k.def.part"
    old_state, old_timeline = tmp_path / "0123.state", tmp_path / "timeline-0123.json"
    for p in (stale, fresh, old_state, old_timeline):
        p.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    (tmp_path / "dir.state").mkdir()  # never removed: not ours to judge
    assert StateCache(tmp_path).put(_key(1), {}, b"p")
    assert not stale.exists() and fresh.exists()  # a fresh one may be another run's, still writing
    assert not old_state.exists() and not old_timeline.exists()
    assert (tmp_path / "dir.state").is_dir()


def test_an_entry_bigger_than_the_cap_is_not_saved(tmp_path: Path) -> None:
    warned: list[str] = []
    cache = StateCache(tmp_path, cap_bytes=100, warn=warned.append)
    assert not cache.put(_key(1), {}, b"x" * 200)
    assert list(tmp_path.iterdir()) == [] and warned == []


def test_an_entry_of_an_older_prompt_layout_is_not_used(video: Video, cli_env: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The layout version is part of the key: states saved for the bracketed per-second layout
    (PROMPT_LAYOUT 1) are never restored into a prompt laid out as the processor does."""
    from gemmapipe.core.tasks import video as video_task

    with monkeypatch.context() as m:
        m.setattr(video_task, "PROMPT_LAYOUT", 1)
        video.ask_ok("miss", 0)
        video.ask_ok("hit", 0)
    [old] = _entries(cli_env)
    video.ask_ok("miss", 0)  # the current layout: another key, no warning
    assert len(_entries(cli_env)) == 2 and old in _entries(cli_env)
    video.ask_ok("hit", 0)


def test_each_sequence_count_keeps_its_own_state(video: Video, cli_env: Path) -> None:
    """llama.cpp refuses a sequence's state saved with another KV stream count ("n_stream mismatch"),
    and -j N gives the cache N streams: switching -j must neither warn nor lose either state."""
    def ask(*extra: str) -> str:
        doc, err = video.ask(*extra)
        assert _warnings(err) == [], err
        assert doc["text"] == video.reference
        return str(doc["meta"].get("cache"))

    assert [ask("-j", "2"), ask(), ask("-j", "2"), ask(), ask("-j", "3")] == ["miss", "miss", "hit", "hit", "miss"]
    assert len(_entries(cli_env)) == 3
