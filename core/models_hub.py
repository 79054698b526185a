"""Getting the model: download the default GGUF and its projector from Hugging Face, and find them.

Files land side by side in `models_dir()/<owner>--<name>/` (so the projector is found beside the
model), under their own names. A download goes to `<file>.<etag16>.part`, which a later run
resumes (HTTP Range) as long as the file upstream is the same one; the sha256 of the whole file is
checked against the Hub's LFS etag before it is renamed into place, so a file under its final name
is always complete. `.gemmapipe-pull.json` in that folder records what was fetched.

The Hub is spoken to with huggingface_hub (HEAD for the metadata, its `http_get` for the bytes: its
retries, range requests and progress bars), so `HF_ENDPOINT`, `HF_TOKEN` and
`HF_HUB_DISABLE_PROGRESS_BARS` work as everywhere else. `offline=True` (or `HF_HUB_OFFLINE=1`) never
touches the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import GemmapipeError, ModelError

DEFAULT_REPO = "ggml-org/gemma-4-12B-it-GGUF"
DEFAULT_MODEL_FILE = "gemma-4-12B-it-Q4_K_M.gguf"
DEFAULT_MMPROJ_FILE = "mmproj-gemma-4-12B-it-bf16.gguf"
DEFAULT_FILES = (DEFAULT_MODEL_FILE, DEFAULT_MMPROJ_FILE)
DEFAULT_SIZE_TEXT = "about 7.3 GB"  # 7.1 GB model + 175 MB projector, as listed on the Hub
PULL_COMMAND = "gemmapipe models pull"
MANIFEST = ".gemmapipe-pull.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def models_dir() -> Path:
    """Where pulled models live: $GEMMAPIPE_MODELS_DIR, else $XDG_DATA_HOME/gemmapipe/models."""
    from .config import xdg_dir

    override = os.environ.get("GEMMAPIPE_MODELS_DIR")
    return Path(override).expanduser() if override else xdg_dir("data") / "models"


def repo_dir(repo: str = DEFAULT_REPO) -> Path:
    return models_dir() / repo.replace("/", "--")


def offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit in ("B", "kB") else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


@dataclass
class FileStatus:
    repo: str
    name: str
    path: Path
    size: int | None  # bytes on disk (complete file) or None
    partial: int = 0  # bytes of an unfinished download
    expected: int | None = None  # size the Hub announced, when known

    @property
    def complete(self) -> bool:
        return self.size is not None


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(folder: Path, data: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(folder / MANIFEST)


def file_status(repo: str, name: str) -> FileStatus:
    folder = repo_dir(repo)
    path = folder / name
    entry = _read_manifest(folder).get("files", {}).get(name, {})
    expected = entry.get("size") if isinstance(entry.get("size"), int) else None
    size = path.stat().st_size if path.is_file() else None
    partial = max((p.stat().st_size for p in folder.glob(f"{glob_escape(name)}.*.part")), default=0) \
        if folder.is_dir() else 0
    return FileStatus(repo, name, path, size, partial, expected)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def default_model_path() -> Path | None:
    """The pulled default model, when it and its projector are complete (a file under its final
    name always is)."""
    folder = repo_dir(DEFAULT_REPO)
    return folder / DEFAULT_MODEL_FILE if all((folder / n).is_file() for n in DEFAULT_FILES) else None


def local_models(configured: tuple[Path | None, Path | None] = (None, None)) -> list[FileStatus]:
    """What `models list` shows: the configured model and projector (`configured`, what commands use
    without a model argument), every GGUF under models_dir() (at its top and one folder down, where
    pulls go, partial downloads included), and the default pair when it is here or nothing is
    configured (then as missing, so the listing says what to pull)."""
    seen: dict[Path, FileStatus] = {}
    for path in configured:
        if path is not None:
            seen[path] = file_status_at(path)
    if configured[0] is None or default_model_path() is not None:
        for name in DEFAULT_FILES:
            st = file_status(DEFAULT_REPO, name)
            seen.setdefault(st.path, st)
    root = models_dir()
    if root.is_dir():
        for path in sorted(root.glob("*.gguf")):
            seen.setdefault(path, file_status_at(path))
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            repo = _read_manifest(folder).get("repo") or folder.name.replace("--", "/", 1)
            names = {p.name for p in folder.glob("*.gguf")}
            names |= {p.name.rsplit(".", 2)[0] for p in folder.glob("*.gguf.*.part")}
            for name in sorted(names):
                path = folder / name
                if path not in seen:
                    seen[path] = file_status(repo, name)
    return list(seen.values())


def file_status_at(path: Path) -> FileStatus:
    """A GGUF outside the pulled repositories (configured, or put in the models folder by hand)."""
    size = path.stat().st_size if path.is_file() else None
    return FileStatus("-", path.name, path, size)


def remove(name: str) -> list[Path]:
    """Delete a model file of the models folder (a file name as `models list` shows it, or a path
    inside the folder) and its unfinished downloads; the paths removed. UsageError for a name that
    is not there (nothing outside the models folder is ever removed)."""
    from .errors import UsageError

    root = models_dir().absolute()
    matches = [st for st in local_models() if _inside(st.path, root)
               and (st.name == name or Path(st.path).absolute() == Path(name).expanduser().absolute())]
    if not matches:
        raise UsageError(name, f"no such model in {root}", "see what is there: {models_list_command}")
    if len(matches) > 1:
        raise UsageError(name, "is in several repositories: " + ", ".join(str(m.path) for m in matches),
                         "give the path")
    st = matches[0]
    folder = st.path.parent
    targets = [st.path] if st.path.is_file() else []
    targets += sorted(folder.glob(f"{glob_escape(st.name)}.*.part"))
    removed = []
    for target in targets:
        try:
            target.unlink()
        except OSError as exc:
            raise GemmapipeError(str(target), f"cannot remove: {exc.strerror or exc}") from None
        removed.append(target)
    if folder != root and not any(folder.glob("*.gguf*")):
        for leftover in (folder / MANIFEST, folder):
            with contextlib.suppress(OSError):
                leftover.unlink() if leftover.is_file() else leftover.rmdir()
    return removed


def _inside(path: Path, root: Path) -> bool:
    try:
        path.absolute().relative_to(root)
    except ValueError:
        return False
    return True


def _sha256(path: Path) -> str:
    from .hashing import sha256_file

    return sha256_file(path)


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise GemmapipeError("models pull", "needs the huggingface_hub package",
                             "pip install 'gemmapipe[hub]'") from None
    return huggingface_hub


def _network_error(what: str, exc: BaseException) -> GemmapipeError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    name = type(exc).__name__
    text = " ".join(str(exc).split("\n")[0].split())[:300] or name
    if name in ("RepositoryNotFoundError", "GatedRepoError") or status in (401, 403):
        return GemmapipeError(what, f"not accessible on the Hub ({text})",
                              "check the repository name, or log in (HF_TOKEN) if it is gated")
    if name in ("EntryNotFoundError", "RemoteEntryNotFoundError", "RevisionNotFoundError") or status == 404:
        return GemmapipeError(what, f"not found on the Hub ({text})")
    return GemmapipeError(what, f"download failed: {text}",
                          f"check the network (HF_ENDPOINT={os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'}),"
                          " then run `{pull_command}` again: it resumes")


def pull(repo: str = DEFAULT_REPO, files: tuple[str, ...] | list[str] = DEFAULT_FILES, *, revision: str = "main",
         offline: bool = False, progress: bool = True, log: Callable[[str], None] = lambda m: None) -> list[Path]:
    """Make `files` of `repo` complete in repo_dir(repo) and return their paths.

    Already complete and unchanged upstream: nothing is downloaded. Offline: only check what is here
    (ModelError, exit 4, when something is missing)."""
    folder = repo_dir(repo)
    if offline or offline_env():
        missing = [n for n in files if not (folder / n).is_file()]
        if missing:
            raise ModelError(f"{repo}", f"not downloaded: {', '.join(missing)} (offline: nothing was fetched)",
                             "run `{pull_command}` with network access")
        for n in files:
            log(f"{n}: here, {human_size((folder / n).stat().st_size)} ({folder / n})")
        return [folder / n for n in files]

    hub = _hub()
    from huggingface_hub.file_download import http_get

    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GemmapipeError(f"models directory {folder}", exc.strerror or str(exc)) from None
    manifest = _read_manifest(folder)
    manifest["repo"] = repo
    entries: dict[str, Any] = manifest.setdefault("files", {})
    quiet_bars = not progress and not hub.utils.are_progress_bars_disabled()
    if quiet_bars:
        hub.utils.disable_progress_bars()
    from filelock import FileLock  # a dependency of huggingface_hub

    try:
        out = []
        for name in files:
            with FileLock(str(folder / f".{name}.lock")):  # two pulls at once: the second waits
                out.append(_pull_one(hub, http_get, repo, name, revision, endpoint, folder, entries, log))
            _write_manifest(folder, manifest)
        return out
    finally:
        if quiet_bars:
            hub.utils.enable_progress_bars()


def _pull_one(hub: Any, http_get: Any, repo: str, name: str, revision: str, endpoint: str | None, folder: Path,
              entries: dict[str, Any], log: Callable[[str], None]) -> Path:
    from urllib.parse import urlsplit

    what = f"{repo}/{name}"
    url = hub.hf_hub_url(repo, name, revision=revision, endpoint=endpoint)
    try:
        meta = hub.get_hf_file_metadata(url, endpoint=endpoint)
    except Exception as exc:  # httpx / Hub errors: one line, exit 1
        raise _network_error(what, exc) from None
    etag = (meta.etag or "").strip('"')
    size = meta.size
    dest = folder / name
    entry = entries.get(name) or {}
    if dest.is_file() and entry.get("etag") == etag and (size is None or dest.stat().st_size == size):
        log(f"{name}: up to date, {human_size(dest.stat().st_size)} ({dest})")
        return dest

    expected_sha = etag if _SHA256.match(etag) else None
    if dest.is_file() and expected_sha and (size is None or dest.stat().st_size == size):
        log(f"{name}: checking the file already here")
        if _sha256(dest) == expected_sha:
            entries[name] = {"etag": etag, "sha256": expected_sha, "size": size, "commit": meta.commit_hash}
            log(f"{name}: up to date ({dest})")
            return dest

    tag = re.sub(r"[^0-9A-Za-z]", "", etag)[:16] or "noetag"
    part = folder / f"{name}.{tag}.part"
    for stale in folder.glob(f"{glob_escape(name)}.*.part"):
        if stale != part:  # an unfinished download of another version: useless now
            stale.unlink(missing_ok=True)
    done = part.stat().st_size if part.is_file() else 0
    if size is not None and done > size:
        part.unlink()
        done = 0
    if size is not None:
        import shutil

        free = shutil.disk_usage(folder).free
        if free < size - done:
            raise GemmapipeError(f"models directory {folder}",
                                 f"{human_size(size - done)} needed for {name}, {human_size(free)} free",
                                 "free some space, or set {models_dir_env} to another disk")
    if done:
        log(f"{name}: resuming at {human_size(done)} of {human_size(size)}")
    else:
        log(f"{name}: downloading {human_size(size)} from {repo}")
    headers = hub.utils.build_hf_headers()
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a CDN gets no Hub token, as huggingface_hub does
    try:
        with part.open("ab") as fh:
            http_get(meta.location, fh, resume_size=done, headers=headers, expected_size=size,
                     displayed_filename=name)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise _network_error(what, exc) from None

    if expected_sha:
        log(f"{name}: checking sha256")
        got = _sha256(part)
        if got != expected_sha:
            part.unlink(missing_ok=True)
            raise GemmapipeError(what, f"checksum mismatch: expected sha256 {expected_sha[:16]}..., got {got[:16]}...",
                                 "the download was corrupted and has been removed; run `{pull_command}` again")
    os.replace(part, dest)
    entries[name] = {"etag": etag, "sha256": expected_sha, "size": dest.stat().st_size, "commit": meta.commit_hash}
    log(f"{name}: done, {human_size(dest.stat().st_size)} ({dest})")
    return dest
