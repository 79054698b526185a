"""--lora FILE[:SCALE]: LoRA adapters on the local engine, through real llama.cpp on the tiny Gemma 4
model (tests/models/tiny_lora.py builds the adapters): an adapter changes the greedy text, scale 0
gives the base text, one that does not fit the model is exit 4 with the reason, and adapters are part
of the saved-state key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.base import EngineConfig, GenerateOptions, LoraAdapter
from gemmapipe.core.engine.local import LocalEngine
from gemmapipe.core.engine.parts import Message
from gemmapipe.core.errors import ExitStatus, ModelError, UsageError
from gemmapipe.core.lora import parse_lora
from gemmapipe.core.model import resolve

from models.tiny_lora import base_shapes, random_lora_tensors, write_lora

THREADS = 2


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lora")
    good = random_lora_tensors()
    n_out, n_in = base_shapes()["output.weight"]
    rng = np.random.default_rng(3)
    return {
        "good": write_lora(d / "good.gguf", good),
        "other": write_lora(d / "other.gguf", random_lora_tensors(seed=11)),
        "wrong_shape": write_lora(d / "wrong_shape.gguf", {"output.weight": (
            rng.standard_normal((4, n_in // 2)), rng.standard_normal((n_out, 4)))}),
        "wrong_rank": write_lora(d / "wrong_rank.gguf", {"output.weight": (
            rng.standard_normal((4, n_in)), rng.standard_normal((n_out, 2)))}),
        "missing_tensor": write_lora(d / "missing_tensor.gguf", {"blk.9.attn_q.weight": good["blk.0.attn_q.weight"]}),
        "other_arch": write_lora(d / "other_arch.gguf", good, arch="llama"),
        "not_lora": write_lora(d / "not_lora.gguf", good, adapter_type="control_vector"),
        "int_alpha": write_lora(d / "int_alpha.gguf", good, alpha=8),  # gguf_get_val_f32 would abort llama.cpp
    }


def _answer(model: Path, lora: tuple[LoraAdapter, ...] = ()) -> str:
    pair = resolve(model, None)
    with LocalEngine(EngineConfig(model=model, threads=THREADS, lora=lora), pair, n_ctx=512) as eng:
        return "".join(eng.generate([Message.user("the capital of")], GenerateOptions(max_tokens=16)))


@pytest.mark.model
def test_an_adapter_changes_the_greedy_answer_and_scale_0_is_the_base(tiny_gemma4: tuple[Path, Path],
                                                                      adapters: dict[str, Path]) -> None:
    model, _ = tiny_gemma4
    base = _answer(model)
    adapted = _answer(model, (LoraAdapter(adapters["good"]),))
    assert base and adapted and adapted != base
    assert _answer(model, (LoraAdapter(adapters["good"], 0.0),)) == base
    assert _answer(model, (LoraAdapter(adapters["good"], 0.25),)) not in (base, adapted)  # the scale is applied
    # two adapters at once, each with its own scale: the second one matters
    both = _answer(model, (LoraAdapter(adapters["good"]), LoraAdapter(adapters["other"])))
    assert both != adapted
    assert _answer(model, (LoraAdapter(adapters["good"]), LoraAdapter(adapters["other"], 0.0))) == adapted


@pytest.mark.model
@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize(("name", "reason"), [
    ("wrong_shape", "tensor 'output.weight' does not fit the model: the model's is 64x"),
    ("wrong_rank", "tensor 'output.weight' does not fit the model"),
    ("missing_tensor", "adapts 'blk.9.attn_q.weight', which the model tiny-gemma4.gguf does not have"),
    ("other_arch", "is for architecture 'llama', the model is 'gemma4'"),
    ("not_lora", "adapter.type is 'control_vector', not 'lora'"),
    ("int_alpha", "adapter.lora.alpha is not a float32"),
    ("plain_model", "is not a LoRA adapter (a model, not general.type 'adapter')"),
    ("missing_file", "no such file"),
])
def test_an_adapter_that_does_not_fit_is_exit_4_with_the_reason(
        tiny_gemma4: tuple[Path, Path], adapters: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], name: str, reason: str) -> None:
    model, _ = tiny_gemma4
    path = {"plain_model": model, "missing_file": tmp_path / "nope.gguf"}.get(name) or adapters[name]
    code = run(["chat", "-m", str(model), "-t", str(THREADS), "--max-tokens", "4", "--lora", f"{path}:0.5", "hi"])
    err = capsys.readouterr().err
    assert code == ExitStatus.MODEL, err
    assert f"gemmapipe: error: adapter {path}: {reason}" in err
    assert len(err.strip().splitlines()) <= 2  # the error line and at most a hint


@pytest.mark.model
def test_null_from_llama_adapter_lora_init_is_a_model_error(tiny_gemma4: tuple[Path, Path],
                                                             adapters: dict[str, Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Were the header check to miss something, llama.cpp's NULL is an error, not a crash later."""
    from gemmapipe.core import lora

    monkeypatch.setattr(lora, "check_adapter", lambda path, base: None)
    model, _ = tiny_gemma4
    with pytest.raises(ModelError) as err:
        _answer(model, (LoraAdapter(adapters["good"]), LoraAdapter(adapters["wrong_shape"])))
    assert err.value.reason == "llama.cpp could not load it for this model"
    assert str(adapters["wrong_shape"]) in err.value.subject


@pytest.mark.model
@pytest.mark.usefixtures("cli_env")
def test_cli_lora_reaches_the_engine_and_the_json_meta(tiny_gemma4: tuple[Path, Path], adapters: dict[str, Path],
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import soundfile as sf

    from media_factory import recorded_speech

    model, _ = tiny_gemma4
    wav = tmp_path / "s.wav"
    x = np.zeros(32000, dtype=np.float32)
    x[8000:24000] = recorded_speech(16000)
    sf.write(wav, x, 16000)
    base = ["transcribe", "-m", str(model), "-t", str(THREADS), "--max-tokens", "8", "-l", "en", "-f", "json",
            str(wav)]

    def text(*extra: str) -> tuple[str, dict]:  # type: ignore[type-arg]
        assert run([*base, *extra]) == 0
        doc = json.loads(capsys.readouterr().out)
        return " ".join(s["text"] for s in doc["segments"]), doc["meta"]["model"]

    plain, meta = text()
    assert "lora" not in meta
    adapted, meta = text("--lora", str(adapters["good"]))
    assert meta["lora"] == [{"path": str(adapters["good"]), "scale": 1.0}]
    assert adapted != plain
    assert text("--lora", f"{adapters['good']}:0")[0] == plain


@pytest.mark.model
@pytest.mark.usefixtures("cli_env")
def test_adapters_and_scales_are_part_of_the_saved_state_key(tiny_gemma4: tuple[Path, Path],
                                                             adapters: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from media_factory import write_video

    model, _ = tiny_gemma4
    mp4 = write_video(tmp_path / "v.mp4", seconds=2.0, fps=2, with_audio=False)
    base = ["video", "-m", str(model), "-t", str(THREADS), "--max-tokens", "4", "-f", "json", str(mp4)]

    def cache(*extra: str) -> str:
        assert run([*base, *extra]) == 0
        return str(json.loads(capsys.readouterr().out)["meta"]["cache"])

    assert cache("-p", "q1") == "miss"
    assert cache("-p", "q2") == "hit"
    assert cache("-p", "q2", "--lora", str(adapters["good"])) == "miss"  # an adapter: another state
    assert cache("-p", "q3", "--lora", str(adapters["good"])) == "hit"
    assert cache("-p", "q3", "--lora", f"{adapters['good']}:0.5") == "miss"  # another scale: another state
    assert cache("-p", "q4", "--lora", str(adapters["good"]), "--lora", str(adapters["other"])) == "miss"


def test_engine_state_setup_names_adapters_and_scales(tiny_gemma4: tuple[Path, Path],
                                                      adapters: dict[str, Path]) -> None:
    model, _ = tiny_gemma4
    pair = resolve(model, None)
    lora = (LoraAdapter(adapters["good"], 0.5),)
    with LocalEngine(EngineConfig(model=model, threads=THREADS, lora=lora), pair, n_ctx=512) as eng:
        setup = eng.state_setup()
    assert setup["lora"] == [[f"{adapters['good']}:{adapters['good'].stat().st_size}:"
                              f"{adapters['good'].stat().st_mtime_ns}", 0.5]]
    with LocalEngine(EngineConfig(model=model, threads=THREADS), pair, n_ctx=512) as eng:
        assert "lora" not in eng.state_setup()  # keys of states saved without adapters are unchanged
    from importlib.metadata import version

    assert setup["llama_cpp"] == version("llama_cpp_python")  # a state of another llama.cpp is not reused


# --- parsing and refusals (no model run) -----------------------------------------------------------

@pytest.mark.parametrize(("spec", "path", "scale"), [
    ("a.gguf", "a.gguf", 1.0), ("a.gguf:0.5", "a.gguf", 0.5), ("a.gguf:0", "a.gguf", 0.0),
    ("a.gguf:-1", "a.gguf", -1.0), ("dir:with:colons/a.gguf", "dir:with:colons/a.gguf", 1.0),
    ("C:\\loras\\a.gguf", "C:\\loras\\a.gguf", 1.0), ("x:2:0.25", "x:2", 0.25),
])
def test_parse_lora(spec: str, path: str, scale: float) -> None:
    assert parse_lora(spec) == LoraAdapter(Path(path), scale)


@pytest.mark.parametrize("spec", ["a.gguf:nan", "a.gguf:inf", "a.gguf:1e400", ":0.5", ""])
def test_parse_lora_refuses(spec: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_lora(spec)
    assert err.value.parameter == "lora"


@pytest.mark.usefixtures("fake_model")
def test_cli_bad_scale_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["chat", "--lora", "x.gguf:nan", "hi"]) == ExitStatus.USAGE
    assert "gemmapipe: error: --lora: the scale in 'x.gguf:nan' is not a finite number" in capsys.readouterr().err


@pytest.mark.usefixtures("cli_env")
def test_server_refuses_lora_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from media_factory import write_image

    img = write_image(tmp_path / "a.png")
    code = run(["describe", "--server", "http://127.0.0.1:9", "--lora", "x.gguf", str(img)])
    err = capsys.readouterr().err
    assert code == ExitStatus.USAGE
    assert "gemmapipe: error: --lora: cannot be used with --server" in err
    assert "gemmapipe: hint: start the server with them: llama-server --lora FILE" in err
