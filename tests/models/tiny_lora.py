"""LoRA adapter GGUFs for the tiny Gemma 4 model (tests/models/tiny_gemma4.py), written with `gguf`.

What llama.cpp 0.3.36 expects (src/llama-adapter.cpp, llama_adapter_lora_init_impl):
    * `general.type = "adapter"`, `general.architecture` = the base model's, `adapter.type = "lora"`,
      `adapter.lora.alpha` a float32 (optional; the effective scale is scale * alpha / rank, or the
      scale alone when alpha is 0);
    * tensors `<base tensor name>.lora_a` and `.lora_b`, in pairs; ggml shapes (ne0 first)
      a = (base ne0, rank) and b = (rank, base ne1), i.e. numpy shapes (rank, in) and (out, rank).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import tiny_gemma4 as tg


def base_shapes() -> dict[str, tuple[int, int]]:
    """numpy (out, in) shapes of the tiny model's adaptable matrices."""
    n_vocab = len(tg.build_vocab()[0])
    hd = tg.HEAD_DIM_SWA if tg.SWA_PATTERN[0] else tg.HEAD_DIM_FULL
    return {"output.weight": (n_vocab, tg.N_EMBD), "blk.0.attn_q.weight": (tg.N_HEAD * hd, tg.N_EMBD),
            "blk.1.ffn_up.weight": (tg.N_FF, tg.N_EMBD)}


def write_lora(path: Path, tensors: dict[str, tuple[np.ndarray, np.ndarray]], *, alpha: float | int | None = 8.0,
               arch: str = "gemma4", general_type: str = "adapter", adapter_type: str = "lora") -> Path:
    """`tensors`: base tensor name -> (lora_a, lora_b) as numpy arrays, shapes (rank, in), (out, rank)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.type", general_type)
    w.add_string("general.name", "tiny gemma4 test lora")
    w.add_string("adapter.type", adapter_type)
    if isinstance(alpha, float):
        w.add_float32("adapter.lora.alpha", alpha)
    elif alpha is not None:
        w.add_uint32("adapter.lora.alpha", alpha)
    for name, (a, b) in tensors.items():
        w.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a, dtype=np.float32))
        w.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def random_lora_tensors(rank: int = 4, seed: int = 7) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A strong random adapter on the output matrix and two layer matrices: the greedy text changes."""
    rng = np.random.default_rng(seed)
    return {name: ((rng.standard_normal((rank, n_in)) * 0.5).astype(np.float32),
                   (rng.standard_normal((n_out, rank)) * 0.5).astype(np.float32))
            for name, (n_out, n_in) in base_shapes().items()}
