"""The prefilled-state cache: llama.cpp states saved so that a later run can resume from them.

A cache is an optimisation. Nothing read from it is trusted and nothing wrong with it stops a run:
a truncated, corrupt or foreign entry, an entry that is not a file, a cache path that is not a
directory, a directory that cannot be written, are each one warning, and the run goes on without
the cache (a bad entry is rebuilt when the run can save a new one).

Keys. An entry is named `<content>-<setup>.gpstate`: `content` hashes what was prefilled (the
input's bytes and the options that lay the prompt out), `setup` what it was prefilled with (model
files, context size, KV-cache type: the engine says). The content half alone tells, before any model
is loaded, whether a run may find something to resume.

Format (version 1), all integers little-endian:

    8 bytes   magic b"GPSTATE\\0"
    4 bytes   format version
    4 bytes   header length H
    8 bytes   payload length P
    32 bytes  SHA-256 of the header and the payload
    H bytes   header: UTF-8 JSON object {"key": <entry name>, "info": {...}}
    P bytes   payload: llama.cpp's own state bytes, as it wrote them

The header is plain data (never code: no pickle) and is checked for shape by whoever reads `info`.
Writes go to a temporary file in the cache directory, renamed over the entry once complete; the
temporary file is removed on every way out. Entries are evicted least recently used first (a hit
refreshes an entry's time) once they add up to more than the cap, 4 GB by default.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .sink import make_temp, untrack_temp

MAGIC = b"GPSTATE\0"
VERSION = 1
SUFFIX = ".gpstate"
DEFAULT_CAP = 4 << 30  # bytes, all entries together
MAX_HEADER = 64 << 20  # a header is a few kB to a few MB (a long video's timeline)
_PRELUDE = struct.Struct("<8sIIQ32s")
_STALE_TEMP_S = 3600  # a temporary file this old was left by a killed process
_LEGACY = ("*.state", "timeline-*.json")  # the pickled states of gemmapipe before this format: never read


class CacheEntryError(Exception):
    """An entry that cannot be used; the message says why, for the warning."""


@dataclass(frozen=True)
class Key:
    content: str  # what was prefilled
    setup: str  # what it was prefilled with

    @property
    def name(self) -> str:
        return f"{self.content}-{self.setup}"


def _digest(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


def make_key(content: Mapping[str, Any], setup: Mapping[str, Any]) -> Key:
    """The entry for this content prefilled with this setup. Both are JSON-able mappings; the content
    half can be computed before any model is loaded."""
    return Key(_digest(content), _digest(setup))


def file_identity(path: str | os.PathLike[str] | None) -> str | None:
    """A file as far as a saved state depends on it: where, how big, last changed (not its bytes:
    hashing gigabytes of weights per run would cost more than the cache saves)."""
    if path is None:
        return None
    st = os.stat(path)
    return f"{os.fspath(path)}:{st.st_size}:{st.st_mtime_ns}"


@dataclass
class Entry:
    key: Key
    info: dict[str, Any]
    payload: memoryview  # writable (ctypes can take it without a copy)


class StateCache:
    """One cache directory. Every method is safe to call whatever the directory's state: problems
    become one warning (through `warn`) and the cache turns itself off for the rest of the run."""

    def __init__(self, root: Path, *, cap_bytes: int = DEFAULT_CAP, warn: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.cap_bytes = cap_bytes
        self._warn = warn
        self.enabled = True
        self.warnings: list[str] = []  # what was reported, in order (at most one per run)

    # --- reporting ------------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        """One line per run: a later problem in the same run (a rebuild that fails too) adds nothing."""
        if self.warnings:
            return
        self.warnings.append(message)
        if self._warn is not None:
            self._warn(f"state cache: {message}")

    def _off(self, message: str) -> None:
        self.warn(f"{message}; running without the cache")
        self.enabled = False

    def _root_ok(self) -> bool:
        """The cache directory, if it exists, is a directory (a missing one is made when saving)."""
        if not self.enabled:
            return False
        try:
            st = os.stat(self.root)
        except FileNotFoundError:
            return True
        except OSError as exc:
            self._off(f"{self.root}: {exc.strerror or exc}")
            return False
        if not stat.S_ISDIR(st.st_mode):
            self._off(f"{self.root} is not a directory")
            return False
        return True

    def path(self, key: Key) -> Path:
        return self.root / f"{key.name}{SUFFIX}"

    # --- reading --------------------------------------------------------------------------------
    def has_content(self, content: str) -> bool:
        """Whether some entry for this content exists (for any setup): worth loading a model for."""
        if not self._root_ok():
            return False
        try:
            return any(True for _ in self.root.glob(f"{content}-*{SUFFIX}"))
        except OSError:
            return False

    def get(self, key: Key) -> Entry | None:
        """The entry, checked whole; None when there is none or it cannot be used (with a warning)."""
        if not self._root_ok():
            return None
        path = self.path(key)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._off(f"{path}: {exc.strerror or exc}")
            return None
        if not stat.S_ISREG(st.st_mode):
            self._off(f"{path} is not a regular file")
            return None
        try:
            entry = self._read(path, key, st.st_size)
        except CacheEntryError as exc:
            self.reject(key, str(exc))
            return None
        except OSError as exc:
            self._off(f"{path}: cannot read it: {exc.strerror or exc}")
            return None
        with contextlib.suppress(OSError):  # least recently used goes first; read-only caches still work
            os.utime(path)
        return entry

    def _read(self, path: Path, key: Key, size: int) -> Entry:
        with open(path, "rb") as fh:
            head = fh.read(_PRELUDE.size)
            if len(head) < _PRELUDE.size or not head.startswith(MAGIC):
                if head.startswith(MAGIC):
                    raise CacheEntryError(f"truncated ({size} bytes)")
                raise CacheEntryError("not a gemmapipe state file")
            _, version, n_header, n_payload, checksum = _PRELUDE.unpack(head)
            if version != VERSION:
                raise CacheEntryError(f"format version {version}, this gemmapipe reads {VERSION}")
            if n_header > MAX_HEADER or n_payload > max(self.cap_bytes, 0):
                raise CacheEntryError("sizes out of range")
            want = _PRELUDE.size + n_header + n_payload
            if size < want:
                raise CacheEntryError(f"truncated ({size} of {want} bytes)")
            if size > want:
                raise CacheEntryError(f"{size - want} bytes more than its header says")
            data = bytearray(n_header + n_payload)
            view = memoryview(data)
            got = 0
            while got < len(data):
                n = fh.readinto(view[got:])
                if not n:
                    raise CacheEntryError(f"truncated ({_PRELUDE.size + got} of {want} bytes)")
                got += n
        if hashlib.sha256(view).digest() != checksum:
            raise CacheEntryError("checksum mismatch (corrupt)")
        try:
            header = json.loads(bytes(view[:n_header]).decode())
        except (UnicodeDecodeError, ValueError):
            raise CacheEntryError("unreadable header") from None
        if not isinstance(header, dict) or not isinstance(header.get("info"), dict):
            raise CacheEntryError("unreadable header")
        if header.get("key") != key.name:
            raise CacheEntryError("written for another entry (foreign)")
        return Entry(key, header["info"], view[n_header:])

    def reject(self, key: Key, why: str) -> None:
        """An entry found unusable (here or by whoever read its info): say so, and drop it so that
        the run that follows can save a good one in its place."""
        path = self.path(key)
        self.warn(f"{path}: {why}; ignored, it will be rebuilt")
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                path.unlink()

    # --- writing --------------------------------------------------------------------------------
    def put(self, key: Key, info: Mapping[str, Any], payload: bytes | memoryview) -> bool:
        """Save an entry atomically, then evict beyond the cap. False (with a warning on failure)
        when it was not saved; an entry bigger than the whole cap is not saved, silently."""
        if not self._root_ok():
            return False
        header = json.dumps({"key": key.name, "info": info}, separators=(",", ":")).encode()
        payload = memoryview(payload).cast("B")
        total = _PRELUDE.size + len(header) + len(payload)
        if total > self.cap_bytes or len(header) > MAX_HEADER:
            return False
        h = hashlib.sha256(header)
        h.update(payload)
        prelude = _PRELUDE.pack(MAGIC, VERSION, len(header), len(payload), h.digest())
        path = self.path(key)
        tmp: str | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = make_temp(dir=self.root, prefix=f".{key.name}.", suffix=".part")
            with os.fdopen(fd, "wb") as fh:
                fh.write(prelude)
                fh.write(header)
                fh.write(payload)
            os.replace(tmp, path)
            untrack_temp(tmp)
            tmp = None
        except OSError as exc:
            where = path if isinstance(exc, IsADirectoryError) else self.root
            self._off(f"cannot save to {where}: {exc.strerror or exc}")
            return False
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                untrack_temp(tmp)
        self.evict(keep=path)
        return True

    def evict(self, keep: Path | None = None) -> None:
        """Drop the least recently used entries beyond the cap, temporary files left by killed runs,
        and the files of the old pickled format (which nothing reads any more)."""
        now = time.time()
        try:
            entries = []
            for p in self.root.iterdir():
                try:
                    st = p.lstat()
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                if p.name.endswith(SUFFIX):
                    entries.append((st.st_mtime, st.st_size, p))
                elif _stale_temp(p, st.st_mtime, now) or any(p.match(g) for g in _LEGACY):
                    _unlink(p)
        except OSError:
            return
        used = 0
        for _, size, p in sorted(entries, key=lambda e: e[0], reverse=True):
            used += size
            if used > self.cap_bytes and p != keep:
                _unlink(p)
                used -= size


def _stale_temp(p: Path, mtime: float, now: float) -> bool:
    return p.name.startswith(".") and p.name.endswith(".part") and now - mtime > _STALE_TEMP_S


def _unlink(p: Path) -> None:
    with contextlib.suppress(OSError):
        p.unlink()


__all__ = ["DEFAULT_CAP", "CacheEntryError", "Entry", "Key", "StateCache", "file_identity", "make_key"]
