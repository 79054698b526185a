"""Small GGUF files for model-resolution tests, written with the `gguf` package."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_text_model(path: Path, *, n_embd: int = 64, arch: str = "llama") -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.embedding_length", n_embd)
    w.add_tensor("token_embd.weight", np.zeros((8, n_embd), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_mmproj(path: Path, *, width: int = 64, vision: bool = True, audio: bool = True) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "clip")
    w.add_bool("clip.has_vision_encoder", vision)
    w.add_bool("clip.has_audio_encoder", audio)
    if vision:
        w.add_tensor("mm.input_projection.weight", np.zeros((width, 16), dtype=np.float32))
    if audio:
        w.add_tensor("mm.a.input_projection.weight", np.zeros((width, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
