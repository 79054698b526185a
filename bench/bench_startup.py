"""Start-up cost, measured on fresh subprocesses:

1. `gemmapipe --help` wall time (the console script, fork to exit), against the floor of a bare
   `python -c pass` on the same interpreter (target: <= 0.25 s).
2. Launch to first generated token, minus the model's own time (target: <= 0.3 s):
   `gemmapipe chat -m GEMMA3_270M --max-tokens 1 -v PROMPT` runs under bench/_instrument.py, which
   wraps llama.cpp's and libmtmd's native entry points (model, context and projector loading;
   `llama_decode`; sampling). The parent notes CLOCK_MONOTONIC just before the fork; the child
   notes when the first text piece reaches the caller. overhead = (first piece - launch) - (native
   time spent before it). What remains is gemmapipe and Python: interpreter start, imports, option
   parsing, config, GGUF validation, engine set-up around the native calls, template rendering,
   tokenization and the glue of the decode loop. The native time subtracted includes the first
   generated token's own `llama_decode` (the engine decodes it before handing its text out).
   Also run without -v (no llama.cpp log) for comparison.

A breakdown of the overhead by phase is written to bench/results/startup.json, with the slowest
imports of `gemmapipe --help` (`python -X importtime`).

    python bench/bench_startup.py [--repeat 7] [--quick]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    MEDIA,
    at_most,
    bench_threads,
    gemma3_270m,
    gemmapipe_exe,
    instrumented,
    isolated_env,
    median,
    print_rows,
    row,
    timed_run,
    write_result,
)

PROMPT = "The capital of France is"


def help_times(n: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    ours, floor = [], []
    timed_run([*gemmapipe_exe(), "--help"], env=env)  # warm the page cache
    for _ in range(n):
        ours.append(timed_run([*gemmapipe_exe(), "--help"], env=env)[0])
        floor.append(timed_run([sys.executable, "-c", "pass"], env=env)[0])
    return ours, floor


def slowest_imports(env: dict[str, str], top: int = 8) -> list[dict[str, Any]]:
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", "import gemmapipe.cli.app"], env=env,
                       capture_output=True, text=True)
    rows = []
    for line in p.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append({"module": m.group(4), "self_ms": int(m.group(1)) / 1000,
                         "cumulative_ms": int(m.group(2)) / 1000,
                         "depth": (len(m.group(3)) - 1) // 2})
    top_level = [r for r in rows if r["depth"] <= 1]
    return sorted(top_level, key=lambda r: -r["cumulative_ms"])[:top]


def first_token(model: Path, env: dict[str, str], verbose: bool) -> dict[str, Any]:
    args = ["chat", "-m", str(model), "-t", str(bench_threads()), "--max-tokens", "1",
            *(["-v"] if verbose else []), PROMPT]
    rep = instrumented(args, env=env, report=MEDIA / "startup-report.json")
    first = rep["first_piece_s"]
    init = rep["engine_inits"][0]
    req = rep["requests"][0]
    phases = {
        "interpreter_start": rep["script_start_s"],
        "imports": rep["marks_s"]["app_imported"] - rep["script_start_s"],  # llama_cpp (hooks) + the CLI app
        "cli_to_engine": init["start_s"] - rep["marks_s"]["app_imported"],  # parsing, config, GGUF validation
        "engine_init_python": (init["end_s"] - init["start_s"]) - init["native_load_s"],
        "engine_to_generate": req["call_s"] - init["end_s"],
        "generate_python": (first - req["call_s"]) - req["native_compute_to_first_s"],
    }
    return {
        "launch_to_first_token_s": first,
        "native_before_first_s": rep["native_before_first_s"],
        "native_load_s": rep["native_load_before_first_s"],
        "native_compute_s": rep["native_compute_before_first_s"],
        "overhead_s": first - rep["native_before_first_s"],
        "phases_s": {k: round(v, 4) for k, v in phases.items()},
        "wall_s": rep["wall_s"],
        "prefill_s": req["stats"]["prefill_s"],
        "prompt_tokens": req["stats"]["prompt_tokens"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.repeat = 3
    env = isolated_env("startup")
    model = gemma3_270m()

    ours, floor = help_times(args.repeat, env)
    imports = slowest_imports(env)
    print(f"--help: median {median(ours):.3f} s (min {min(ours):.3f}); python -c pass: {median(floor):.3f} s")

    runs: dict[str, list[dict[str, Any]]] = {"verbose": [], "quiet": []}
    first_token(model, env, verbose=False)  # warm the page cache with the model
    for _ in range(args.repeat):
        for key in ("verbose", "quiet"):
            r = first_token(model, env, verbose=key == "verbose")
            runs[key].append(r)
            print(f"chat {'-v' if key == 'verbose' else '  '}: first token at {r['launch_to_first_token_s']:.3f} s, "
                  f"native {r['native_before_first_s']:.3f} s -> overhead {r['overhead_s']:.3f} s", flush=True)

    def med(key: str, field: str) -> float:
        return median([r[field] for r in runs[key]])

    phases = {k: round(median([r["phases_s"][k] for r in runs["verbose"]]), 4) for k in runs["verbose"][0]["phases_s"]}
    help_med = median(ours)
    ov_v, ov_q = med("verbose", "overhead_s"), med("quiet", "overhead_s")
    top = sorted(phases, key=lambda k: -phases[k])[:3]
    rows = [
        row("startup.help", "`gemmapipe --help` wall time", ours=help_med, reference=median(floor), unit="s",
            ref_label="`python -c pass`", target="<= 0.25 s", passed=at_most(help_med, 0.25),
            note=f"median of {args.repeat}; min {min(ours):.3f} s"),
        row("startup.first_token", "Launch to first token minus model load/prefill (`chat --max-tokens 1 -v`)",
            ours=ov_v, reference=med("verbose", "launch_to_first_token_s"), unit="s", ref_label="launch to first token",
            target="<= 0.3 s", passed=at_most(ov_v, 0.3),
            note="largest parts: " + ", ".join(f"{k} {phases[k]:.3f} s" for k in top)
                 + f"; model's own time {med('verbose', 'native_before_first_s'):.3f} s"),
        row("startup.first_token_quiet", "Same without -v", ours=ov_q,
            reference=med("quiet", "launch_to_first_token_s"), unit="s", ref_label="launch to first token",
            target="<= 0.3 s", passed=at_most(ov_q, 0.3)),
    ]
    write_result("startup", {
        "model": model.name, "repeat": args.repeat,
        "help_s": [round(x, 4) for x in ours], "python_floor_s": [round(x, 4) for x in floor],
        "slowest_imports_of_cli_app": imports,
        "first_token_phases_median_s": phases,
        "first_token_runs": runs,
        "method": "overhead = (first text piece - fork) - native time before it (model/context load, llama_decode, "
                  "sampling), all on CLOCK_MONOTONIC; see bench/_instrument.py",
        "rows": rows,
    })
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
