"""Memory the model will need, estimated from the GGUF header before anything is loaded."""

from __future__ import annotations

import os
from typing import Any

from .errors import GemmapipeError
from .gguf_meta import GGUFInfo

# bytes per KV element for each cache type (q8_0: 34 bytes per 32 values, q4_0: 18 per 32)
_BYTES = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
HEADROOM = 512 * 2**20  # compute buffers, the interpreter, media


def _per_layer(value: Any, n_layer: int, default: int) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value] + [int(value[-1]) if value else default] * (n_layer - len(value))
    return [int(value) if value else default] * n_layer


def kv_bytes(info: GGUFInfo, n_ctx: int, *, cache_type: str = "f16", swa_full: bool = False,
             n_ubatch: int = 512) -> int:
    """K and V for every layer; sliding-window layers hold only their window (plus a ubatch)."""
    arch = info.architecture

    def g(key: str) -> Any:
        return info.get(f"{arch}.{key}")

    n_layer = int(g("block_count") or 0)
    n_embd = int(g("embedding_length") or 0)
    n_head = _per_layer(g("attention.head_count"), n_layer, 1)
    n_head_kv = _per_layer(g("attention.head_count_kv"), n_layer, n_head[0] if n_head else 1)
    k_len = int(g("attention.key_length") or (n_embd // max(1, n_head[0]) if n_head else 0))
    v_len = int(g("attention.value_length") or k_len)
    k_swa = int(g("attention.key_length_swa") or k_len)
    v_swa = int(g("attention.value_length_swa") or v_len)
    n_swa = int(g("attention.sliding_window") or 0)
    pattern = g("attention.sliding_window_pattern")
    per_elem = _BYTES.get(cache_type, 2.0)
    total = 0.0
    for il in range(n_layer):
        is_swa = bool(pattern[il % len(pattern)]) if isinstance(pattern, list) and pattern else False
        cells = min(n_ctx, n_swa + n_ubatch) if is_swa and n_swa and not swa_full else n_ctx
        width = (k_swa + v_swa) if is_swa else (k_len + v_len)
        total += cells * n_head_kv[il] * width * per_elem
    return int(total)


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def estimate(model: GGUFInfo, mmproj: GGUFInfo | None, n_ctx: int, *, cache_type: str = "f16",
             swa_full: bool = False, n_seq: int = 1) -> dict[str, int]:
    """Weights plus the KV cache of `n_seq` sequences of `n_ctx` tokens each (llama.cpp gives every
    sequence a KV stream of its own, sliding-window layers included)."""
    weights = model.path.stat().st_size + (mmproj.path.stat().st_size if mmproj else 0)
    kv = max(1, n_seq) * kv_bytes(model, n_ctx, cache_type=cache_type, swa_full=swa_full)
    est = {"n_ctx": n_ctx, "weights_bytes": weights, "kv_bytes": kv, "total_bytes": weights + kv + HEADROOM}
    if n_seq > 1:
        est["n_seq"] = n_seq
    return est


def check_fits(est: dict[str, int], available: int | None) -> None:
    """Refuse before loading when the model and its KV cache cannot fit in memory."""
    if available is None or est["total_bytes"] <= available:
        return
    gib = 2**30
    raise GemmapipeError(
        "memory",
        f"needs about {est['total_bytes'] / gib:.1f} GiB (weights {est['weights_bytes'] / gib:.1f} GiB + KV cache "
        f"{est['kv_bytes'] / gib:.1f} GiB for {_tokens(est)}) but only {available / gib:.1f} GiB is available",
        "lower {ctx_size}" + (" or {jobs}" if est.get("n_seq", 1) > 1 else "")
        + ", use {cache_type} q8_0, or a smaller quantization",
    )


def _tokens(est: dict[str, int]) -> str:
    n_seq = est.get("n_seq", 1)
    return f"{n_seq} sequences of {est['n_ctx']} tokens" if n_seq > 1 else f"{est['n_ctx']} tokens"
