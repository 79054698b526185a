"""SHA-256 of files and streams: one implementation, read in 4 MiB blocks (a 7 GB model is fine)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import BinaryIO

_BLOCK = 1 << 22


def sha256_stream(fh: BinaryIO) -> str:
    """Hex SHA-256 of what `fh` holds from here to its end."""
    h = hashlib.sha256()
    for block in iter(lambda: fh.read(_BLOCK), b""):
        h.update(block)
    return h.hexdigest()


def sha256_file(path: Path | str) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def file_sha256(path: Path) -> str:
    """sha256 of a (possibly 7 GB) file, cached by path, size and mtime so it is paid once."""
    from .config import xdg_dir

    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    cache = xdg_dir("cache") / "sha256.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if key in known:
        return str(known[key])
    digest = sha256_file(path)
    known[key] = digest
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(known))
    except OSError:
        pass  # a read-only cache only costs time
    return digest
