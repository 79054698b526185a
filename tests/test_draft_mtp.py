"""Gemma 4 multi-token prediction (--draft with a gemma4-assistant GGUF, or --draft mtp to find it
beside the model), on the tiny random Gemma 4 and the assistant tests/models/tiny_gemma4.py builds
for it (a bigram guesser of the target: some drafts accepted, most rejected). The assistant runs in
an MTP context on the target's KV cache; the text is the target's own, greedy and seeded, with one
sequence or several; what cannot work is refused with one line and exit 4, never a crash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.base import EngineConfig, GenerateOptions
from gemmapipe.core.engine.local import LocalEngine
from gemmapipe.core.engine.parts import Message
from gemmapipe.core.model import resolve

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("cli_env")]
THREADS = 2
PROMPTS = ["the quick brown fox is on the mat of the house", "1, 2, 3, 4, 5, 6, 7, 8,", "is the", "of"]
OPTIONS = {"greedy": GenerateOptions(max_tokens=48),
           "seeded": GenerateOptions(max_tokens=48, temperature=0.8, seed=11)}


def _engine(model: Path, **kw: object) -> LocalEngine:
    pair = resolve(model, None, load_projector=False)
    return LocalEngine(EngineConfig(model=model, threads=THREADS, **kw), pair, n_ctx=512)  # type: ignore[arg-type]


def _answers(eng: LocalEngine, options: GenerateOptions) -> list[str]:
    return ["".join(eng.generate([Message.user(p)], options)) for p in PROMPTS]


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_the_assistant_drafts_on_the_models_kv_cache_and_the_text_stays(
        tiny_gemma4: tuple[Path, Path], tiny_gemma4_assistant: Path, mode: str) -> None:
    import importlib

    from gemmapipe.core.engine.speculative import MtpDraft, ctypes_address

    llama_cpp_ext = importlib.import_module("llama_cpp.llama_cpp_ext")
    model = tiny_gemma4[0]
    with _engine(model) as eng:
        plain = _answers(eng, OPTIONS[mode])
    with _engine(model, draft=str(tiny_gemma4_assistant), draft_max=3) as eng:
        drafter = eng._drafter
        assert isinstance(drafter, MtpDraft)
        # an MTP context linked to the target's: its attention reads the target's KV cells
        assert ctypes_address(llama_cpp_ext.llama_get_ctx_other(drafter._ctx)) == ctypes_address(eng._ctx)
        drafted = _answers(eng, OPTIONS[mode])
        stats = eng.stats
    assert drafted == plain
    assert all(len(a) > 10 for a in plain)  # long enough answers that drafting had work to do
    assert stats.total_drafted > 40
    assert 0 < stats.total_accepted < stats.total_drafted  # accepted drafts and rollbacks both happened


def test_the_assistant_serves_several_sequences_at_once(tiny_gemma4: tuple[Path, Path],
                                                        tiny_gemma4_assistant: Path) -> None:
    model = tiny_gemma4[0]
    with _engine(model) as eng:
        plain = _answers(eng, OPTIONS["greedy"])
    from gemmapipe.core.parallel import ordered_map

    with _engine(model, parallel=3, draft=str(tiny_gemma4_assistant)) as eng:  # three requests at a time
        got = list(ordered_map(lambda p: "".join(eng.generate([Message.user(p)], OPTIONS["greedy"])), PROMPTS, 3))
        assert eng.stats.total_drafted > 0
    assert got == plain


def _pngs(folder: Path, n: int) -> list[str]:
    from PIL import Image

    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray((np.random.default_rng(i).random((96, 144, 3)) * 255).astype("uint8")).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("sampling", [[], ["--temperature", "0.8", "--seed", "5"]])
def test_describe_with_draft_mtp_finds_the_assistant_and_keeps_every_answer(
        tiny_gemma4: tuple[Path, Path], tiny_gemma4_assistant: Path, tmp_path: Path,
        capfd: pytest.CaptureFixture[str], sampling: list[str]) -> None:
    """Images through the projector, then the answers drafted by the assistant (found beside the
    model by `--draft mtp`), with one sequence and with three: the same texts, in input order, and
    nothing on stderr without -v (llama.cpp's log included, which goes to file descriptor 2)."""
    capsys = capfd
    images = _pngs(tmp_path, 5)
    base = ["describe", "-m", str(tiny_gemma4[0]), "-t", str(THREADS), "--max-tokens", "30", *sampling,
            "-f", "jsonl", *images]
    assert run(base) == 0
    plain = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    for extra in (["--draft", "mtp"], ["--draft", "mtp", "-j", "3"], ["--draft", str(tiny_gemma4_assistant)]):
        assert run([*base, *extra]) == 0, extra
        out = capsys.readouterr()
        assert out.err == "", out.err[:500]
        got = [json.loads(x) for x in out.out.splitlines()]
        assert [g["file"] for g in got] == images
        assert [g["text"] for g in got] == [p["text"] for p in plain], extra
        assert sum(g["meta"]["draft"]["drafted"] for g in got) > 0


def test_verbose_reports_the_assistants_acceptance(tiny_gemma4: tuple[Path, Path], tiny_gemma4_assistant: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    base = ["chat", "-m", str(tiny_gemma4[0]), "-t", str(THREADS), "--max-tokens", "40", PROMPTS[0]]
    assert run(base) == 0
    plain = capsys.readouterr().out
    assert run([*base, "--draft", "mtp", "-v"]) == 0
    out = capsys.readouterr()
    assert out.out == plain
    line = next(x for x in out.err.splitlines() if "draft:" in x)
    drafted, accepted = (int(w) for w in line.split() if w.isdigit())
    assert 0 < accepted < drafted, line


def test_dry_run_counts_the_assistants_weights_and_no_kv_cache(tiny_gemma4: tuple[Path, Path],
                                                               tiny_gemma4_assistant: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    base = ["describe", "-m", str(tiny_gemma4[0]), "--dry-run", "-j", "2", *_pngs(tmp_path, 1)]
    assert run(base) == 0
    plain = json.loads(capsys.readouterr().out)["memory"]
    assert run([*base, "--draft", "mtp"]) == 0
    with_draft = json.loads(capsys.readouterr().out)["memory"]
    assert with_draft["draft_bytes"] == tiny_gemma4_assistant.stat().st_size
    assert with_draft["kv_bytes"] == plain["kv_bytes"]
    assert with_draft["total_bytes"] == plain["total_bytes"] + with_draft["draft_bytes"]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert run(argv) == 4
    out = capsys.readouterr()
    assert out.out == ""
    errors = [x for x in out.err.splitlines() if x.startswith("gemmapipe: error:")]
    assert len(errors) == 1 and "Traceback" not in out.err, out.err
    return errors[0]


def test_what_an_assistant_cannot_do_is_refused(tiny_gemma4: tuple[Path, Path], tiny_gemma4_assistant: Path,
                                                gemma3_270m: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model, assistant = str(tiny_gemma4[0]), str(tiny_gemma4_assistant)
    line = _refused(["chat", "-m", assistant, "hi"], capsys)
    assert "is a Gemma 4 assistant" in line and "not a language model" in line, line
    line = _refused(["chat", "-m", str(gemma3_270m), "--no-template", "--draft", assistant, "hi"], capsys)
    assert "drafts for Gemma 4 models only (this model is gemma3)" in line, line
    # --draft mtp with no assistant beside the model, and with two
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(model, alone / "m.gguf")
    line = _refused(["chat", "-m", str(alone / "m.gguf"), "--draft", "mtp", "hi"], capsys)
    assert "no Gemma 4 assistant" in line, line
    shutil.copy(assistant, alone / "a-assistant.gguf")
    shutil.copy(assistant, alone / "b-assistant.gguf")
    line = _refused(["chat", "-m", str(alone / "m.gguf"), "--draft", "mtp", "hi"], capsys)
    assert "several Gemma 4 assistants" in line and "a-assistant.gguf, b-assistant.gguf" in line, line
    # an assistant for a model of another width
    import gguf

    wide = tmp_path / "wide-assistant.gguf"
    _rewrite(tiny_gemma4_assistant, wide, {"gemma4-assistant.embedding_length_out": 96}, gguf)
    line = _refused(["chat", "-m", model, "--draft", str(wide), "hi"], capsys)
    assert "made for a model 96 wide, this one is 64 wide" in line, line


def _rewrite(src: Path, dst: Path, changes: dict[str, int], gguf: object) -> None:
    """A copy of a GGUF with some integer keys changed."""
    g: object = gguf
    reader = g.GGUFReader(str(src))  # type: ignore[attr-defined]
    arch = str(reader.fields["general.architecture"].contents())
    writer = g.GGUFWriter(str(dst), arch)  # type: ignore[attr-defined]
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == g.GGUFValueType.ARRAY else None  # type: ignore[attr-defined]
        writer.add_key_value(field.name, changes.get(field.name, field.contents()), val_type, sub_type=sub_type)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()


@pytest.mark.parametrize("missing", ["module", "symbol"])
def test_a_llama_cpp_python_without_mtp_is_refused_in_one_line(tiny_gemma4: tuple[Path, Path],
                                                                cli_env: Path, missing: str) -> None:
    """An older llama-cpp-python: no llama_cpp_ext module at all, or one whose extension symbols the
    library lacks (its import raises AttributeError, as its decorator does). Exit 4, one line."""
    hide = ("sys.modules['llama_cpp.llama_cpp_ext'] = None" if missing == "module" else
            "import llama_cpp.llama_cpp as L; L._lib = type('Lib', (), {'__getattr__': "
            "lambda self, n: getattr(_real, n) if not n.startswith(('llama_set_embeddings_nextn', "
            "'_Z26llama_set_embeddings_nextn', '?llama_set_embeddings_nextn')) else (_ for _ in ()).throw("
            "AttributeError(n))})()")
    code = ("import sys\n" + ("import llama_cpp.llama_cpp as _L; _real = _L._lib\n" if missing == "symbol" else "")
            + hide + "\nfrom gemmapipe.cli.app import main\n"
            f"sys.argv = ['gemmapipe', 'chat', '-m', {str(tiny_gemma4[0])!r}, '--draft', 'mtp', 'hi']\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout == ""
    errors = [x for x in proc.stderr.splitlines() if x.startswith("gemmapipe: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot run a Gemma 4 assistant" in errors[0], errors[0]


def test_a_video_follow_up_from_the_saved_state_is_drafted_too(tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The second question restores the saved KV state of the video (the assistant reads that cache)
    and evaluates only the question: the answer is the undrafted one, and its meta says what was drafted."""
    from media_factory import write_video

    mp4 = write_video(tmp_path / "v.mp4", seconds=3.0, fps=5, with_audio=True)
    base = ["video", "-m", str(tiny_gemma4[0]), "-t", str(THREADS), "--max-tokens", "24", "-f", "json", str(mp4)]

    def ask(question: str, *extra: str) -> dict[str, object]:
        assert run([*base, "-p", question, *extra]) == 0
        doc: dict[str, object] = json.loads(capsys.readouterr().out)
        return doc

    plain = ask("what changes?", "--no-cache")["text"]
    first = ask("what happens?", "--draft", "mtp")
    again = ask("what changes?", "--draft", "mtp")
    meta = again["meta"]
    assert isinstance(meta, dict) and meta["cache"] == "hit"
    assert again["text"] == plain
    assert meta["draft"]["drafted"] > 0
    assert isinstance(first["meta"], dict) and first["meta"]["cache"] == "miss"


def test_the_draft_value_is_checked_where_it_is_parsed(tiny_gemma4: tuple[Path, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    base = ["chat", "-m", str(tiny_gemma4[0]), "-t", str(THREADS), "--max-tokens", "8", PROMPTS[0]]
    assert run([*base, "--draft", " "]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gemmapipe: error: --draft: is empty"), err
    assert run([*base, "--draft", "MTP", "-v"]) == 0  # the method names in any case
    assert "draft:" in capsys.readouterr().err
    assert run([*base, "--draft", "nope"]) == 4
    assert "hint: give a GGUF file, or --draft ngram or --draft mtp" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["load", "decode"])
def test_a_signal_while_the_assistant_drafts_stops_the_run_and_keeps_the_old_output(
        tiny_gemma4: tuple[Path, Path], tmp_path: Path, stage: str) -> None:
    """Ctrl-C (a real SIGINT from the fault hook) while both models load or while drafted steps run:
    exit 130 within seconds, one line, the existing -o file untouched, no temporary left beside it."""
    import signal

    from test_safety_signals import DEADLINE_S, assert_clean, run_with_fault

    from gemmapipe.core.errors import ExitStatus

    out = tmp_path / "answer.txt"
    out.write_bytes(b"keep me\n")
    code, err, waited = run_with_fault(["chat", "-m", str(tiny_gemma4[0]), "--draft", "mtp", "-t", str(THREADS),
                                        "-c", "4096", "--max-tokens", "3000", "-o", str(out), "hello there"],  # a long answer
                                       stage, signal.SIGINT, tmp_path)
    assert code == ExitStatus.INTERRUPTED, err
    assert waited < DEADLINE_S, f"{waited:.1f} s after the signal"
    assert "Traceback" not in err and "interrupted" in err
    assert out.read_bytes() == b"keep me\n"
    assert_clean(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answer.txt"]
