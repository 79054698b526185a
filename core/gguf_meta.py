"""Read what we need from a GGUF header (via the `gguf` package) and check the file is whole.

Reading is cheap even for a 7 GB model: the reader memory-maps the file and parses only the
header and tensor table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

GGUF_MAGIC = b"GGUF"
_BULKY = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"}


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


def _field_value(field: Any) -> Any:
    # gguf >= 0.10 has ReaderField.contents(); it decodes strings and arrays for us.
    try:
        return field.contents()
    except Exception:  # unusual types: keep the raw parts rather than fail the whole read
        return None


def read_gguf(path: Path, *, role: str = "model", with_arrays: bool = False) -> GGUFInfo:
    """Parse a GGUF header; raise ModelError naming the file for anything that is not a whole GGUF.

    Large arrays (the vocabulary) are skipped unless `with_arrays`, since we rarely need them.
    """
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
        raise ModelError(subject, "not a GGUF file (bad magic)", "pass a .gguf model, e.g. from ggml-org/gemma-4-12B-it-GGUF")
    version = int.from_bytes(head[4:8], "little")
    if version not in (2, 3):
        raise ModelError(subject, f"unsupported GGUF version {version}")

    import numpy as np
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # the reader raises ValueError/IndexError/... on damaged headers
        raise ModelError(subject, f"corrupt or truncated GGUF ({type(exc).__name__}: {exc})") from None

    metadata: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if not with_arrays and key in _BULKY:
            metadata[key] = None  # present, not decoded: the vocabulary is large and rarely needed
            continue
        metadata[key] = _field_value(fld)

    shapes: dict[str, tuple[int, ...]] = {}
    end = reader.data_offset
    for t in reader.tensors:
        shapes[t.name] = tuple(int(d) for d in t.shape)
        end = max(end, int(t.data_offset) + int(t.n_bytes))
    size = os.path.getsize(path)
    if end > size:
        raise ModelError(subject, f"truncated: tensors need {end} bytes, the file has {size}",
                         "download it again")
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelError(subject, "GGUF has no general.architecture")
    del reader, np
    return GGUFInfo(path=path, version=version, architecture=arch, metadata=metadata, tensor_shapes=shapes)
