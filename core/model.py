"""Find the model and its projector, and check they fit together before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import models_hub as _hub
from .errors import ModelError
from .gguf_meta import GGUFInfo, read_gguf

# The one description of a missing model (every command, `models path`, Python callers).
MODEL_HINT = (
    f"run: {{pull_command}}   to download the default, {_hub.DEFAULT_REPO} ({_hub.DEFAULT_MODEL_FILE} + "
    f"{_hub.DEFAULT_MMPROJ_FILE}, {_hub.DEFAULT_SIZE_TEXT}); or pass {{model}} PATH (or set {{model_env}})"
)

VISION = "vision"
AUDIO = "audio"
#: llama.cpp's architecture of the Gemma 4 multi-token-prediction drafter (gemma-4-*-it-assistant)
ASSISTANT_ARCH = "gemma4-assistant"


@dataclass
class ModelPair:
    model: GGUFInfo
    mmproj: GGUFInfo | None

    @property
    def modalities(self) -> set[str]:
        if self.mmproj is None:
            return set()
        out = set()
        if self.mmproj.get("clip.has_vision_encoder"):
            out.add(VISION)
        if self.mmproj.get("clip.has_audio_encoder"):
            out.add(AUDIO)
        return out

    @property
    def has_chat_template(self) -> bool:
        return bool(self.model.get("tokenizer.chat_template"))


def find_mmproj(model: Path) -> Path | None:
    """The single `mmproj*.gguf` beside the model; None when there is none, an error when ambiguous."""
    candidates = sorted(p for p in model.parent.glob("mmproj*.gguf") if p.is_file())
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ModelError(f"projector for {model}", f"several mmproj files beside the model ({names})",
                         "choose one with {mmproj}")
    return candidates[0] if candidates else None


def find_assistant(model: Path) -> Path:
    """The single Gemma 4 assistant GGUF (architecture gemma4-assistant) beside the model, found by
    reading the headers of the other GGUF files there; an error when there is none or several."""
    found = []
    for path in sorted(model.parent.glob("*.gguf")):
        if path.name.startswith("mmproj") or not path.is_file():
            continue
        try:
            if path.samefile(model):
                continue
            if read_gguf(path, role="draft model").architecture == ASSISTANT_ARCH:
                found.append(path)
        except (ModelError, OSError):
            continue
    if not found:
        raise ModelError(f"draft model for {model}", "no Gemma 4 assistant (a gemma4-assistant GGUF) beside the model",
                         "put the assistant released with the model (gemma-4-*-it-assistant) in its folder, "
                         "or give its path with {draft}")
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise ModelError(f"draft model for {model}", f"several Gemma 4 assistants beside the model ({names})",
                         "choose one with {draft} FILE")
    return found[0]


def projector_width(info: GGUFInfo) -> int | None:
    """Output width of the projector: what llama.cpp compares with the text model's n_embd."""
    for name in ("mm.input_projection.weight", "mm.a.input_projection.weight"):
        shape = info.tensor_shapes.get(name)
        if shape is not None and len(shape) >= 2:
            return shape[1]
    for key in ("clip.vision.projection_dim", "clip.audio.projection_dim"):
        value = info.get(key)
        if value:
            return int(value)
    return None


def resolve(model: str | Path | None, mmproj: str | Path | None, *, needs: set[str] | frozenset[str] = frozenset(),
            load_projector: bool = True) -> ModelPair:
    """Validate the model (and projector, when one is needed or present) for a command's needs."""
    if model is None or str(model) == "":
        raise ModelError("model", "no model given", MODEL_HINT)
    model_path = Path(model).expanduser()
    info = read_gguf(model_path, role="model")
    if info.architecture == "clip":
        raise ModelError(f"model {model_path}", "this is a projector (mmproj), not a language model",
                         "pass it with {mmproj} and the language model with {model}")
    if info.architecture == ASSISTANT_ARCH:
        raise ModelError(f"model {model_path}", "this is a Gemma 4 assistant (a drafter), not a language model",
                         "pass it with {draft} and the model it drafts for with {model}")

    proj_path: Path | None
    if mmproj is not None and str(mmproj) != "":
        proj_path = Path(mmproj).expanduser()
    elif load_projector or needs:
        proj_path = find_mmproj(model_path)
    else:
        proj_path = None
    if proj_path is None:
        if needs:
            raise ModelError(f"model {model_path}", f"no projector found for {' and '.join(sorted(needs))} input",
                             "pass {mmproj} PATH (an mmproj*.gguf beside the model is found automatically)")
        return ModelPair(info, None)

    proj = read_gguf(proj_path, role="projector")
    if proj.architecture != "clip":
        raise ModelError(f"projector {proj_path}", f"architecture is {proj.architecture!r}, not an mmproj (clip)")
    pair = ModelPair(info, proj)
    width, n_embd = projector_width(proj), info.n_embd
    if width is not None and n_embd is not None and width != n_embd:
        raise ModelError(f"projector {proj_path}",
                         f"projects to width {width} but the model {model_path.name} has width {n_embd}",
                         "this mmproj belongs to a different model")
    missing = set(needs) - pair.modalities
    if missing:
        raise ModelError(f"projector {proj_path}", f"has no {' or '.join(sorted(missing))} encoder",
                         "use the Gemma 4 unified mmproj, which has both")
    return pair


def file_sha256(path: Path) -> str:
    """sha256 of a model file, cached by path, size and mtime (see core.hashing)."""
    from .hashing import file_sha256 as cached

    return cached(path)
