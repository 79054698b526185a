"""Shell completion as a user meets it: the scripts in completions/ loaded into a real bash, zsh and
fish, a line typed, Tab pressed, and the line read back from the shell itself.

bash and zsh run interactively in a pseudo-terminal (pexpect); a key bound to a small widget writes
the edited line ($READLINE_LINE, $BUFFER) to a file, so nothing depends on how the terminal echoes.
fish completes non-interactively with `complete -C LINE`, which runs the same machinery as Tab.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pexpect = pytest.importorskip("pexpect")

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = ROOT / "completions"
DUMP_KEY = "\x18\x04"  # Ctrl-X Ctrl-D: write the line being edited to a file

pytestmark = pytest.mark.usefixtures("cli_env")


def _need(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed (apt-get install {shell}; .ci/run installs it)")
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory with media, a model and an output folder, and a PATH whose `gemmapipe` is this
    checkout run by this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "gemmapipe"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m gemmapipe "$@"\n')
    exe.chmod(0o755)
    work = tmp_path / "work"
    (work / "outdir").mkdir(parents=True)
    for name in ("talk.wav", "my talk.mp3", "model.gguf", "zeta.txt"):
        (work / name).write_bytes(b"x")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEMMAPIPE_", "_GEMMAPIPE"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", HOME=str(tmp_path), TERM="xterm",
               LC_ALL="C.UTF-8", XDG_CONFIG_HOME=str(tmp_path / "config"), INPUTRC="/dev/null")
    return work, env


class Interactive:
    """An interactive shell in a pty: `tab(line)` types line, presses Tab, returns the edited line."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, setup: list[str], dump: Path) -> None:
        self.dump = dump
        self.child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(cwd), encoding="utf-8", timeout=30,
                                   dimensions=(50, 200))
        for line in setup:
            self.child.sendline(line)
        self.child.sendline("echo READY-$((6*7))")
        self.child.expect("READY-42")

    def tab(self, line: str, tabs: int = 1) -> str:
        self.dump.unlink(missing_ok=True)
        self.child.send(line)
        for _ in range(tabs):
            time.sleep(0.1)
            self.child.send("\t")
        time.sleep(0.1)
        self.child.send(DUMP_KEY)
        deadline = time.monotonic() + 30
        while not self.dump.exists() or not self.dump.read_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"no line back for {line!r}; the shell said: {self.child.before!r}")
            time.sleep(0.05)
            try:  # keep reading so the pty never fills up
                self.child.read_nonblocking(65536, timeout=0)
            except (pexpect.TIMEOUT, pexpect.EOF):
                pass
        text = self.dump.read_text()
        self.child.send("\x03")  # drop the line
        self.child.sendline("echo READY-$((6*7))")
        self.child.expect("READY-42")
        return text

    def transcript(self) -> str:
        try:
            self.child.read_nonblocking(65536, timeout=0.2)
        except (pexpect.TIMEOUT, pexpect.EOF):
            pass
        return str(self.child.before)

    def close(self) -> None:
        self.child.sendline("exit")
        self.child.close(force=True)


@pytest.fixture
def bash(workdir: tuple[Path, dict[str, str]], tmp_path: Path) -> Interactive:
    path = _need("bash")
    work, env = workdir
    dump = tmp_path / "line"
    shell = Interactive([path, "--norc", "--noprofile", "-i"], {**env, "PS1": "$ "}, work, [
        "bind 'set bell-style none'",
        f"bind -x '\"\\C-x\\C-d\": printf %s \"$READLINE_LINE\" > {dump}'",
        f"source {COMPLETIONS / 'gemmapipe.bash'}",
    ], dump)
    yield shell
    shell.close()


@pytest.fixture
def zsh(workdir: tuple[Path, dict[str, str]], tmp_path: Path) -> Interactive:
    path = _need("zsh")
    work, env = workdir
    dump = tmp_path / "line"
    shell = Interactive([path, "-f", "-i"], {**env, "PS1": "$ "}, work, [
        "unsetopt beep",
        f"fpath=({COMPLETIONS} $fpath)",
        "autoload -Uz compinit && compinit -u -D",
        f"_dump() {{ print -rn -- \"$BUFFER\" > {dump} }}",
        "zle -N _dump",
        "bindkey '^X^D' _dump",
    ], dump)
    yield shell
    shell.close()


# (typed line, what Tab must turn it into): subcommands, options, -f values, file and folder arguments
CASES = [
    ("gemmapipe tr", "gemmapipe transcribe "),
    ("gemmapipe mod", "gemmapipe models "),
    ("gemmapipe models pu", "gemmapipe models pull "),
    ("gemmapipe transcribe --output-d", "gemmapipe transcribe --output-dir "),
    ("gemmapipe chat --sys", "gemmapipe chat --system "),
    ("gemmapipe transcribe -f vt", "gemmapipe transcribe -f vtt "),
    ("gemmapipe diarize --format rt", "gemmapipe diarize --format rttm "),
    ("gemmapipe video -f m", "gemmapipe video -f md "),
    ("gemmapipe diarize -l Germ", "gemmapipe diarize -l German "),
    ("gemmapipe transcribe --cache-type q8", "gemmapipe transcribe --cache-type q8_0 "),
    ("gemmapipe transcribe ta", "gemmapipe transcribe talk.wav "),
    ("gemmapipe transcribe my", "gemmapipe transcribe my\\ talk.mp3 "),
    ("gemmapipe transcribe -f srt ta", "gemmapipe transcribe -f srt talk.wav "),
    ("gemmapipe describe -m mo", "gemmapipe describe -m model.gguf "),
    ("gemmapipe chat -a ze", "gemmapipe chat -a zeta.txt "),
    ("gemmapipe transcribe --output-dir ou", "gemmapipe transcribe --output-dir outdir/"),
]


@pytest.mark.parametrize(("typed", "completed"), CASES, ids=[c[0] for c in CASES])
def test_bash_tab(bash: Interactive, typed: str, completed: str) -> None:
    assert bash.tab(typed) == completed


def test_bash_lists_choices_and_prints_no_error(bash: Interactive) -> None:
    assert bash.tab("gemmapipe diarize -f j") == "gemmapipe diarize -f json"  # json, jsonl: the common part
    bash.child.send("gemmapipe diarize -f \t\t")
    bash.child.expect("rttm")
    bash.child.send("\x03")
    assert "not supported" not in bash.transcript()


@pytest.mark.parametrize(("typed", "completed"), CASES, ids=[c[0] for c in CASES])
def test_zsh_tab(zsh: Interactive, typed: str, completed: str) -> None:
    assert zsh.tab(typed) == completed


def test_zsh_sourced_script_completes_too(workdir: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    path = _need("zsh")
    work, env = workdir
    dump = tmp_path / "line"
    shell = Interactive([path, "-f", "-i"], {**env, "PS1": "$ "}, work, [
        "unsetopt beep",
        "autoload -Uz compinit && compinit -u -D",
        f"source {COMPLETIONS / '_gemmapipe'}",
        f"_dump() {{ print -rn -- \"$BUFFER\" > {dump} }}",
        "zle -N _dump",
        "bindkey '^X^D' _dump",
    ], dump)
    try:
        assert shell.tab("gemmapipe dia") == "gemmapipe diarize "
    finally:
        shell.close()


def test_zsh_lists_choices_and_prints_no_error(zsh: Interactive) -> None:
    zsh.child.send("gemmapipe diarize -f \t")
    zsh.child.expect("rttm")
    zsh.child.send("\x03")
    assert "not supported" not in zsh.transcript()


def _fish(line: str, workdir: tuple[Path, dict[str, str]]) -> list[str]:
    path = _need("fish")
    work, env = workdir
    script = f"source {COMPLETIONS / 'gemmapipe.fish'}; complete -C {_fish_quote(line)}"
    proc = subprocess.run([path, "--no-config", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return [row.split("\t")[0] for row in proc.stdout.splitlines()]


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


FISH_CASES = [
    ("gemmapipe tr", ["transcribe"]),
    ("gemmapipe models p", ["path", "pull"]),
    ("gemmapipe transcribe --output-d", ["--output-dir"]),
    ("gemmapipe transcribe -f ", ["txt", "srt", "vtt", "json", "jsonl", "tsv", "all"]),
    ("gemmapipe diarize -f j", ["json", "jsonl"]),
    ("gemmapipe transcribe -l Ge", ["German", "Georgian"]),
    ("gemmapipe transcribe ta", ["talk.wav"]),
    ("gemmapipe transcribe my", ["my talk.mp3"]),
    ("gemmapipe describe -m mo", ["model.gguf"]),
    ("gemmapipe transcribe --output-dir o", ["outdir/"]),
]


@pytest.mark.parametrize(("typed", "offered"), FISH_CASES, ids=[c[0] for c in FISH_CASES])
def test_fish_complete(workdir: tuple[Path, dict[str, str]], typed: str, offered: list[str]) -> None:
    assert sorted(_fish(typed, workdir)) == sorted(offered)


def test_fish_shows_descriptions(workdir: tuple[Path, dict[str, str]]) -> None:
    path = _need("fish")
    work, env = workdir
    proc = subprocess.run([path, "--no-config", "-c",
                           f"source {COMPLETIONS / 'gemmapipe.fish'}; complete -C 'gemmapipe di'"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.splitlines() == ["diarize\tWho spoke when (and what)."]


def test_completion_loads_no_heavy_module_and_no_config(tmp_path: Path) -> None:
    cfg = tmp_path / "config" / "gemmapipe" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("this is = not [toml\n")  # a broken config must not break Tab
    code = ("import sys\nfrom gemmapipe.cli.app import run\nrc = run([])\n"
            "heavy = [m for m in ('numpy', 'av', 'llama_cpp', 'PIL', 'soundfile', 'rich') if m in sys.modules]\n"
            "print(heavy, file=sys.stderr)\nsys.exit(rc or (1 if heavy else 0))\n")
    env = {**os.environ, "_GEMMAPIPE_COMPLETE": "complete_bash", "_GEMMAPIPE_COMPLETE_LINE": "gemmapipe transcribe -",
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "[]"
    assert "plain,--format" in proc.stdout.splitlines()


def test_unknown_shell_answers_nothing(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from gemmapipe.cli.app import run

    monkeypatch.setenv("_GEMMAPIPE_COMPLETE", "complete_tcsh")
    assert run([]) == 2
    assert capsys.readouterr() == ("", "")



@pytest.mark.parametrize("line", ["gemmapipe ", "gemmapipe nosuch --f", 'gemmapipe transcribe "my ta', "gemmapipe chat -- -",
                                  "gemmapipe transcribe -t x -", "gemmapipe --version tr", "FOO=1 gemmapipe tr",
                                  "gemmapipe transcribe --format=s"])
def test_any_line_completes_quietly(line: str, tmp_path: Path) -> None:
    env = {**os.environ, "_GEMMAPIPE_COMPLETE": "complete_bash", "_GEMMAPIPE_COMPLETE_LINE": line,
           "XDG_CONFIG_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "gemmapipe"], capture_output=True, text=True, env=env)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "gemmapipe 0" not in proc.stdout  # --version's callback does not run while completing
    expected = {"gemmapipe ": "plain,transcribe", "FOO=1 gemmapipe tr": "plain,transcribe",
                'gemmapipe transcribe "my ta': "file,my ta", "gemmapipe transcribe --format=s": "plain,srt"}
    if line in expected:
        assert expected[line] in proc.stdout.splitlines()
