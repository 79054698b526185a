"""Where chat conversations are kept (`--session NAME` or a path, `--continue`), and `chat --list`."""

import sys
import time
from pathlib import Path


def store_dir() -> Path:
    from gemmapipe.core.config import xdg_dir

    return xdg_dir("data") / "sessions"


def is_path(name: str) -> bool:
    """A --session value that names a file (`./x.json`, `~/chats/a.json`, `/tmp/s`) rather than a name
    in the store: it has a folder part or ends in .json."""
    return "/" in name or name.endswith(".json") or name.startswith("~")


def session_path(name: str) -> Path:
    """The file of a session: a path as given (absolute), or `<store>/<name>.json` for a name."""
    if is_path(name):
        return Path(name).expanduser().absolute()
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return store_dir() / f"{safe}.json"


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def list_sessions() -> int:
    """`chat --list`: the kept conversations, newest first: name, time, turns, first prompt (a header
    row and aligned columns on a terminal; tab-separated otherwise, as `models list`)."""
    from gemmapipe.core.errors import printable
    from gemmapipe.core.tasks.chat import session_summary

    folder = store_dir()
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    rows = []
    for path in files:
        info = session_summary(path)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(info["mtime"]))
        if "error" in info:
            rows.append([info["name"], when, "?", f"(unreadable: {info['error']})"])
        else:
            rows.append([info["name"], when, str(info["turns"]), _one_line(info["first"], 60)])
    rows = [[printable(c) for c in row] for row in rows]
    if sys.stdout.isatty():
        if not rows:
            sys.stderr.write(f"gemmapipe: no conversations kept yet (in {folder})\n")
            return 0
        table = [["NAME", "TIME", "TURNS", "FIRST PROMPT"], *rows]
        widths = [max(len(r[i]) for r in table) for i in range(3)]
        for r in table:
            sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[3] + "\n")
    else:
        for r in rows:
            sys.stdout.write("\t".join(r) + "\n")
    return 0
