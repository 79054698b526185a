"""Read what we need from a GGUF header with llama.cpp's own reader (ggml's `gguf_*` C API), and check
the file is whole.

Why not the `gguf` Python package: its reader parses every vocabulary string in Python, 15-26 s for a
262K-token vocabulary here; ggml's reader does the same in milliseconds and is the code that will load
the model anyway.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ModelError

GGUF_MAGIC = b"GGUF"
# Arrays we never need and do not decode (the vocabulary is large).
_BULKY = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"}
_T_U8, _T_I8, _T_U16, _T_I16, _T_U32, _T_I32, _T_F32, _T_BOOL, _T_STR, _T_ARR, _T_U64, _T_I64, _T_F64 = range(13)
_SCALAR = {
    _T_U8: ("gguf_get_val_u8", ctypes.c_uint8), _T_I8: ("gguf_get_val_i8", ctypes.c_int8),
    _T_U16: ("gguf_get_val_u16", ctypes.c_uint16), _T_I16: ("gguf_get_val_i16", ctypes.c_int16),
    _T_U32: ("gguf_get_val_u32", ctypes.c_uint32), _T_I32: ("gguf_get_val_i32", ctypes.c_int32),
    _T_F32: ("gguf_get_val_f32", ctypes.c_float), _T_BOOL: ("gguf_get_val_bool", ctypes.c_bool),
    _T_U64: ("gguf_get_val_u64", ctypes.c_uint64), _T_I64: ("gguf_get_val_i64", ctypes.c_int64),
    _T_F64: ("gguf_get_val_f64", ctypes.c_double),
}


@dataclass
class GGUFInfo:
    path: Path
    version: int
    architecture: str
    metadata: dict[str, Any]
    tensor_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # ne order, as llama.cpp

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def n_embd(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.embedding_length")
        return int(value) if value is not None else None


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


@lru_cache(maxsize=1)
def _lib() -> Any:
    from .engine.native import bindings, quiet_native_logs

    llama, _ = bindings()
    quiet_native_logs()
    libdir = Path(llama.__file__).parent / "lib"
    candidates = sorted(p for p in libdir.glob("*ggml-base*")
                        if p.suffix in (".so", ".dylib", ".dll") or ".so." in p.name)
    if not candidates:
        raise ModelError("llama.cpp", f"cannot find libggml-base in {libdir}")
    lib = ctypes.CDLL(str(candidates[0]))
    vp, i64, cp = ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p
    sigs: dict[str, tuple[list[Any], Any]] = {
        "gguf_init_from_file": ([cp, _InitParams], vp), "gguf_free": ([vp], None),
        "gguf_get_version": ([vp], ctypes.c_uint32), "gguf_get_n_kv": ([vp], i64),
        "gguf_get_key": ([vp, i64], cp), "gguf_get_kv_type": ([vp, i64], ctypes.c_int),
        "gguf_get_arr_type": ([vp, i64], ctypes.c_int), "gguf_get_arr_n": ([vp, i64], ctypes.c_size_t),
        "gguf_get_arr_data": ([vp, i64], vp), "gguf_get_arr_str": ([vp, i64, ctypes.c_size_t], cp),
        "gguf_get_val_str": ([vp, i64], cp), "gguf_get_n_tensors": ([vp], i64),
        "gguf_get_tensor_name": ([vp, i64], cp), "gguf_get_tensor_offset": ([vp, i64], ctypes.c_size_t),
        "gguf_get_tensor_size": ([vp, i64], ctypes.c_size_t), "gguf_get_data_offset": ([vp], ctypes.c_size_t),
        "gguf_get_tensor_ne": ([vp, i64], ctypes.POINTER(ctypes.c_int64)),
    }
    for name, (ctype, restype) in {**sigs, **{n: ([vp, i64], t) for n, t in _SCALAR.values()}}.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = ctype, restype
    return lib


def _value(lib: Any, ctx: int, i: int, key: str) -> Any:
    kind = lib.gguf_get_kv_type(ctx, i)
    if kind == _T_STR:
        return lib.gguf_get_val_str(ctx, i).decode("utf-8", "replace")
    if kind in _SCALAR:
        return getattr(lib, _SCALAR[kind][0])(ctx, i)
    if kind != _T_ARR or key in _BULKY:
        return None
    n = lib.gguf_get_arr_n(ctx, i)
    sub = lib.gguf_get_arr_type(ctx, i)
    if sub == _T_STR:
        return [lib.gguf_get_arr_str(ctx, i, j).decode("utf-8", "replace") for j in range(n)]
    if sub in _SCALAR:
        ctype: Any = _SCALAR[sub][1]
        data = ctypes.cast(lib.gguf_get_arr_data(ctx, i), ctypes.POINTER(ctype))
        return [bool(data[j]) if sub == _T_BOOL else data[j] for j in range(n)]
    return None


def read_gguf(path: Path, *, role: str = "model") -> GGUFInfo:
    """Parse a GGUF header; raise ModelError naming the file for anything that is not a whole GGUF."""
    subject = f"{role} {path}"
    if not path.exists():
        raise ModelError(subject, "no such file")
    if path.is_dir():
        raise ModelError(subject, "is a directory, not a GGUF file")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelError(subject, f"cannot read: {exc.strerror or exc}") from None
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise ModelError(subject, "not a GGUF file (bad magic)",
                         "pass a .gguf model, e.g. from ggml-org/gemma-4-12B-it-GGUF")
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise ModelError(subject, f"unsupported GGUF version {version}")

    lib = _lib()
    ctx = lib.gguf_init_from_file(str(path).encode(), _InitParams(True, None))
    if not ctx:
        raise ModelError(subject, "corrupt or truncated GGUF header", "download it again")
    try:
        metadata = {}
        for i in range(lib.gguf_get_n_kv(ctx)):
            key = lib.gguf_get_key(ctx, i).decode("utf-8", "replace")
            metadata[key] = _value(lib, ctx, i, key)
        shapes: dict[str, tuple[int, ...]] = {}
        data_offset = lib.gguf_get_data_offset(ctx)
        end = data_offset
        for t in range(lib.gguf_get_n_tensors(ctx)):
            name = lib.gguf_get_tensor_name(ctx, t).decode("utf-8", "replace")
            ne = lib.gguf_get_tensor_ne(ctx, t)
            dims = [int(ne[d]) for d in range(4)]
            while len(dims) > 1 and dims[-1] == 1:
                dims.pop()
            shapes[name] = tuple(dims)
            end = max(end, data_offset + lib.gguf_get_tensor_offset(ctx, t) + lib.gguf_get_tensor_size(ctx, t))
    finally:
        lib.gguf_free(ctx)
    size = os.path.getsize(path)
    if end > size:
        raise ModelError(subject, f"truncated: tensors need {end} bytes, the file has {size}", "download it again")
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelError(subject, "GGUF has no general.architecture")
    return GGUFInfo(path=path, version=version, architecture=arch, metadata=metadata, tensor_shapes=shapes)
