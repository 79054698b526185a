"""Speculative decoding with a separate draft model (--draft MODEL.gguf), on the real Gemma 3 270M:
the text is the target's own whatever the draft proposes (itself: nearly every draft accepted; a
layer-truncated copy: nearly every draft rejected, so the draft's KV is cut back every step), and a
draft whose vocabulary differs is refused before anything runs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.base import EngineConfig, GenerateOptions
from gemmapipe.core.engine.local import LocalEngine
from gemmapipe.core.engine.parts import Message
from gemmapipe.core.model import resolve

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("cli_env")]
THREADS = 2
PROMPTS = ["Notes: the meeting moved to Tuesday at 10. Bring the quarterly report and the budget sheet. "
           "Repeat the notes exactly.\nNotes: the meeting moved to", "1, 2, 3, 4, 5, 6, 7, 8,",
           "The capital of France is"]
OPTIONS = {"greedy": GenerateOptions(max_tokens=40),
           "seeded": GenerateOptions(max_tokens=40, temperature=0.8, seed=7)}


@pytest.fixture(scope="session")
def truncated_270m(gemma3_270m: Path, gemmapipe_model_cache: Path) -> Path:
    """The 270M's first 4 of 18 blocks: the same vocabulary, mostly wrong predictions."""
    from conftest import _gemmapipe_cached

    from models import truncated

    folder = _gemmapipe_cached(gemmapipe_model_cache, "truncated-270m-v", str(truncated.BUILDER_VERSION),
                               lambda d: truncated.truncate_blocks(gemma3_270m, d / "draft.gguf", 4))
    return folder / "draft.gguf"


def _engine(model: Path, **kw: object) -> LocalEngine:
    pair = resolve(model, None, load_projector=False)
    return LocalEngine(EngineConfig(model=model, threads=THREADS, **kw), pair, n_ctx=512)  # type: ignore[arg-type]


def _answers(eng: LocalEngine, options: GenerateOptions) -> list[str]:
    return ["".join(eng.generate([Message.user(p)], options)) for p in PROMPTS]


_plain_cache: dict[str, list[str]] = {}


def _plain(model: Path, mode: str) -> list[str]:
    if mode not in _plain_cache:
        with _engine(model) as eng:
            _plain_cache[mode] = _answers(eng, OPTIONS[mode])
    return _plain_cache[mode]


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_the_model_as_its_own_draft_gives_its_text_and_accepts_nearly_everything(gemma3_270m: Path,
                                                                               mode: str) -> None:
    with _engine(gemma3_270m, draft=str(gemma3_270m)) as eng:
        drafted = _answers(eng, OPTIONS[mode])
        stats = eng.stats
    assert drafted == _plain(gemma3_270m, mode)
    assert stats.total_drafted > 30
    # greedy drafts of the same weights: only a seeded sample that is not the argmax rejects one
    assert stats.total_accepted / stats.total_drafted >= (0.95 if mode == "greedy" else 0.5)


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_a_truncated_draft_is_mostly_rejected_and_the_text_stays(gemma3_270m: Path, truncated_270m: Path,
                                                                mode: str) -> None:
    with _engine(gemma3_270m, draft=str(truncated_270m)) as eng:
        drafted = _answers(eng, OPTIONS[mode])
        stats = eng.stats
    assert drafted == _plain(gemma3_270m, mode)
    assert stats.total_drafted > 60
    assert stats.total_accepted / stats.total_drafted < 0.3


def test_a_draft_model_serves_several_sequences_at_once(gemma3_270m: Path, truncated_270m: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Concurrent requests (one draft sequence each) get the answers they get one at a time. Two
    sequences of 3 rows are 6 rows a step: exact with plain weights only (README), so both sides
    run without repacking."""
    monkeypatch.setenv("GEMMAPIPE_NO_REPACK", "1")
    with _engine(gemma3_270m) as eng:
        plain = _answers(eng, OPTIONS["greedy"])
    for draft in (gemma3_270m, truncated_270m):
        with _engine(gemma3_270m, parallel=2, draft=str(draft)) as eng:
            got: dict[int, str] = {}

            def one(i: int, eng: LocalEngine = eng, got: dict[int, str] = got) -> None:
                got[i] = "".join(eng.generate([Message.user(PROMPTS[i])], OPTIONS["greedy"]))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            assert eng.stats.total_drafted > 0
        assert [got.get(i) for i in range(len(PROMPTS))] == plain, draft


def test_cli_draft_model_reports_acceptance(gemma3_270m: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["chat", "-m", str(gemma3_270m), "-t", str(THREADS), "--max-tokens", "24", "--no-template", PROMPTS[2]]
    assert run(base) == 0
    plain = capsys.readouterr().out
    assert run([*base, "--draft", str(gemma3_270m), "-v"]) == 0
    out = capsys.readouterr()
    assert out.out == plain
    line = next(x for x in out.err.splitlines() if "draft:" in x)
    assert "accepted (100%)" in line, line


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert run(argv) == 4
    out = capsys.readouterr()
    assert out.out == ""
    errors = [x for x in out.err.splitlines() if x.startswith("gemmapipe: error:")]
    assert len(errors) == 1, out.err
    return errors[0]


def test_a_draft_with_another_vocabulary_is_refused(gemma3_270m: Path, tiny_gemma4: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(["chat", "-m", str(gemma3_270m), "-t", str(THREADS), "--max-tokens", "4", "--no-template",
                     "--draft", str(tiny_gemma4[0]), "hi"], capsys)
    assert "draft model" in line and "cannot draft for this model: its tokenizer (BPE)" in line, line


def test_a_missing_or_non_gguf_draft_is_refused(gemma3_270m: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    base = ["chat", "-m", str(gemma3_270m), "--max-tokens", "4", "--no-template", "hi", "--draft"]
    assert "no such file" in _refused([*base, str(tmp_path / "nope.gguf")], capsys)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    assert "not a GGUF file" in _refused([*base, str(junk)], capsys)


def test_describe_with_a_draft_model_gives_the_same_json_and_reports_the_draft(
        gemma3_270m: Path, vision_probe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The draft model reads the prompt's text around the image (it cannot see the image): the
    answer is still the target's own, and meta.draft carries the counts."""
    import json

    import numpy as np
    from PIL import Image as PILImage

    png = tmp_path / "noise.png"
    PILImage.fromarray((np.random.default_rng(1).random((224, 224, 3)) * 255).astype("uint8")).save(png)
    base = ["describe", "-m", str(gemma3_270m), "--mmproj", str(vision_probe), "-t", str(THREADS),
            "--max-tokens", "24", "-f", "json", str(png)]
    assert run(base) == 0
    plain = json.loads(capsys.readouterr().out)
    assert run([*base, "--draft", str(gemma3_270m)]) == 0
    drafted = json.loads(capsys.readouterr().out)
    assert drafted["text"] == plain["text"] and "draft" not in plain["meta"]
    meta = drafted["meta"]["draft"]
    assert meta["drafted"] > 0 and 0 <= meta["accepted"] <= meta["drafted"]


def test_dry_run_counts_the_draft_model(gemma3_270m: Path, vision_probe: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from PIL import Image as PILImage

    png = tmp_path / "grey.png"
    PILImage.new("RGB", (64, 64), (128, 128, 128)).save(png)
    base = ["describe", "-m", str(gemma3_270m), "--mmproj", str(vision_probe), "--dry-run", "-j", "2", str(png)]
    assert run(base) == 0
    plain = json.loads(capsys.readouterr().out)["memory"]
    assert run([*base, "--draft", str(gemma3_270m)]) == 0
    with_draft = json.loads(capsys.readouterr().out)["memory"]
    size = gemma3_270m.stat().st_size
    assert with_draft["draft_bytes"] > size
    assert with_draft["total_bytes"] == plain["total_bytes"] + with_draft["draft_bytes"]
    assert with_draft["weights_bytes"] == plain["weights_bytes"] + size


class _FakeVocab:
    def __init__(self, texts: list[bytes], **kw: int) -> None:
        self.texts, self.attrs = texts, [0] * len(texts)
        self.ids = {"type": 1, "bos": 2, "eos": 1, "eot": 106, "pad": 0, "add_bos": 1, "add_eos": 0, **kw}


class _FakeL:
    """The llama_vocab_* calls vocab_mismatch makes, on _FakeVocab."""

    def __getattr__(self, name: str) -> object:
        key = name.removeprefix("llama_vocab_").removeprefix("get_")
        if key == "n_tokens":
            return lambda v: len(v.texts)
        if key == "text":
            return lambda v, i: v.texts[i]
        if key == "attr":
            return lambda v, i: v.attrs[i]
        return lambda v: v.ids[key]


@pytest.mark.parametrize(("change", "why"), [
    ({"eos": 7}, "its EOS token (7) differs from the model's (1)"),
    ({"add_bos": 0}, "its BOS token"),
    ({"eot": 3}, "its EOT token (3) differs"),
    ({"extra": 200}, "its vocabulary has 400 tokens, the model's 200"),
    ({"text": 9}, "token 9 differs (b'x' against the model's b't9')"),
    ({"attr": 9}, "token 9 differs"),
])
def test_vocab_mismatch_names_what_differs(change: dict[str, int], why: str) -> None:
    from gemmapipe.core.engine.speculative import vocab_mismatch

    texts = [f"t{i}".encode() for i in range(200)]
    target = _FakeVocab(texts)
    assert vocab_mismatch(_FakeL(), target, _FakeVocab(list(texts))) is None
    assert vocab_mismatch(_FakeL(), target, _FakeVocab([*texts, b"new"])) is None  # a few more tokens
    assert vocab_mismatch(_FakeL(), target, _FakeVocab([*texts[:3], b"x", *texts[4:]])) is None  # ids < 5
    ids = {k: v for k, v in change.items() if k not in ("extra", "text", "attr")}
    draft = _FakeVocab(list(texts) + [b"more"] * change.get("extra", 0), **ids)
    if "text" in change:
        draft.texts[change["text"]] = b"x"
    if "attr" in change:
        draft.attrs[change["attr"]] = 8
    got = vocab_mismatch(_FakeL(), target, draft)
    assert got is not None and got.startswith(why), got
