"""LoRA adapters: `FILE[:SCALE]` specs, the adapter's GGUF checked against the base model before
llama.cpp reads it, and loading onto a context through `llama_adapter_lora_init` and
`llama_set_adapters_lora`.

Why check first: `llama_adapter_lora_init` returns NULL for an adapter that does not fit, with the
reason only in llama.cpp's log (llama-adapter.cpp), and its GGUF reads assert on a value of the
wrong type (`gguf_get_val_f32` on an `adapter.lora.alpha` written as an integer aborts the process).
So every rule llama.cpp applies is checked here, on the header alone, and each failure is one
ModelError line naming the adapter:

- `general.type` is "adapter", `adapter.type` is "lora" (strings), `general.architecture` is the
  base model's, `adapter.lora.alpha` (optional) is a float32;
- every tensor is `<base tensor>.lora_a` or `.lora_b` (or a `*_norm.weight`, which llama.cpp
  skips), in complete pairs, each naming a tensor of the base model;
- shapes (ggml order, ne0 first): `a` is (base ne0, rank), `b` is (rank, base ne1); for
  `token_embd.weight`, A and B are flipped (`b` is (base ne0, rank), `a` is (rank, base ne1)).

llama.cpp applies adapters to the text decoder's matrix multiplications only: libmtmd's image and
audio projections are not adapted (the decoder reading their embeddings is).
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path
from typing import Any

from .engine.base import LoraAdapter
from .errors import ModelError, UsageError
from .gguf_meta import GGUFInfo, read_gguf

_T_F32, _T_STR = 6, 8  # GGUF value types (gguf.h)


def parse_lora(spec: str) -> LoraAdapter:
    """`FILE` or `FILE:SCALE` (scale 1 by default; any finite number, 0 = no effect). A colon whose
    tail is not a number belongs to the file name."""
    path, scale = spec, 1.0
    head, sep, tail = spec.rpartition(":")
    if sep:
        try:
            value: float | None = float(tail)
        except ValueError:
            value = None
        if value is not None:
            if not math.isfinite(value):
                raise UsageError(None, f"the scale in {spec!r} is not a finite number", parameter="lora")
            path, scale = head, value
    if not path.strip():
        raise UsageError(None, f"{spec!r} names no file", "give FILE or FILE:SCALE", parameter="lora")
    return LoraAdapter(Path(path).expanduser(), scale)


def _kv_types(path: Path) -> dict[str, int]:
    """Key -> GGUF value type of a header that read_gguf has already found whole."""
    from .gguf_meta import _InitParams, _lib

    lib = _lib()
    ctx = lib.gguf_init_from_file(str(path).encode(), _InitParams(True, None))
    if not ctx:
        return {}
    try:
        return {lib.gguf_get_key(ctx, i).decode("utf-8", "replace"): int(lib.gguf_get_kv_type(ctx, i))
                for i in range(lib.gguf_get_n_kv(ctx))}
    finally:
        lib.gguf_free(ctx)


def _ne2(shape: tuple[int, ...]) -> tuple[int, int]:
    dims = [*shape, 1, 1]
    return int(dims[0]), int(dims[1])


def check_adapter(path: Path, base: GGUFInfo) -> GGUFInfo:
    """The adapter's header, checked against the base model as llama.cpp will check it (see the
    module docstring); ModelError, naming the adapter, for the first rule it breaks."""
    subject = f"adapter {path}"
    info = read_gguf(path, role="adapter")  # whole GGUF with a general.architecture, else ModelError
    kinds = _kv_types(path)
    for key in ("general.type", "adapter.type"):
        if key in kinds and kinds[key] != _T_STR:
            raise ModelError(subject, f"{key} is not a string", "not a LoRA adapter GGUF")
    general_type = info.get("general.type")
    if general_type != "adapter":
        what = "a model" if general_type in (None, "model") else f"general.type {general_type!r}"
        raise ModelError(subject, f"is not a LoRA adapter ({what}, not general.type 'adapter')",
                         "convert the adapter with llama.cpp's convert_lora_to_gguf.py")
    if info.get("adapter.type") != "lora":
        raise ModelError(subject, f"adapter.type is {info.get('adapter.type')!r}, not 'lora'",
                         "only LoRA adapters can be applied")
    if "adapter.lora.alpha" in kinds and kinds["adapter.lora.alpha"] != _T_F32:
        raise ModelError(subject, "adapter.lora.alpha is not a float32", "llama.cpp would abort reading it")
    if info.architecture != base.architecture:
        raise ModelError(subject, f"is for architecture {info.architecture!r}, the model is {base.architecture!r}",
                         "use an adapter trained for this model")
    pairs: dict[str, dict[str, tuple[int, int]]] = {}
    for name, shape in info.tensor_shapes.items():
        if name.endswith((".lora_a", ".lora_b")):
            pairs.setdefault(name[:-7], {})[name[-1]] = _ne2(shape)
        elif not name.endswith("_norm.weight"):
            raise ModelError(subject, f"tensor {name!r} is not a LoRA tensor (.lora_a or .lora_b)",
                             "not a LoRA adapter GGUF")
    if not pairs:
        raise ModelError(subject, "has no LoRA tensors")
    for target, ab in sorted(pairs.items()):
        if set(ab) != {"a", "b"}:
            raise ModelError(subject, f"tensor {target!r} has lora_{next(iter(ab))} without its lora_"
                                      f"{'b' if 'a' in ab else 'a'}")
        if target not in base.tensor_shapes:
            raise ModelError(subject, f"adapts {target!r}, which the model {base.path.name} does not have",
                             "this adapter was trained for another model")
        w0, w1 = _ne2(base.tensor_shapes[target])
        (a0, a1), (b0, b1) = ab["a"], ab["b"]
        if target.endswith("token_embd.weight"):
            fits = (w0, w1) == (b1, a1) and a0 == b0
        else:
            fits = (w0, w1) == (a0, b1) and a1 == b0
        if not fits:
            raise ModelError(subject, f"tensor {target!r} does not fit the model: the model's is {w0}x{w1}, "
                                      f"lora_a {a0}x{a1}, lora_b {b0}x{b1}",
                             "this adapter was trained for another model (or another size of it)")
    return info


def load_adapters(llama: Any, model: Any, ctx: Any, adapters: tuple[LoraAdapter, ...], base: GGUFInfo) -> list[Any]:
    """Check, load and set every adapter on `ctx` (with its scale); returns the handles for
    `free_adapters`. On any failure the ones already loaded are freed and ModelError raised."""
    handles: list[Any] = []
    try:
        for adapter in adapters:
            check_adapter(adapter.path, base)
            handle = llama.llama_adapter_lora_init(model, str(adapter.path).encode())
            if not handle:
                raise ModelError(f"adapter {adapter.path}", "llama.cpp could not load it for this model",
                                 "run with -v to see llama.cpp's log")
            handles.append(handle)
        if handles:
            arr = (llama.llama_adapter_lora_p_ctypes * len(handles))(*handles)
            scales = (ctypes.c_float * len(handles))(*(a.scale for a in adapters))
            if llama.llama_set_adapters_lora(ctx, arr, len(handles), scales) != 0:
                raise ModelError("adapters", "llama.cpp could not set them on the context")
    except BaseException:
        free_adapters(llama, handles)
        raise
    return handles


def free_adapters(llama: Any, handles: list[Any]) -> None:
    """Free loaded adapters (after the context that used them, before the model)."""
    while handles:
        llama.llama_adapter_lora_free(handles.pop())


def state_key(adapters: tuple[LoraAdapter, ...]) -> dict[str, Any]:
    """The adapters and scales, in order, for a saved state's setup key; nothing without adapters,
    so the keys of states saved without them stay as they were."""
    from .statecache import file_identity

    return {"lora": [[file_identity(a.path), a.scale] for a in adapters]} if adapters else {}
