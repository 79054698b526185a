"""Run every gemmapipe benchmark, side by side with the tools people would use instead, in one go.

    python bench/run.py [--quick] [--only engine,media,...] [--skip speech,...]

Each benchmark is a script of its own in bench/ (runnable alone) and runs here as a subprocess, one
after the other; each writes bench/results/<name>.json with its rows. This script then writes
bench/results/summary.json and bench/results/RESULTS.md (the table of ratios against the targets,
with the machine's CPU, cores, memory and versions) and prints the table.

--quick: small sizes for development (a few minutes); the default sizes are the ones reported.
--only/--skip: the benchmarks left out keep their rows from the last run of the same sizes (marked).
Never run these as timed tests in CI: they measure a machine, not correctness.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HERE, RESULTS, load_avg, machine_info, row, skipped

# name -> (script, extra args in full mode, extra args in quick mode)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "engine": ("bench_engine.py", [], ["--quick"]),
    "media": ("bench_media.py", [], ["--quick"]),
    "startup": ("bench_startup.py", [], ["--quick"]),
    "economy": ("bench_economy.py", [], ["--quick"]),
    "followup": ("bench_followup.py", [], ["--quick"]),
    "batch": ("bench_batch.py", [], ["--quick"]),
    "speech": ("bench_speech.py", [], ["--quick"]),
    "server": ("bench_server.py", [], ["--quick"]),
    "parallel": ("bench_parallel.py", [], ["--quick"]),
}


# ------------------------------------------------------------------------ rows of foreign scripts


def media_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """bench_media.py (owned with core/media) writes its own JSON; turn it into rows here."""
    rows = []
    quick = " (quick sizes)" if data.get("quick") else ""
    specs = [("frames", "media.frames", "1 FPS frame extraction: core.media vs `ffmpeg -vf fps=1`", 1.5),
             ("audio", "media.audio", "16 kHz mono audio extraction: core.media vs `ffmpeg -ac 1 -ar 16000`", 1.2)]
    for key, rkey, title, target in specs:
        d = data.get(key)
        if not isinstance(d, dict) or d.get("ours_s") is None:
            rows.append(skipped(rkey, title, f"bench_media.py wrote no '{key}' figures", f">= {target}x"))
            continue
        if d.get("ffmpeg_s") is None:
            rows.append(row(rkey, title + quick, ours=d.get("ours_s"), unit="s", target=f">= {target}x",
                            note="skipped the comparison: no ffmpeg CLI on PATH"))
            continue
        ratio = d.get("ratio") or (d["ffmpeg_s"] / d["ours_s"])
        target = d.get("target", target)
        note = str(d.get("file", ""))
        if d.get("ratio_cpu") is not None:
            note += f"; CPU-time ratio {d['ratio_cpu']}x"
        for vkey in ("one_decoder", "pyav_in_process", "pyav_helper"):  # the other ways it can run, forced
            v = d.get(vkey)
            if isinstance(v, dict) and v.get("wall_s"):
                note += f"; {vkey.replace('_', ' ')}: {v['wall_s']:.2f} s ({d['ffmpeg_s'] / v['wall_s']:.2f}x)"
        rows.append(row(rkey, title + quick, ours=d["ours_s"], reference=d["ffmpeg_s"], unit="s",
                        ref_label="ffmpeg CLI", ratio=ratio, target=f">= {target}x",
                        passed=bool(d["met"]) if "met" in d else bool(ratio >= target), note=note))
    mem = data.get("stream_memory")
    if isinstance(mem, dict):
        limit = mem.get("limit_mb", 150)
        peak = mem.get("peak_with_helpers_pss_above_baseline_mb", mem.get("peak_rss_above_baseline_mb"))
        if peak is not None:
            rows.append(row("media.memory", "Peak memory streaming the long audio (iter_audio)" + quick, ours=peak,
                            unit="MB", target=f"< {limit} MB",
                            passed=bool(mem["met"]) if "met" in mem else bool(peak < limit),
                            note="above the process's baseline, helper processes included (PSS)"
                            if "peak_with_helpers_pss_above_baseline_mb" in mem else "RSS above the baseline"))
    return rows


# ------------------------------------------------------------------------------------------ table


def fmt(v: Any, unit: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        v = f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v} {unit}".strip()


def fmt_ratio(r: dict[str, Any]) -> str:
    if r["ratio"] is None:
        return "—"
    t = r["target"]
    if "fewer" in t or r["key"].startswith("economy."):
        return f"{r['ratio']:.1%} saved"
    if r["key"].startswith("engine."):
        return f"{r['ratio']:.3f}"
    return f"{r['ratio']:.3g}x"


def verdict(r: dict[str, Any]) -> str:
    if r["note"].startswith("skipped") or r["note"].startswith("error"):
        return "skipped" if r["note"].startswith("skipped") else "error"
    return {True: "pass", False: "**FAIL**", None: "—"}[r["pass"]]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| benchmark | ours | reference | ratio | target | result | notes |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ref = fmt(r["reference"], r["unit"])
        if r["reference"] is not None and r["ref_label"]:
            ref += f" ({r['ref_label']})"
        cells = [r["benchmark"], fmt(r["ours"], r["unit"]), ref, fmt_ratio(r), r["target"] or "—", verdict(r),
                 r["note"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def plain_table(rows: list[dict[str, Any]]) -> str:
    out = []
    w = max(len(r["benchmark"][:70]) for r in rows) if rows else 10
    for r in rows:
        out.append(f"{r['benchmark'][:70]:<{w}}  {fmt(r['ours'], r['unit']):>16}  {fmt(r['reference'], r['unit']):>16}"
                   f"  {fmt_ratio(r):>12}  {r['target'] or '-':>14}  {verdict(r).replace('*', '')}")
    return "\n".join(out)


def markdown(machine: dict[str, Any], rows: list[dict[str, Any]], runs: dict[str, Any], total_s: float,
             quick: bool, end_load: list[float]) -> str:
    m = machine
    passed = sum(1 for r in rows if r["pass"] is True)
    failed = sum(1 for r in rows if r["pass"] is False)
    lines = [
        "# gemmapipe benchmarks: latest results",
        "",
        f"`python bench/run.py{' --quick' if quick else ''}` on {m['date']}: total wall time "
        f"**{total_s / 60:.1f} min**; {passed} targets met, {failed} missed"
        + (" (**quick sizes: development run, not the reported figures**)" if quick else "")
        + ("; a partial rerun: the runs marked *earlier run* keep their last figures" if any(
            str(r.get("status", "")).endswith("(earlier run)") for r in runs.values()) else "") + ".",
        "What each row measures, and how, is in [bench/README.md](../README.md). Ratios are oriented so that"
        " bigger is better for gemmapipe (a speed-up, or the fraction of tokens saved).",
        "",
        table(rows),
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores']} |",
        f"| memory | {m['memory_gib']} GiB |",
        f"| OS | {m['os']} |",
        f"| load average (1, 5, 15 min) | {m['load_avg']} at the start, {end_load} at the end |",
        f"| Python | {m['python']} |",
        f"| gemmapipe | {m['gemmapipe']} (git {m['git']}) |",
        f"| llama-cpp-python | {m['llama_cpp_python']} |",
        f"| PyAV | {m['pyav']} (FFmpeg libraries {m['pyav_ffmpeg']}) |",
        f"| ffmpeg CLI | {m['ffmpeg_cli'] or 'not installed'} |",
        f"| numpy | {m['numpy']} |",
        f"| faster-whisper / CTranslate2 | {m['faster_whisper'] or 'not installed'} / {m['ctranslate2'] or '—'} |",
        f"| espeak-ng | {m['espeak_ng'] or 'not installed'} |",
        "",
        "## Runs",
        "",
        "| benchmark | script | wall time | status | JSON |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in runs.items():
        js = f"[{name}.json]({name}.json)" if (RESULTS / f"{name}.json").exists() else "—"
        lines.append(f"| {name} | `bench/{r['script']}` | {r['seconds']:.0f} s | {r['status']} | {js} |")
    lines += ["", "The machine is shared: other processes' load (see the load average) slows single runs down; "
              "the benchmarks interleave the compared sides and take medians or best-of-N runs to keep ratios fair.",
              ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main


def collect(name: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    return media_rows(data) if name == "media" else list(data.get("rows", []))


def merge_earlier(rows: list[dict[str, Any]], runs: dict[str, Any], total: float,
                  quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any], float]:
    """A partial run (--only/--skip) keeps the other benchmarks' rows from the last summary of the same
    kind, so RESULTS.md stays whole; their runs are marked as kept."""
    path = RESULTS / "summary.json"
    if not path.exists():
        return rows, runs, total
    old = json.loads(path.read_text())
    if old.get("quick") != quick:
        return rows, runs, total
    merged_rows: list[dict[str, Any]] = []
    merged_runs: dict[str, Any] = {}
    for name in BENCHMARKS:
        if name in runs:
            merged_runs[name] = runs[name]
            merged_rows.extend(r for r in rows if r["key"].startswith(f"{name}."))
        elif name in old.get("runs", {}):
            kept = dict(old["runs"][name])
            if not kept["status"].endswith("(earlier run)"):
                kept["status"] += " (earlier run)"
            merged_runs[name] = kept
            merged_rows.extend(r for r in old.get("rows", []) if r["key"].startswith(f"{name}."))
            total += float(kept.get("seconds", 0.0))
    return merged_rows, merged_runs, total


def report_only() -> int:
    summary = json.loads((RESULTS / "summary.json").read_text())
    rows: list[dict[str, Any]] = []
    for name, run in summary["runs"].items():
        out = RESULTS / f"{name}.json"
        if run["status"] == "ok" and out.exists():
            rows.extend(collect(name, json.loads(out.read_text())))
        else:
            rows.extend(r for r in summary["rows"] if r["key"].startswith(f"{name}."))
    summary["rows"] = rows
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (RESULTS / "RESULTS.md").write_text(markdown(summary["machine"], rows, summary["runs"], summary["total_s"],
                                                 summary["quick"], summary["load_avg_end"]))
    print(plain_table(rows))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (development)")
    ap.add_argument("--only", default="", help="comma-separated benchmarks to run: " + ",".join(BENCHMARKS))
    ap.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: rebuild RESULTS.md from the JSON files of the last run")
    args = ap.parse_args()
    if args.report_only:
        return report_only()
    only = [x for x in args.only.split(",") if x]
    skip = {x for x in args.skip.split(",") if x}
    unknown = (set(only) | skip) - set(BENCHMARKS)
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    names = [n for n in (only or BENCHMARKS) if n not in skip]

    t_start = time.perf_counter()
    machine = machine_info()
    print(f"gemmapipe benchmarks ({'quick' if args.quick else 'full'}): {', '.join(names)}")
    print(f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; load {machine['load_avg']}",
          flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    rows: list[dict[str, Any]] = []
    runs: dict[str, Any] = {}
    for name in names:
        script, full_args, quick_args = BENCHMARKS[name]
        path = HERE / script
        out = RESULTS / f"{name}.json"
        print(f"\n=== {name}: {script} ===", flush=True)
        if not path.exists():
            msg = f"bench/{script} is not there yet (it belongs with core/media); add it and rerun"
            print(msg)
            rows.append(skipped(f"{name}.missing", f"{name} benchmark", msg))
            runs[name] = {"script": script, "seconds": 0.0, "status": "missing"}
            continue
        t = time.perf_counter()
        before = out.stat().st_mtime if out.exists() else None
        p = subprocess.run([sys.executable, str(path), *(quick_args if args.quick else full_args)], env=env,
                           stdin=subprocess.DEVNULL)
        dt = time.perf_counter() - t
        fresh = out.exists() and out.stat().st_mtime != before
        status = "ok" if p.returncode == 0 and fresh else f"failed (exit {p.returncode})"
        runs[name] = {"script": script, "seconds": round(dt, 1), "status": status}
        print(f"--- {name}: {dt:.0f} s, {status}", flush=True)
        if not fresh:
            rows.append(row(f"{name}.error", f"{name} benchmark", ours=None,
                            note=f"error: bench/{script} exited {p.returncode} without writing {out.name}"))
            continue
        data = json.loads(out.read_text())
        got = collect(name, data)
        if p.returncode != 0:
            got.append(row(f"{name}.error", f"{name} benchmark", ours=None, note=f"error: exited {p.returncode}"))
        rows.extend(got)

    total = time.perf_counter() - t_start
    if only or skip:
        rows, runs, total = merge_earlier(rows, runs, total, args.quick)
    end_load = load_avg()
    summary = {"quick": args.quick, "total_s": round(total, 1), "machine": machine, "load_avg_end": end_load,
               "runs": runs, "rows": rows}
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (RESULTS / "RESULTS.md").write_text(markdown(machine, rows, runs, total, args.quick, end_load))
    print("\n" + plain_table(rows))
    print(f"\ntotal wall time {total / 60:.1f} min; wrote {RESULTS / 'RESULTS.md'}")
    return 0 if all(r["status"].split(" (")[0] in ("ok", "missing") for r in runs.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
