"""Small pure pieces of core: time parsing, repetition cutting, config mapping, atomic sinks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemmapipe.core.config import Key, default_map
from gemmapipe.core.errors import UsageError
from gemmapipe.core.sink import open_sink
from gemmapipe.core.tasks.transcribe import cut_repetition
from gemmapipe.core.timefmt import clock, parse_time_ms


@pytest.mark.parametrize(("text", "ms"), [("90", 90_000), ("1:30", 90_000), ("01:02:03.5", 3_723_500),
                                          ("2.5s", 2_500), ("1500ms", 1_500), ("0", 0)])
def test_parse_time(text: str, ms: int) -> None:
    assert parse_time_ms(text) == ms


@pytest.mark.parametrize("text", ["abc", "1:2:3:4", "-5", "1:x"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_time_ms(text)


def test_clock() -> None:
    assert clock(65_000) == "01:05"
    assert clock(3_725_000) == "1:02:05"


def test_cut_repetition() -> None:
    assert cut_repetition("hello world") == ("hello world", False)
    text, looped = cut_repetition("we said the the the the the the")
    assert looped and text == "we said the"
    text, looped = cut_repetition("a b c and so on and so on and so on and so on")
    assert looped and text == "a b c and so on"
    assert cut_repetition("no no no")[1] is False  # three is emphasis, not a loop


def test_default_map_precedence_inside_config() -> None:
    cfg = {"model": "a.gguf", "max-tokens": 5, "transcribe": {"model": "b.gguf"}}
    keys = {name: {"model": Key("model", "path"), "max_tokens": Key("max_tokens", "int")}
            for name in ("transcribe", "chat")}
    m = default_map(cfg, keys)
    assert m["transcribe"]["model"] == "b.gguf" and m["transcribe"]["max_tokens"] == 5
    assert m["chat"]["model"] == "a.gguf"


def test_sink_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with open_sink(target) as fh:
        fh.write("partial")
        assert not target.exists()  # nothing complete-looking while writing
    assert target.read_text() == "partial"
    with pytest.raises(RuntimeError), open_sink(target) as fh:
        fh.write("second attempt")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "partial"  # the old file survives a failed run
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temp file left behind


def test_sink_into_missing_directory_is_clean_error(tmp_path: Path) -> None:
    from gemmapipe.core.errors import GemmapipeError

    with pytest.raises(GemmapipeError, match="cannot write"), open_sink(tmp_path / "no" / "dir" / "x.txt"):
        pass
