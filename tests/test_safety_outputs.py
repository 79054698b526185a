"""Nothing the user gave is lost: outputs never replace an input, another input's result, a device
or a symlink; files get a shell redirect's mode; a batch keeps its good results.

Every case runs the CLI as a user would and checks the file system afterwards. Device nodes are
ones these tests make (mknod in a temporary folder, or a private /dev in a mount namespace): a
buggy run must never be able to replace the machine's real /dev/null.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.errors import ExitStatus

from fake_engine import fake_engine  # noqa: F401  (fixture)
from media_factory import recorded_speech, write_image, write_video

pytestmark = pytest.mark.usefixtures("fake_model")  # see conftest.py


def speech(path: Path, seconds: float = 2.0, seed: int = 0) -> Path:
    import soundfile as sf

    x = np.zeros(int(seconds * 16000), dtype=np.float32)
    x[8000:24000] = recorded_speech(16000, offset=seed * 16000)  # real speech: the detector keeps it
    sf.write(path, x, 16000)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every regular file under `folder`: content hash and mode (what must not change)."""
    return {str(p.relative_to(folder)): (digest(p), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".part") or ".spool" in p.name]


def one_error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x and not x.startswith("gemmapipe: hint:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("gemmapipe: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --- an output that resolves to an input is refused before anything runs ---------------------------

@pytest.mark.parametrize("spelling", ["same", "dotdot", "hardlink", "symlink", "absolute"])
def test_output_onto_the_input_is_refused(spelling: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str], fake_engine: list) -> None:  # noqa: F811
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    wav = speech(tmp_path / "talk.wav")
    before = snapshot(tmp_path)
    target = {"same": "talk.wav", "dotdot": "sub/../talk.wav", "absolute": str(wav)}.get(spelling)
    if spelling == "hardlink":
        os.link(wav, tmp_path / "twin.wav")
        before = snapshot(tmp_path)
        target = "twin.wav"
    if spelling == "symlink":
        os.symlink("talk.wav", tmp_path / "alias.wav")
        target = "alias.wav"
    code = run(["transcribe", "-o", str(target), "./talk.wav"])
    assert code == ExitStatus.USAGE
    line = one_error_line(capsys.readouterr().err)
    assert str(target) in line and "talk.wav" in line
    assert snapshot(tmp_path) == before
    assert not fake_engine  # refused before any model was loaded


def test_output_onto_a_later_input_of_a_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              fake_engine: list) -> None:  # noqa: F811
    a, b = speech(tmp_path / "a.wav"), speech(tmp_path / "b.wav", seed=1)
    before = snapshot(tmp_path)
    assert run(["transcribe", "-o", str(b), str(a), str(b)]) == ExitStatus.USAGE
    one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before and not fake_engine


def test_output_dir_result_onto_an_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str], fake_engine: list) -> None:  # noqa: F811
    monkeypatch.chdir(tmp_path)
    speech(tmp_path / "rec.wav")
    os.rename("rec.wav", "rec.txt")  # audio with a misleading name: its transcript would be rec.txt
    before = snapshot(tmp_path)
    assert run(["transcribe", "--output-dir", ".", "rec.txt"]) == ExitStatus.USAGE
    assert "rec.txt" in one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_describe_video_and_chat_refuse_too(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           fake_engine: list) -> None:  # noqa: F811
    img = write_image(tmp_path / "photo.png", (96, 96))
    vid = write_video(tmp_path / "clip.mp4", seconds=1.0)
    before = snapshot(tmp_path)
    for argv in (["describe", "-o", str(img), str(img)],
                 ["describe", "--dry-run", "-o", str(img), str(img)],
                 ["video", "-o", str(vid), str(vid)],
                 ["video", "--dry-run", "-o", str(vid), str(vid)],
                 ["chat", "-a", str(img), "-o", str(img), "what is this?"]):
        assert run(argv) == ExitStatus.USAGE, argv
        one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before and not fake_engine


# --- two inputs never map to one output ---------------------------------------------------------------

@pytest.mark.parametrize("extra", [[], ["--skip-existing"]])
def test_output_dir_stem_collision_is_refused(extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              fake_engine: list) -> None:  # noqa: F811
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    x1, x2 = speech(tmp_path / "a" / "x.wav"), speech(tmp_path / "b" / "x.wav", seed=3)
    out = tmp_path / "out"
    code = run(["transcribe", "--output-dir", str(out), *extra, str(x1), str(x2)])
    assert code == ExitStatus.USAGE
    line = one_error_line(capsys.readouterr().err)
    assert str(x1) in line and str(x2) in line
    assert not out.exists() or list(out.iterdir()) == []
    assert not fake_engine


# --- what is not a regular file is written in place, never renamed over ---------------------------------

def _mknod(path: Path, major: int, minor: int) -> Path:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("creating device nodes needs root")
    return path


def test_output_to_a_null_device_keeps_the_node(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                fake_engine: list) -> None:  # noqa: F811
    null = _mknod(tmp_path / "null", 1, 3)
    wav = speech(tmp_path / "talk.wav")
    assert run(["transcribe", "-o", str(null), str(wav)]) == 0
    st = os.lstat(null)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert leftovers(tmp_path) == []


def test_output_to_a_full_device_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   fake_engine: list) -> None:  # noqa: F811
    full = _mknod(tmp_path / "full", 1, 7)
    wav = speech(tmp_path / "talk.wav")
    fake_engine.replies = ["word " * 3000]  # more than any buffer holds
    code = run(["transcribe", "-o", str(full), str(wav)])
    assert code == ExitStatus.ERROR
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(full) in line
    assert stat.S_ISCHR(os.lstat(full).st_mode)
    assert leftovers(tmp_path) == []


def test_output_to_a_fifo_is_written_in_place(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    wav = speech(tmp_path / "talk.wav")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    proc = subprocess.run([sys.executable, "-m", "gemmapipe", "transcribe", "--dry-run", "-o", str(fifo), str(wav)],
                          capture_output=True, timeout=60)
    reader.join(10)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(got[0])["file"] == str(wav)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_output_through_a_symlink_updates_the_target(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     fake_engine: list) -> None:  # noqa: F811
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "t.txt"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    link = tmp_path / "link.txt"
    os.symlink(target, link)
    dangling = tmp_path / "dangling.txt"
    os.symlink(tmp_path / "real" / "new.txt", dangling)
    wav = speech(tmp_path / "talk.wav")
    fake_engine.replies = ["hello"]
    assert run(["transcribe", "-o", str(link), str(wav)]) == 0
    assert run(["transcribe", "-o", str(dangling), str(wav)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "hello\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert dangling.is_symlink() and (tmp_path / "real" / "new.txt").read_text() == "hello\n"
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_dev_stdout_and_dev_null_in_a_private_dev(tmp_path: Path) -> None:
    """-o /dev/stdout writes to stdout and -o /dev/null discards, both leaving /dev as it was: in a
    mount namespace of its own with a tmpfs /dev, so the real one is never at risk."""
    wav = speech(tmp_path / "talk.wav")
    script = f"""
set -e
mount -t tmpfs none /dev
mknod -m 666 /dev/null c 1 3
ln -s /proc/self/fd/1 /dev/stdout
before=$(ls -l /dev)
{sys.executable} -m gemmapipe transcribe --dry-run -o /dev/stdout {wav}
{sys.executable} -m gemmapipe transcribe --dry-run -o /dev/null {wav}
test -L /dev/stdout && test -c /dev/null
test "$before" = "$(ls -l /dev)"
echo DEV-OK
"""
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, timeout=120)
    if proc.returncode != 0 and b"unshare" in proc.stderr and b"Operation not permitted" in proc.stderr:
        pytest.skip("no permission for a mount namespace")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert json.loads(lines[0])["file"] == str(wav)  # /dev/stdout reached stdout
    assert lines[-1] == "DEV-OK" and len(lines) == 2  # /dev/null swallowed the second plan


# --- a batch to one file keeps the good results -----------------------------------------------------------

def test_batch_to_a_file_keeps_good_records_on_partial_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               fake_engine: list) -> None:  # noqa: F811
    good = [speech(tmp_path / f"g{i}.wav", seed=i) for i in range(2)]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"\x00" * 100)
    argv = ["transcribe", "-f", "jsonl", str(good[0]), str(bad), str(good[1])]
    assert run(argv) == ExitStatus.PARTIAL
    streamed = capsys.readouterr().out
    out = tmp_path / "all.jsonl"
    assert run([*argv, "-o", str(out)]) == ExitStatus.PARTIAL
    assert out.read_text() == streamed
    assert {Path(json.loads(x)["file"]).name for x in out.read_text().splitlines()} == {"g0.wav", "g1.wav"}
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fmt", ["json", "srt", "vtt"])
def test_several_inputs_never_make_an_invalid_document(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       fake_engine: list) -> None:  # noqa: F811
    wavs = [speech(tmp_path / f"g{i}.wav", seed=i) for i in range(2)]
    assert run(["transcribe", "-f", fmt, *map(str, wavs)]) == ExitStatus.USAGE
    err = capsys.readouterr().err
    assert "--output-dir" in err and "jsonl" in err
    one_error_line(err)
    assert run(["transcribe", "-f", fmt, "--output-dir", str(tmp_path / "d"), *map(str, wavs)]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [f"g0.{fmt}", f"g1.{fmt}"]


def test_describe_batch_to_a_file_keeps_good_records(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     fake_engine: list) -> None:  # noqa: F811
    imgs = [write_image(tmp_path / f"i{i}.png", (96, 96)) for i in range(2)]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "answers.jsonl"
    assert run(["describe", "-o", str(out), str(imgs[0]), str(bad), str(imgs[1])]) == ExitStatus.PARTIAL
    assert [Path(json.loads(x)["file"]).name for x in out.read_text().splitlines()] == ["i0.png", "i1.png"]
    assert run(["describe", "-f", "json", str(imgs[0]), str(imgs[1])]) == ExitStatus.USAGE


# --- modes as a shell redirect gives them --------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_new_output_gets_the_redirect_mode(umask: int, tmp_path: Path, fake_engine: list) -> None:  # noqa: F811
    wav = speech(tmp_path / "talk.wav")
    old = os.umask(umask)
    try:
        assert run(["transcribe", "-o", str(tmp_path / "t.txt"), str(wav)]) == 0
        assert run(["transcribe", "--output-dir", str(tmp_path / "d"), str(wav)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.txt").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "d" / "talk.txt").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("mode", [0o664, 0o600, 0o444])
def test_overwrite_keeps_the_existing_mode(mode: int, tmp_path: Path, fake_engine: list) -> None:  # noqa: F811
    wav = speech(tmp_path / "talk.wav")
    out = tmp_path / "t.txt"
    out.write_text("old\n")
    os.chmod(out, mode)
    assert run(["transcribe", "-o", str(out), str(wav)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == mode and out.read_text() != "old\n"


# --- chat writes -o; long names fit; the extension picks the format ------------------------------------

def test_chat_writes_its_answer_to_the_output(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              fake_engine: list) -> None:  # noqa: F811
    fake_engine.replies = ["forty two"]
    out = tmp_path / "answer.txt"
    assert run(["chat", "-o", str(out), "what is six times seven?"]) == 0
    assert out.read_text() == "forty two\n"
    assert capsys.readouterr().out == ""


def test_longest_names_still_get_a_temporary(tmp_path: Path, fake_engine: list) -> None:  # noqa: F811
    wav = speech(tmp_path / "talk.wav")
    out = tmp_path / ("n" * 250 + ".txt")  # 254 bytes: the name fits, so the run must too
    assert run(["transcribe", "-o", str(out), str(wav)]) == 0 and out.exists()
    stem = "é" * 120  # 240 bytes of UTF-8
    src = speech(tmp_path / f"{stem}.wav")
    assert run(["transcribe", "--output-dir", str(tmp_path / "d"), str(src)]) == 0
    assert (tmp_path / "d" / f"{stem}.txt").exists()
    assert leftovers(tmp_path) == []


def test_extension_of_the_output_chooses_the_format(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    fake_engine: list) -> None:  # noqa: F811
    wav = speech(tmp_path / "talk.wav")
    fake_engine.replies = ["hello there"]
    assert run(["transcribe", "-o", str(tmp_path / "t.srt"), str(wav)]) == 0
    assert (tmp_path / "t.srt").read_text().startswith("1\n00:00:0")
    assert run(["transcribe", "-o", str(tmp_path / "t.json"), str(wav)]) == 0
    json.loads((tmp_path / "t.json").read_text())
    assert run(["transcribe", "-f", "txt", "-o", str(tmp_path / "u.srt"), str(wav)]) == 0
    assert (tmp_path / "u.srt").read_text() == "hello there\n"  # -f wins


def test_output_with_output_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           fake_engine: list) -> None:  # noqa: F811
    wav = speech(tmp_path / "talk.wav")
    assert run(["transcribe", "-o", str(tmp_path / "x.txt"), "--output-dir", str(tmp_path / "d"), str(wav)]) == 2
    assert "--output-dir" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "x.txt").exists() and not (tmp_path / "d").exists()


# --- names that are not UTF-8 are bytes, written losslessly ---------------------------------------------

def test_non_utf8_names_give_valid_json_and_byte_exact_output_names(tmp_path: Path, fake_engine: list) -> None:  # noqa: F811
    raw = os.fsencode(tmp_path) + b"/caf\xe9-\xff.wav"  # Latin-1 bytes: not UTF-8
    name = os.fsdecode(raw)
    os.rename(speech(tmp_path / "tmp.wav"), raw)
    good = speech(tmp_path / "plain.wav", seed=2)
    fake_engine.replies = ["hello"]
    out = tmp_path / "all.json"
    assert run(["transcribe", "-f", "json", "-o", str(out), name]) == 0
    text = out.read_bytes().decode("utf-8")  # strict: the document is valid UTF-8
    assert os.fsencode(json.loads(text)["file"]) == raw  # and says exactly which file
    assert run(["transcribe", "-f", "jsonl", "-o", str(tmp_path / "b.jsonl"), name, str(good)]) == 0
    recs = [json.loads(x) for x in (tmp_path / "b.jsonl").read_bytes().decode("utf-8").splitlines()]
    assert {os.fsencode(r["file"]) for r in recs} == {raw, os.fsencode(good)}
    assert run(["transcribe", "--output-dir", str(tmp_path / "d"), name, str(good)]) == 0
    assert sorted(os.listdir(os.fsencode(tmp_path / "d"))) == [b"caf\xe9-\xff.txt", b"plain.txt"]


def test_non_utf8_name_to_stdout_in_a_real_process(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/\xff\xfe.wav"
    os.rename(speech(tmp_path / "tmp.wav"), raw)
    proc = subprocess.run([os.fsencode(sys.executable), b"-m", b"gemmapipe", b"transcribe", b"--dry-run", raw],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout.decode("utf-8"))
    assert os.fsencode(plan["file"]) == raw


@pytest.mark.parametrize("target", ["", ".", "sub/", "newdir/"])
def test_output_that_names_a_directory_or_nothing_is_refused(target: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str],
                                                             fake_engine: list) -> None:  # noqa: F811
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    speech(tmp_path / "talk.wav")
    before = snapshot(tmp_path)
    assert run(["transcribe", "-o", target, "talk.wav"]) == ExitStatus.USAGE
    one_error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before and not (tmp_path / "newdir").exists()
    assert not fake_engine
