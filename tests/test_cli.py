"""The CLI contract: subcommands, exit codes, one-line errors, option precedence, model validation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.errors import ExitStatus, ModelError
from gemmapipe.core.model import resolve

from fake_engine import fake_engine  # noqa: F401  (fixture)
from gguf_factory import write_mmproj, write_text_model

COMMANDS = ["transcribe", "diarize", "describe", "video", "chat"]


pytestmark = pytest.mark.usefixtures("cli_env")  # see conftest.py




@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "models"
    d.mkdir()
    out = {name: write_text_model(d / f"{name}.gguf") for name in ("a", "b", "c")}
    return out


def test_help_lists_the_five_subcommands() -> None:
    proc = subprocess.run([sys.executable, "-m", "gemmapipe", "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout
    assert "Exit status" in proc.stdout and "130" in proc.stdout


def test_help_imports_no_heavy_module() -> None:
    code = ("import sys\nfrom gemmapipe.cli.app import run\ntry:\n    run(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('numpy', 'av', 'llama_cpp', 'PIL', 'soundfile', 'gguf') if m in sys.modules]\n"
            "print(heavy, file=sys.stderr)\nsys.exit(1 if heavy else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        proc = subprocess.run([sys.executable, "-c", code.replace("['--help']", f"['{name}', '--help']")],
                              capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stderr)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.startswith("gemmapipe ")


def test_usage_error_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["transcribe", "--no-such-flag", "x.wav"]) == ExitStatus.USAGE
    err = capsys.readouterr()
    assert err.out == ""
    lines = err.err.strip().splitlines()
    assert lines[0].startswith("gemmapipe: error: usage: ")
    assert "Traceback" not in err.err


def test_unknown_format_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["transcribe", "-f", "docx", "x.wav"]) == ExitStatus.USAGE
    assert "unknown format 'docx'" in capsys.readouterr().err


def test_missing_model_exit_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["chat", "hello"]) == ExitStatus.MODEL
    err = capsys.readouterr().err
    assert err.startswith("gemmapipe: error: model: no model given")
    assert "gemmapipe: hint:" in err


def test_bad_model_file_exit_4_and_traceback_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    assert run(["chat", "-m", str(junk), "hi"]) == ExitStatus.MODEL
    err = capsys.readouterr().err
    assert "not a GGUF file" in err and "Traceback" not in err
    with pytest.raises(ModelError):
        run(["chat", "-m", str(junk), "--traceback", "hi"])
    monkeypatch.setenv("GEMMAPIPE_TRACEBACK", "1")
    with pytest.raises(ModelError):
        run(["chat", "-m", str(junk), "hi"])


def test_bad_input_exit_3(models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["transcribe", "--dry-run", str(tmp_path / "nope.wav")]) == ExitStatus.BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("gemmapipe: error: ")
    assert len(captured.err.strip().splitlines()) <= 2


def test_batch_partial_failure_exit_5(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from media_factory import write_tone

    good = tmp_path / "good.wav"
    write_tone(good, "wav", seconds=1.0)
    assert run(["transcribe", "--dry-run", str(good), str(tmp_path / "missing.wav")]) == ExitStatus.PARTIAL
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[0])["kind"] == "audio"
    assert "1 of 2 inputs failed" in captured.err


def test_precedence_flag_env_config(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    fake_engine: list) -> None:  # noqa: F811
    cfg = tmp_path / "config" / "gemmapipe" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f'model = "{models["a"]}"\ntemperature = 0.25\n[chat]\nmax-tokens = 7\n')

    def used() -> tuple[Path, object]:
        eng = fake_engine[-1]
        return eng.config.model, eng.requests[-1][1]

    assert run(["chat", "hi"]) == 0
    model, opts = used()
    assert model == models["a"] and opts.temperature == 0.25 and opts.max_tokens == 7  # config
    monkeypatch.setenv("GEMMAPIPE_MODEL", str(models["b"]))
    assert run(["chat", "hi"]) == 0
    assert used()[0] == models["b"]  # env beats config
    assert run(["chat", "-m", str(models["c"]), "--temperature", "0.5", "hi"]) == 0
    model, opts = used()
    assert model == models["c"] and opts.temperature == 0.5  # flag beats env and config


def test_invalid_config_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config" / "gemmapipe" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("model = [unclosed\n")
    assert run(["chat", "hi"]) == ExitStatus.USAGE
    assert "invalid TOML" in capsys.readouterr().err


def test_chat_one_shot_streams_reply_to_stdout(models: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                               fake_engine: list) -> None:  # noqa: F811
    fake_engine.replies = ["Paris is the capital."]
    assert run(["chat", "-m", str(models["a"]), "capital of France?"]) == 0
    assert capsys.readouterr().out == "Paris is the capital.\n"


# --- model validation (core) -----------------------------------------------------------------------

def test_resolve_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such file"):
        resolve(tmp_path / "missing.gguf", None)


def test_resolve_not_gguf(tmp_path: Path) -> None:
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04 zip not gguf")
    with pytest.raises(ModelError, match="not a GGUF"):
        resolve(p, None)


def test_resolve_truncated_gguf(tmp_path: Path) -> None:
    full = write_text_model(tmp_path / "full.gguf", n_embd=256)
    data = full.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 40):
        t = tmp_path / f"cut{cut}.gguf"
        t.write_bytes(data[:cut])
        with pytest.raises(ModelError, match="truncated|corrupt"):
            resolve(t, None)


def test_resolve_projector_of_wrong_width(tmp_path: Path) -> None:
    model = write_text_model(tmp_path / "m.gguf", n_embd=64)
    write_mmproj(tmp_path / "mmproj-m.gguf", width=32)
    with pytest.raises(ModelError, match="width 32 but the model m.gguf has width 64"):
        resolve(model, None, needs={"audio"})


def test_resolve_finds_single_mmproj_and_checks_modalities(tmp_path: Path) -> None:
    model = write_text_model(tmp_path / "m.gguf", n_embd=64)
    proj = write_mmproj(tmp_path / "mmproj-m.gguf", width=64, audio=False)
    pair = resolve(model, None, needs={"vision"})
    assert pair.mmproj is not None and pair.mmproj.path == proj
    with pytest.raises(ModelError, match=r"mmproj-m.gguf.*has no audio encoder"):
        resolve(model, None, needs={"audio"})


def test_resolve_ambiguous_mmproj(tmp_path: Path) -> None:
    model = write_text_model(tmp_path / "m.gguf")
    write_mmproj(tmp_path / "mmproj-a.gguf")
    write_mmproj(tmp_path / "mmproj-b.gguf")
    with pytest.raises(ModelError, match="several mmproj"):
        resolve(model, None, needs={"vision"})


def test_transcribe_without_audio_projector_exit_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from media_factory import write_tone

    model = write_text_model(tmp_path / "m.gguf", n_embd=64)
    write_mmproj(tmp_path / "mmproj-m.gguf", width=64, audio=False)
    wav = tmp_path / "a.wav"
    write_tone(wav, "wav", seconds=1.0)
    assert run(["transcribe", "-m", str(model), str(wav)]) == ExitStatus.MODEL
    err = capsys.readouterr().err
    assert "mmproj-m.gguf" in err and "no audio encoder" in err


# --- help, version, bare command -------------------------------------------------------------------

def _help(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "gemmapipe", *args, "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_help_groups_options_in_their_panels_with_readable_metavars() -> None:
    import re

    for name in ("transcribe", "diarize", "describe", "video", "chat"):
        text = _help(name)
        assert "<str>" not in text and "<int" not in text and "<path>" not in text and "x>=" not in text, name
        headings = re.findall(r"^(\S[^:]*):$", text, flags=re.M)
        assert headings[-3:] == ["Output options", "Model options", "Server options"], (name, headings)
        model_part = text.split("Model options:")[1].split("Server options:")[0]
        assert "-m, --model FILE" in model_part and "-t, --threads N" in model_part and "--temperature NUM" in model_part
        assert "--server URL" not in model_part and "--format" not in model_part
    text = _help("transcribe")
    assert "-f, --format FORMAT" in text and "txt, srt, vtt, json, jsonl, tsv" in text
    assert "--start TIME" in text and "--output-dir DIR" in text
    assert "1 to 256]" in text and "x<=" not in text  # ranges in words
    assert "--frame-tokens N" in _help("video") and "70 to 1120" in _help("video")


def test_top_level_help_does_not_cut_the_models_line() -> None:
    line = next(row for row in _help().splitlines() if row.strip().startswith("models"))
    assert not line.endswith("...")
    assert "Download, list and locate models." in line


@pytest.mark.parametrize("argv", [[], ["models"]])
def test_bare_command_shows_its_help_as_a_usage_error(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "gemmapipe", *argv], capture_output=True, text=True)
    assert proc.returncode == ExitStatus.USAGE
    assert proc.stdout == ""
    assert proc.stderr.startswith("Usage: gemmapipe ")
    assert "error" not in proc.stderr.splitlines()[0]


def test_video_without_input_says_what_transcribe_says(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["video"]) == ExitStatus.USAGE
    assert capsys.readouterr().err.splitlines()[0] == "gemmapipe: error: input: no input given"


def test_version_names_llama_cpp_and_its_backends_without_heavy_imports() -> None:
    code = ("import sys\nfrom gemmapipe.cli.app import run\nrc = run(['--version'])\n"
            "heavy = [m for m in ('numpy', 'av', 'PIL', 'soundfile', 'jinja2') if m in sys.modules]\n"
            "print(heavy, file=sys.stderr)\nsys.exit(rc or (1 if heavy else 0))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    from importlib.metadata import version

    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gemmapipe ")
    assert lines[1] == f"llama-cpp-python {version('llama_cpp_python')}"
    assert lines[2].startswith("llama.cpp backends: ") and "CPU" in lines[2]
    assert lines[2].endswith(("GPU offload: yes", "GPU offload: no"))


def test_system_info_parsing_names_gpu_backends() -> None:
    from gemmapipe.cli.app import parse_system_info

    cuda = "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 | AVX = 1 | "
    assert parse_system_info(cuda) == {"CUDA": ["ARCHS=890", "USE_GRAPHS", "PEER_MAX_BATCH_SIZE=128"],
                                       "CPU": ["SSE3", "AVX"]}
    assert list(parse_system_info("Metal : EMBED_LIBRARY = 1 | CPU : NEON = 1 | ARM_FMA = 1 | ")) == ["Metal", "CPU"]
    assert parse_system_info("") == {}


# --- -l/--language ---------------------------------------------------------------------------------

def _speech(path: Path) -> Path:
    import numpy as np
    import soundfile as sf

    from media_factory import recorded_speech

    x = np.zeros(3 * 16000, dtype=np.float32)
    x[16000:32000] = recorded_speech(16000)  # real speech: the default detector keeps it
    sf.write(path, x, 16000)
    return path


def _prompt_text(fake_engine: list) -> str:  # noqa: F811
    from gemmapipe.core.engine.parts import Text

    return "".join(p.text for p in fake_engine[-1].requests[-1][0][0].parts if isinstance(p, Text))


@pytest.mark.parametrize(("given", "name"), [("en", "English"), ("DE", "German"), ("german", "German"),
                                             ("Deutsch", "German"), ("pt-BR", "Portuguese"),
                                             ("francais", "French"), ("yue", "Cantonese")])
def test_language_codes_and_names_reach_the_prompt_as_english_names(
        fake_model: Path, tmp_path: Path, fake_engine: list, given: str, name: str) -> None:  # noqa: F811
    fake_engine.replies = ["hallo"]
    assert run(["transcribe", "-l", given, str(_speech(tmp_path / "a.wav"))]) == 0
    assert f"in {name} into {name} text" in _prompt_text(fake_engine)


def test_diarize_language_is_mapped_too(fake_model: Path, tmp_path: Path, fake_engine: list) -> None:  # noqa: F811
    fake_engine.replies = ['[{"speaker": "new", "text": "hallo"}]']
    run(["diarize", "-l", "de", str(_speech(tmp_path / "a.wav"))])
    text = _prompt_text(fake_engine)
    assert " in German" in text and " in de" not in text


def test_language_auto_means_detect(fake_model: Path, tmp_path: Path, fake_engine: list) -> None:  # noqa: F811
    fake_engine.replies = ["hello"]
    assert run(["transcribe", "-l", "auto", str(_speech(tmp_path / "a.wav"))]) == 0
    assert "in its original language" in _prompt_text(fake_engine)


@pytest.mark.parametrize(("command", "given", "hint"), [
    ("transcribe", "Klingon", "ISO 639-1 code or an English name"),
    ("diarize", "xx", "ISO 639-1 code or an English name"),
    ("transcribe", "Germn", "did you mean German (de)?"),
])
def test_unknown_language_is_refused_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          command: str, given: str, hint: str) -> None:
    # no model configured and the input does not exist: the language is what is reported
    assert run([command, "-l", given, str(tmp_path / "missing.wav")]) == ExitStatus.USAGE
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"gemmapipe: error: --language: unknown language {given!r}"
    assert hint in err[1]


def test_language_from_the_config_file_is_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "config" / "gemmapipe" / "config.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text('[transcribe]\nlanguage = "Klingon"\n')
    assert run(["transcribe", str(tmp_path / "missing.wav")]) == ExitStatus.USAGE
    assert "unknown language 'Klingon'" in capsys.readouterr().err


def test_language_table_is_consistent() -> None:
    from gemmapipe.core import languages

    assert "Klingon" not in languages.LANGUAGES.values()
    assert all(code in languages.LANGUAGES for code in languages.ALIASES.values())
    for code, name in languages.LANGUAGES.items():
        assert languages.language_name(code) == name == languages.language_name(name.upper())
    assert languages.language_name("tlh") is None and languages.language_name("") is None


# --- the man page ----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_man_page_covers_models_chat_sessions_files_and_exit_statuses() -> None:
    import re

    man = (ROOT / "man" / "gemmapipe.1").read_text()
    for section in ("SYNOPSIS", "INTERACTIVE CHAT", "SESSIONS", "ENVIRONMENT", "FILES", "EXIT STATUS", "EXAMPLES"):
        assert f".SH {section}" in man or f'.SH "{section}"' in man, section
    for name in ("pull", "list", "path"):
        assert f'.SH "GEMMAPIPE MODELS {name.upper()}"' in man
    for slash in ("/attach", "/reset", "/save", "/exit"):
        assert f"\\fB{slash}" in man
    assert '.SS "Model options"' in man and "\\fB\\-m, \\-\\-model FILE\\fR" in man
    assert "\\fB141\\fR" in man and "config.toml" in man and "sessions/NAME.json" in man
    # every variable the code reads is documented
    used = set()
    for source in [*ROOT.glob("cli/*.py"), *ROOT.glob("core/**/*.py")]:
        used |= set(re.findall(r"\bGEMMAPIPE_[A-Z_]+\b", source.read_text()))
    used -= {"GEMMAPIPE_"}
    documented = set(re.findall(r"GEMMAPIPE_[A-Z_]+", man.replace("\\-", "-")))
    assert used <= documented, used - documented


def test_man_page_is_valid_roff() -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    proc = subprocess.run([groff, "-man", "-ww", "-z", str(ROOT / "man" / "gemmapipe.1")], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
