"""Several requests in one local context (-j) and speculative decoding (--draft), on the real Gemma 3
270M and its probe projectors: the same answers, in input order, as one request at a time."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.base import EngineConfig, GenerateOptions
from gemmapipe.core.engine.local import LocalEngine
from gemmapipe.core.engine.parts import Message
from gemmapipe.core.engine.speculative import NgramDraft
from gemmapipe.core.model import resolve

from models.probe import probe_sentences, read_probe_codebook, tokenize, tokens_to_image, tokens_to_waveform

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("cli_env")]
THREADS = 2

COPY_PROMPT = ("Notes: the meeting moved to Tuesday at 10. Bring the quarterly report, the budget sheet "
               "and the list of open issues. Repeat the notes exactly.\nNotes: the meeting moved to")


def _engine(model: Path, **kw: object) -> LocalEngine:
    pair = resolve(model, None, load_projector=False)
    return LocalEngine(EngineConfig(model=model, threads=THREADS, **kw), pair, n_ctx=512)  # type: ignore[arg-type]


def _answers(eng: LocalEngine, prompts: list[str], options: GenerateOptions) -> list[str]:
    return ["".join(eng.generate([Message.user(p)], options)) for p in prompts]


# --- n-gram lookup ---------------------------------------------------------------------------------

def test_ngram_proposes_what_followed_the_last_match() -> None:
    d = NgramDraft([5, 6, 7, 8, 9, -1, 5, 6])
    assert d.propose(3) == [7, 8, 9]
    assert d.propose(1) == [7]
    d.push(1)  # "6 1" never occurred: nothing to propose from a 2-gram, and 1-grams are not used
    assert d.propose(3) == []
    assert NgramDraft([1, 2, 3, -1, 1, 2]).propose(4) == [3]  # never across a media chunk


# --- speculative decoding: the text is the model's own ----------------------------------------------

@pytest.mark.parametrize(("options", "draft_max", "env"), [
    (GenerateOptions(max_tokens=48), 2, {}),
    (GenerateOptions(max_tokens=48, temperature=0.8, seed=7), 2, {}),
    (GenerateOptions(max_tokens=48), 6, {"GEMMAPIPE_NO_REPACK": "1"}),  # 7 rows: exact with plain weights
], ids=["greedy", "seeded", "greedy-wide-plain-weights"])
def test_ngram_drafting_gives_the_undrafted_text(gemma3_270m: Path, options: GenerateOptions, draft_max: int,
                                                 env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    prompts = [COPY_PROMPT, "1, 2, 3, 4, 5, 6, 7, 8,", "The capital of France is"]
    with _engine(gemma3_270m) as eng:
        plain = _answers(eng, prompts, options)
    with _engine(gemma3_270m, draft="ngram", draft_max=draft_max) as eng:
        drafted = _answers(eng, prompts, options)
        stats = eng.stats
    assert drafted == plain
    assert stats.total_accepted > 0 and stats.total_drafted >= stats.total_accepted


def test_cli_draft_reports_acceptance(gemma3_270m: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["chat", "-m", str(gemma3_270m), "-t", str(THREADS), "--max-tokens", "24", "--no-template",
                COPY_PROMPT]) == 0
    plain = capsys.readouterr().out
    assert run(["chat", "-m", str(gemma3_270m), "-t", str(THREADS), "--max-tokens", "24", "--no-template",
                "--draft", "ngram", "-v", COPY_PROMPT]) == 0
    out = capsys.readouterr()
    assert out.out == plain
    line = next(x for x in out.err.splitlines() if "draft:" in x)
    assert "drafted" in line and "accepted" in line and "%" in line


# --- several sequences in one context ----------------------------------------------------------------

def test_concurrent_generate_calls_get_their_own_answers(gemma3_270m: Path) -> None:
    """Up to 3 sequences per step the logits are bit-identical to one at a time (see speculative.py),
    so each thread's answer equals the sequential one exactly; stats are per thread."""
    prompts = ["The capital of France is", "Once upon a time", "def fib(n):", "The quick brown fox",
               "1, 2, 3, 4,", "Water boils at"]
    options = GenerateOptions(max_tokens=20)
    with _engine(gemma3_270m) as eng:
        expected = _answers(eng, prompts, options)
    got: dict[int, tuple[str, int]] = {}
    with _engine(gemma3_270m, parallel=3) as eng:
        assert eng.n_ctx == 512

        def one(i: int) -> None:
            text = "".join(eng.generate([Message.user(prompts[i])], options))
            got[i] = (text, eng.stats.generated)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [got[i][0] for i in range(len(prompts))] == expected
    assert all(0 < got[i][1] <= 20 for i in got)


def test_a_reader_that_stops_early_frees_its_sequence(gemma3_270m: Path) -> None:
    with _engine(gemma3_270m, parallel=2) as eng:
        for _ in range(3):  # more abandoned requests than sequences: each must give its slot back
            stream = eng.generate([Message.user("Once upon a time")], GenerateOptions(max_tokens=64))
            next(iter(stream))
            stream.close()  # type: ignore[attr-defined]
        assert "".join(eng.generate([Message.user("The capital of France is")], GenerateOptions(max_tokens=8)))


def _probe_wav(path: Path, model: Path, audio_probe: Path, sentences: list[str]) -> Path:
    import soundfile as sf

    codebook = read_probe_codebook(audio_probe)
    waves = [tokens_to_waveform(tokenize(model, s), codebook) for s in sentences]
    gap = np.zeros(16000, dtype=np.float32)
    sf.write(path, np.concatenate([x for w in waves for x in (gap, w)] + [gap]), 16000, subtype="FLOAT")
    return path


# Rows per decode step whose logits equal a one-row decode (measured, see core/engine/speculative.py):
# 3 with llama.cpp's repacked CPU weights (the default), 7 with plain ones. So -j 3 must give the -j 1
# text as it is, and -j 4 the text of -j 1 with the same plain-weights setting.
SAME_TEXT = [pytest.param("3", {}, id="j3"), pytest.param("4", {"GEMMAPIPE_NO_REPACK": "1"}, id="j4-plain-weights")]


@pytest.mark.parametrize(("jobs", "env"), SAME_TEXT)
def test_transcribe_jobs_equal_one_job_on_probe_clips(gemma3_270m: Path, audio_probe: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                      jobs: str, env: dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    sentences = probe_sentences(8)
    wav = _probe_wav(tmp_path / "clips.wav", gemma3_270m, audio_probe, sentences)
    base = ["transcribe", "-m", str(gemma3_270m), "--mmproj", str(audio_probe), "-t", str(THREADS),
            "--vad", "energy", "--max-tokens", "8", "-f", "json", str(wav)]
    texts = {}
    for j in ("1", jobs):
        assert run([*base, "-j", j]) == 0
        doc = json.loads(capsys.readouterr().out)
        texts[j] = [(s["start_ms"], s["end_ms"], s["text"]) for s in doc["segments"]]
    assert len(texts["1"]) == len(sentences)
    assert texts[jobs] == texts["1"]  # same clips, same words, in the order they were spoken
    starts = [a for a, _, _ in texts[jobs]]
    assert starts == sorted(starts)


@pytest.mark.parametrize(("jobs", "env"), SAME_TEXT)
def test_describe_jobs_equal_one_job_on_probe_images(gemma3_270m: Path, vision_probe: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                     jobs: str, env: dict[str, str]) -> None:
    from PIL import Image as PILImage

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    codebook = read_probe_codebook(vision_probe)
    paths = []
    for i, sentence in enumerate(probe_sentences(6)):
        p = tmp_path / f"img{i}.png"
        PILImage.fromarray(tokens_to_image(tokenize(gemma3_270m, sentence), codebook)).save(p)
        paths.append(str(p))
    base = ["describe", "-m", str(gemma3_270m), "--mmproj", str(vision_probe), "-t", str(THREADS),
            "-p", "Caption:", "--max-tokens", "6", "-f", "jsonl", *paths]
    got = {}
    for j in ("1", jobs):
        assert run([*base, "-j", j]) == 0
        docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        got[j] = [(d["file"], d["text"]) for d in docs]
    assert [f for f, _ in got["1"]] == paths  # input order
    assert got[jobs] == got["1"]


def test_dry_run_plans_the_kv_cache_of_every_sequence(gemma3_270m: Path, vision_probe: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image as PILImage

    png = tmp_path / "x.png"
    PILImage.fromarray(np.full((96, 96, 3), 128, dtype=np.uint8)).save(png)
    base = ["describe", "-m", str(gemma3_270m), "--mmproj", str(vision_probe), "--dry-run", str(png)]
    mem = {}
    for jobs in ("1", "4"):
        assert run([*base, "-j", jobs]) == 0
        mem[jobs] = json.loads(capsys.readouterr().out)["memory"]
    assert mem["4"]["n_seq"] == 4 and "n_seq" not in mem["1"]
    assert mem["4"]["n_ctx"] == mem["1"]["n_ctx"]  # each sequence gets the context one request needs
    assert mem["4"]["kv_bytes"] == 4 * mem["1"]["kv_bytes"]
    assert mem["4"]["total_bytes"] - mem["1"]["total_bytes"] == 3 * mem["1"]["kv_bytes"]
