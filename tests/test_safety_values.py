"""Bad values, through the CLI where a user gives them: the config file, option values, times and
ranges, session files, /save, --score files, schemas, and missing inputs before the model.

Every refusal is exactly one `gemmapipe: error: ...` line on stderr (plus at most one hint line),
its documented exit status, no traceback, nothing on stdout, no model loaded and nothing written.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.errors import ExitStatus

from fake_engine import fake_engine  # noqa: F401  (fixture)
from media_factory import recorded_speech, write_image, write_video


def speech(path: Path, seconds: float = 2.0) -> Path:
    import soundfile as sf

    x = np.zeros(int(seconds * 16000), dtype=np.float32)
    x[8000:24000] = recorded_speech(16000)
    sf.write(path, x, 16000)
    return path


def refused(capsys: pytest.CaptureFixture[str], args: list[str], status: int, *needles: str) -> str:
    """Run `args`; assert the refusal contract; return the error line."""
    code = run(args)
    out = capsys.readouterr()
    lines = out.err.splitlines()
    assert code == status, out.err
    assert out.out == ""
    assert "Traceback" not in out.err and "internal" not in out.err, out.err
    assert 1 <= len(lines) <= 2, out.err
    assert lines[0].startswith("gemmapipe: error: "), out.err
    if len(lines) == 2:
        assert lines[1].startswith("gemmapipe: hint: "), out.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture
def config_file(cli_env: Path) -> Path:
    path = cli_env / "config" / "gemmapipe" / "config.toml"
    path.parent.mkdir(parents=True)
    return path


# --- the config file -------------------------------------------------------------------------------

BAD_CONFIGS = [
    (b"model = 5\n", "model must be a path (a string), not an integer"),
    ('language = "Espa\xf1ol"\n'.encode("latin-1"), "not UTF-8 text (line 1)"),
    (b"model = [unclosed\n", "invalid TOML"),
    (b"treads = 8\n", "unknown key 'treads'"),
    (b"[transcribe]\ntreads = 8\n", "unknown key 'treads' in [transcribe]"),
    (b"[transcirbe]\nthreads = 8\n", "unknown table [transcirbe]"),
    (b'threads = "8"\n', "threads must be an integer, not a string"),
    (b"threads = 0\n", "threads: 0 is not in the range 1<=x<=512"),
    (b"temperature = nan\n", "temperature: nan is not a finite number"),
    (b"temperature = true\n", "temperature must be a number, not a boolean"),
    (b'flash-attn = "maybe"\n', "flash-attn: 'maybe' is not one of 'auto', 'on', 'off'"),
    (b"no-progress = 1\n", "no-progress must be true or false, not an integer"),
    (b"[chat]\nimage-tokens = 9999\n", "[chat] image-tokens: 9999 is not in the range 70<=x<=1120"),
    (b"[transcribe]\nformat = 5\n", "[transcribe] format must be a string, not an integer"),
    (b'format = "docx"\n', "format: unknown format 'docx' (choose one of txt, srt, vtt, json, jsonl, tsv)"),
    (b'[transcribe]\nformat = "md"\n', "[transcribe] format: unknown format 'md'"),
    (b"help = true\n", "unknown key 'help'"),
]


@pytest.mark.parametrize(("content", "reason"), BAD_CONFIGS, ids=[r for _, r in BAD_CONFIGS])
def test_bad_config_is_exit_2_naming_file_and_key(config_file: Path, capsys: pytest.CaptureFixture[str],
                                                  fake_model: Path, fake_engine: list,  # noqa: F811
                                                  content: bytes, reason: str) -> None:
    config_file.write_bytes(content)
    wav = speech(config_file.parent.parent.parent / "a.wav")
    line = refused(capsys, ["transcribe", str(wav)], ExitStatus.USAGE, f"config {config_file}: ", reason)
    assert line.count("gemmapipe: error:") == 1
    assert not fake_engine  # nothing loaded


@pytest.mark.parametrize(("content", "reason"), BAD_CONFIGS[:4], ids=[r for _, r in BAD_CONFIGS[:4]])
def test_bad_config_does_not_block_version_and_help(config_file: Path, capsys: pytest.CaptureFixture[str],
                                                    content: bytes, reason: str) -> None:
    config_file.write_bytes(content)
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.startswith("gemmapipe ")
    for args in (["--help"], ["transcribe", "--help"], ["chat", "-h"]):
        assert run(args) == 0, args
        out = capsys.readouterr()
        assert out.out.startswith("Usage: gemmapipe") and out.err == ""


def test_bad_config_stops_chat_before_anything_is_written(config_file: Path, capsys: pytest.CaptureFixture[str],
                                                          fake_model: Path, fake_engine: list) -> None:  # noqa: F811
    config_file.write_text("model = 5\n")
    before = files_under(config_file.parent.parent.parent / "data")
    refused(capsys, ["chat", "hi"], ExitStatus.USAGE, "model must be a path")
    assert files_under(config_file.parent.parent.parent / "data") == before  # no session saved
    assert not fake_engine


def test_top_level_value_only_some_commands_take(config_file: Path, capsys: pytest.CaptureFixture[str],
                                                  fake_model: Path) -> None:
    config_file.write_text('format = "md"\n')  # video's, not transcribe's
    assert run(["transcribe", "--dry-run", "x.wav"]) == ExitStatus.USAGE
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "format: unknown format 'md'" in lines[0]
    assert lines[1].startswith("gemmapipe: hint: ") and "put it in a [video] table instead" in lines[1]


def test_config_keys_are_option_names(config_file: Path, capsys: pytest.CaptureFixture[str],
                                      fake_model: Path, fake_engine: list) -> None:  # noqa: F811
    config_file.write_text('threads = 3\nmax_tokens = 9\n[transcribe]\nformat = "srt"\ncache-type = "q8_0"\n'
                           '[chat]\nmax-tokens = 7\n')
    wav = speech(config_file.parent.parent.parent / "a.wav")
    assert run(["transcribe", str(wav)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1\n") and " --> " in out  # SRT: the [transcribe] format = "srt" took effect
    engine = fake_engine[-1]
    assert engine.config.threads == 3 and engine.config.cache_type == "q8_0"
    assert engine.requests[-1][1].max_tokens == 9  # underscores work as dashes
    assert run(["chat", "hi"]) == 0
    assert fake_engine[-1].requests[-1][1].max_tokens == 7  # the [chat] table beats the top level
    assert fake_engine[-1].config.cache_type == "f16"  # [transcribe]'s value stays there


def test_gemmapipe_config_names_the_file(cli_env: Path, capsys: pytest.CaptureFixture[str], fake_model: Path,
                                         fake_engine: list, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    mine = cli_env / "mine.toml"
    mine.write_text("threads = 5\n")
    monkeypatch.setenv("GEMMAPIPE_CONFIG", str(mine))
    assert run(["chat", "hi"]) == 0
    assert fake_engine[-1].config.threads == 5
    capsys.readouterr()
    monkeypatch.setenv("GEMMAPIPE_CONFIG", str(cli_env / "missing.toml"))
    refused(capsys, ["chat", "hi"], ExitStatus.USAGE, f"config {cli_env / 'missing.toml'}: no such file")
    monkeypatch.setenv("GEMMAPIPE_CONFIG", os.devnull)  # an empty file: no config
    assert run(["chat", "hi"]) == 0


# --- option values --------------------------------------------------------------------------------

BAD_OPTIONS = [
    (["transcribe", "--start", "inf"], "'inf' is not a finite time"),
    (["transcribe", "--start", "1e400"], "'1e400' is not a finite time"),
    (["transcribe", "--start", "nan"], "'nan' is not a finite time"),
    (["transcribe", "--start", "1:99"], "minutes and seconds after a ':' must be under 60"),
    (["transcribe", "--start", "-5"], "'-5' is negative"),
    (["transcribe", "--start", "1:-5"], "'1:-5' is negative"),
    (["transcribe", "--start", "1e10"], "is too large"),
    (["diarize", "--end", "inf"], "'inf' is not a finite time"),
    (["video", "--end", "inf"], "'inf' is not a finite time"),
    (["video", "--start", "1:99"], "must be under 60"),
    (["chat", "--timeout", "nan"], "'nan' is not a finite number"),
    (["chat", "--timeout", "1e400"], "'1e400' is not a finite number"),
    (["chat", "--timeout", "1e9"], "not in the range"),
    (["chat", "--temperature", "nan"], "'nan' is not a finite number"),
    (["chat", "--temperature", "inf"], "'inf' is not a finite number"),
    (["chat", "--temperature", "-1"], "not in the range"),
    (["chat", "--flash-attn", "maybe"], "'maybe' is not one of 'auto', 'on', 'off'"),
    (["chat", "--cache-type", "q5_9"], "'q5_9' is not one of"),
    (["chat", "-t", "100000"], "100000 is not in the range 1<=x<=512"),
    (["chat", "-t", "32768"], "32768 is not in the range 1<=x<=512"),
    (["chat", "-t", "0"], "0 is not in the range"),
    (["chat", "-c", "99999999999"], "not in the range"),
    (["chat", "--max-tokens", "99999999999"], "not in the range"),
    (["chat", "--seed", "-1"], "not in the range"),
    (["chat", "--seed", "4294967296"], "not in the range"),
    (["chat", "--gpu-layers", "-2"], "not in the range"),
    (["chat", "--retries", "1000000"], "not in the range"),
    (["chat", "-j", "100000"], "not in the range"),
    (["video", "--fps", "nan"], "nan"),
]


@pytest.mark.parametrize(("args", "reason"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_option_value_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_model: Path,
                                             fake_engine: list, args: list[str], reason: str) -> None:  # noqa: F811
    target = {"transcribe": str(speech(tmp_path / "a.wav")), "diarize": str(speech(tmp_path / "a.wav")),
              "video": str(write_video(tmp_path / "v.mp4", seconds=2.0, fps=5, with_audio=True)), "chat": "hi"}
    before = files_under(tmp_path)
    refused(capsys, [*args, target[args[0]]], ExitStatus.USAGE, reason)
    assert not fake_engine
    assert files_under(tmp_path) == before


def test_bounds_themselves_are_accepted(capsys: pytest.CaptureFixture[str], fake_model: Path,
                                        fake_engine: list) -> None:  # noqa: F811
    assert run(["chat", "-t", "512", "--seed", "4294967295", "--temperature", "0.7", "--flash-attn", "on",
                "--cache-type", "q4_0", "hi"]) == 0
    config = fake_engine[-1].config
    assert (config.threads, config.flash_attn, config.cache_type) == (512, "on", "q4_0")
    assert capsys.readouterr().out == "canned reply\n"


# --- ranges: one rule for every command -------------------------------------------------------------

@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_start_past_the_end_is_exit_3_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 fake_model: Path, fake_engine: list, dry_run: bool) -> None:  # noqa: F811
    clip = write_video(tmp_path / "v.mp4", seconds=6.0, fps=5, with_audio=True)
    wav = speech(tmp_path / "a.wav", seconds=6.0)
    flag = ["--dry-run"] if dry_run else []
    refused(capsys, ["transcribe", *flag, "--start", "60", str(wav)], ExitStatus.BAD_INPUT,
            f"{wav}: has no audio after 60000 ms")
    for extra in ([], ["--no-audio"]):
        refused(capsys, ["video", *flag, *extra, "--start", "60", str(clip)], ExitStatus.BAD_INPUT,
                f"{clip}: has no video after 60000 ms (it lasts 6000 ms)")
    assert not fake_engine  # video refused before any model or cache
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.state"))


# --- sessions ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["[]", '[1, "two"]', '{"a": 1}', '{"turns": {"a": 1}}',
                                     '{"turns": [{"role": "robot", "text": "x"}]}',
                                     '{"system": 5, "turns": []}', '{"turns": [{"role": "user", "text": 3}]}',
                                     "{not json", "\xff\xfe"])
def test_bad_session_file_is_one_line_naming_it(cli_env: Path, capsys: pytest.CaptureFixture[str], fake_model: Path,
                                                fake_engine: list, content: str) -> None:  # noqa: F811
    last = cli_env / "data" / "gemmapipe" / "sessions" / "last.json"
    last.parent.mkdir(parents=True)
    last.write_bytes(content.encode("latin-1"))
    refused(capsys, ["chat", "--continue", "hi"], ExitStatus.USAGE, f"session {last}: ")
    assert last.read_bytes() == content.encode("latin-1")  # left as it was
    assert not fake_engine


def test_sessions_path_that_is_a_file(cli_env: Path, capsys: pytest.CaptureFixture[str], fake_model: Path,
                                      fake_engine: list) -> None:  # noqa: F811
    blocker = cli_env / "data" / "gemmapipe" / "sessions"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    # asked for by name: refused before the model is asked, nothing printed
    refused(capsys, ["chat", "--session", "work", "hi"], ExitStatus.ERROR, f"session store {blocker}",
            "is not a directory")
    assert not fake_engine
    # the implicit "last" of a one-shot chat: answered, with a warning that it is not kept
    assert run(["chat", "hi"]) == 0
    out = capsys.readouterr()
    assert out.out == "canned reply\n"
    assert out.err.count("\n") == 1 and out.err.startswith("gemmapipe: warning: session store")
    assert "not kept for --continue" in out.err
    assert blocker.read_text() == "not a folder"


def test_one_shot_session_round_trip(cli_env: Path, capsys: pytest.CaptureFixture[str], fake_model: Path,
                                     fake_engine: list) -> None:  # noqa: F811
    assert run(["chat", "--session", "work", "first"]) == 0
    assert run(["chat", "--session", "work", "second"]) == 0
    saved = json.loads((cli_env / "data" / "gemmapipe" / "sessions" / "work.json").read_text())
    assert [t["text"] for t in saved["turns"]] == ["first", "canned reply", "second", "canned reply"]
    assert not list((cli_env / "data" / "gemmapipe" / "sessions").glob("*.part"))


def _interactive(monkeypatch: pytest.MonkeyPatch, lines: list[str]) -> None:
    """Make `chat` interactive in-process: terminals on both ends, `input()` fed from `lines`."""
    feed = iter(lines)

    def fake_input(prompt: str = "") -> str:
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty(""))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(builtins, "input", fake_input)


def test_failed_save_is_a_message_and_the_conversation_goes_on(cli_env: Path, capsys: pytest.CaptureFixture[str],
                                                               fake_model: Path, fake_engine: list,  # noqa: F811
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = cli_env / "nonexistent" / "dir" / "x.json"
    unwritable = cli_env / "ro"
    unwritable.mkdir()
    unwritable.chmod(0o555)
    if os.access(unwritable, os.W_OK):  # root: permissions do not stop it; a read-only system folder does
        unwritable = Path("/sys")
        if os.access(unwritable, os.W_OK) and not unwritable.is_dir():
            pytest.skip("no unwritable folder to save into")
    good = cli_env / "ok.json"
    _interactive(monkeypatch, ["hello", f"/save {nowhere}", f"/save {unwritable / 'x.json'}", f"/save {cli_env}",
                               "again", f"/save {good}", "/exit"])
    try:
        assert run(["chat"]) == 0
    finally:
        (cli_env / "ro").chmod(0o755)
    out = capsys.readouterr()
    assert not (cli_env / "nonexistent").exists()  # /save does not create folders
    assert f"session {nowhere}: no such directory" in out.err
    assert f"session {unwritable / 'x.json'}: cannot write" in out.err
    assert f"session {cli_env}: is a directory" in out.err
    assert "Traceback" not in out.err
    assert len(fake_engine[-1].requests) == 2  # "again" was answered after the failed saves
    saved = json.loads(good.read_text())
    assert [t["text"] for t in saved["turns"]] == ["hello", "canned reply", "again", "canned reply"]
    assert not list(cli_env.glob("*.part")) and not list((cli_env / "ro").iterdir())


# --- diarize --score ----------------------------------------------------------------------------------

def test_score_file_is_checked_before_the_model(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("pyannote.metrics")
    wav = speech(cli_env / "a.wav")
    # no model configured anywhere: the --score problem comes first (not exit 4, no download offer)
    refused(capsys, ["diarize", "--score", str(cli_env / "missing.rttm"), str(wav)], ExitStatus.USAGE,
            f"--score {cli_env / 'missing.rttm'}: No such file or directory")
    ref = cli_env / "ref.rttm"
    ref.write_text("SPEAKER a 1 0.5 1.0 <NA> <NA> A <NA> <NA>\nSPEAKER a 1 zero 1.0 <NA> <NA> B <NA> <NA>\n")
    refused(capsys, ["diarize", "--score", str(ref), str(wav)], ExitStatus.USAGE,
            f"--score {ref}: line 2: onset and duration must be numbers")
    ref.write_text("SPEAKER a 1 0.5\n")
    refused(capsys, ["diarize", "--score", str(ref), str(wav)], ExitStatus.USAGE, "line 1: a SPEAKER line has 8")
    ref.write_text("SPEAKER a 1 nan 1.0 <NA> <NA> B <NA> <NA>\n")
    refused(capsys, ["diarize", "--score", str(ref), str(wav)], ExitStatus.USAGE, "finite and not negative")
    ref.write_text("# nothing\n")
    refused(capsys, ["diarize", "--score", str(ref), str(wav)], ExitStatus.USAGE, "has no SPEAKER lines")


# --- schemas ------------------------------------------------------------------------------------------

RECURSIVE = {"definitions": {"node": {"type": "object", "properties": {"child": {"$ref": "#/definitions/node"}}}},
             "$ref": "#/definitions/node"}
BAD_SCHEMAS = [
    (RECURSIVE, "$ref '#/definitions/node' is recursive"),
    ({"type": "object", "properties": {"me": {"$ref": "#"}}}, "makes it recursive, which is not supported"),
    ({"$ref": "#/definitions/nope"}, "points to nothing in the schema"),
    ({"$ref": "https://example.com/s.json"}, "only references inside the schema"),
    ({"$ref": 5}, "$ref must be a string"),
    ({"type": "blah"}, "cannot be turned into a grammar: Unrecognized schema"),
    ({"enum": 5}, "a keyword holds a value of the wrong type"),
]


@pytest.mark.parametrize(("schema", "reason"), BAD_SCHEMAS, ids=[r for _, r in BAD_SCHEMAS])
@pytest.mark.parametrize("command", ["describe", "chat"])
def test_bad_schema_is_one_clear_line_before_the_model(cli_env: Path, capsys: pytest.CaptureFixture[str],
                                                       command: str, schema: dict, reason: str) -> None:
    img = write_image(cli_env / "i.png", size=(64, 48))
    target = [str(img)] if command == "describe" else ["hi"]
    # no model configured: the schema is refused first (exit 2, not 4)
    refused(capsys, [command, "--schema", json.dumps(schema), *target], ExitStatus.USAGE, "schema: ", reason)


def test_recursion_below_a_property_still_works(cli_env: Path, capsys: pytest.CaptureFixture[str], fake_model: Path,
                                                fake_engine: list) -> None:  # noqa: F811
    fake_engine.replies = ['{"root": {}}']
    schema = {"type": "object", "properties": {"root": {"$ref": "#/definitions/node"}},
              "definitions": RECURSIVE["definitions"]}
    assert run(["chat", "--schema", json.dumps(schema), "hi"]) == 0
    assert fake_engine[-1].requests[-1][1].grammar


# --- inputs before the model ----------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["transcribe", "diarize", "describe", "video"])
def test_missing_sole_input_is_reported_before_the_model(cli_env: Path, capsys: pytest.CaptureFixture[str],
                                                         command: str) -> None:
    missing = cli_env / "missing.wav"
    # no model configured anywhere: without the check this is exit 4 "none configured"
    refused(capsys, [command, str(missing)], ExitStatus.BAD_INPUT, f"{missing}: no such file")
    if command != "video":
        refused(capsys, [command], ExitStatus.USAGE, "input: no input given")
    assert not (cli_env / "data").exists()  # no download started


def test_missing_input_in_a_batch_is_still_one_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       fake_model: Path, fake_engine: list) -> None:  # noqa: F811
    good = speech(tmp_path / "good.wav")
    missing = tmp_path / "missing.wav"
    assert run(["transcribe", "-f", "jsonl", str(missing), str(good)]) == ExitStatus.PARTIAL
    out = capsys.readouterr()
    assert [Path(json.loads(x)["file"]).name for x in out.out.splitlines()] == ["good.wav"]
    assert f"gemmapipe: error: {missing}: no such file" in out.err and "1 of 2 inputs failed" in out.err
