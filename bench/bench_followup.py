"""Follow-up question on a video: with the saved prefilled state vs without (target: >= 10x faster to
the first token).

`gemmapipe video FILE -p Q` saves the KV state right after the last media chunk under
$XDG_CACHE_HOME/gemmapipe/states; a later question on the same file (same model and options)
loads it and evaluates only the new question. Model: the tiny Gemma 4 pair of
tests/models/tiny_gemma4.py (Gemma 4 architecture with sliding-window layers, 4096-token context).
Video: a generated mp4 (default 30 s: every second a different picture, a tone that changes every
second, so nothing is de-duplicated away: ~3100 prompt tokens, what fits the tiny model's 4096).

Each repetition empties the state cache, asks Q1 (a miss: evaluates everything, saves the state)
and then Q2 (a hit). Both run as fresh `gemmapipe video` processes under bench/_instrument.py.

- time to first token, engine side: miss = the prefill up to the last media plus the prefill of the
  rest of the prompt (saving the state in between is reported apart, state_save_s); hit = loading
  the state + prefill of the question. Their ratio is checked against the target.
- launch to first token of the whole invocation (hashing the file, loading the model; a hit
  rebuilds the prompt from the timeline skeleton saved with the state instead of decoding the video
  again): reported too.

    python bench/bench_followup.py [--seconds 30] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    MEDIA,
    at_least,
    bench_threads,
    instrumented,
    isolated_env,
    median,
    print_rows,
    row,
    tiny_gemma4,
    write_result,
)


def make_video(path: Path, seconds: int, fps: int = 5, size: tuple[int, int] = (320, 240)) -> Path:
    """Every second a different flat-shaded picture with moving bars; a tone whose pitch changes each second."""
    import av

    if path.exists():
        return path
    w, h = size
    rng = np.random.default_rng(7)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.time_base = Fraction(1, fps)
        vs.codec_context.options = {"crf": "23", "preset": "veryfast"}
        aus = c.add_stream("aac", rate=16000, layout="mono")
        for i in range(seconds * fps):
            if i % fps == 0:
                base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
                img = np.repeat(np.repeat(base, 8, axis=0), 8, axis=1)
            arr = img.copy()
            x = (i * 13) % w
            arr[:, x:x + 12] = 255
            f = av.VideoFrame.from_ndarray(arr, format="rgb24")
            f.pts, f.time_base = i, Fraction(1, fps)
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))
        t = np.arange(16000) / 16000
        pts = 0
        for s in range(seconds):
            tone = (0.3 * np.sin(2 * np.pi * (200 + 40 * (s % 10)) * t)).astype(np.float32)
            for k in range(0, tone.size, 1024):
                af = av.AudioFrame.from_ndarray(tone[None, k:k + 1024], format="flt", layout="mono")
                af.sample_rate, af.pts = 16000, pts
                pts += af.samples
                c.mux(aus.encode(af))
        c.mux(aus.encode(None))
    tmp.replace(path)
    return path


def ask(model: Path, video: Path, question: str, env: dict[str, str], threads: int) -> dict[str, Any]:
    args = ["video", "-m", str(model), "-t", str(threads), "-c", "4096", "--max-tokens", "8", "-f", "json",
            "-p", question, str(video)]
    rep = instrumented(args, env=env, report=MEDIA / "followup-report.json", stdout=subprocess.PIPE)
    meta = json.loads(rep["stdout"])["meta"]
    req = rep["requests"][0]
    stats = req["stats"]
    loads = [s for s in rep["states"] if s["op"] == "load"]
    saves = [s for s in rep["states"] if s["op"] == "save"]
    load_s = sum(s["end"] - s["start"] for s in loads)
    # A miss prefills the prompt up to its last media (saved), then generates from there: both count.
    prefills = [s for s in rep["states"] if s["op"] == "prefill"]
    prefill_s = stats["prefill_s"] + sum(s["prefill_s"] for s in prefills)
    evaluated = stats["prompt_evaluated"] + sum(s["evaluated"] for s in prefills)
    return {
        "cache": meta.get("cache"), "windows": meta.get("windows"), "prompt_tokens": stats["prompt_tokens"],
        "prompt_evaluated": evaluated, "prefill_s": prefill_s,
        "state_load_s": load_s, "state_save_s": sum(s["end"] - s["start"] for s in saves),
        "state_bytes": max([s["bytes"] for s in rep["states"]] or [0]),
        "ttft_engine_s": prefill_s + load_s,
        "launch_to_first_token_s": rep["first_piece_s"], "wall_s": rep["wall_s"],
        "launch_to_engine_s": rep["engine_inits"][0]["start_s"] if rep["engine_inits"] else None,
        "app_imported_s": rep["marks_s"]["app_imported"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores, 1 on a busy machine")
    ap.add_argument("--quick", action="store_true", help="2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.repeat = 2
    args.threads = args.threads or bench_threads()
    model, _mmproj = tiny_gemma4()
    video = make_video(MEDIA / f"followup_{args.seconds}s.mp4", args.seconds)
    env = isolated_env("followup")
    states = Path(env["XDG_CACHE_HOME"]) / "gemmapipe" / "states"
    runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        shutil.rmtree(states, ignore_errors=True)
        miss = ask(model, video, "What happens in this video?", env, args.threads)
        hit = ask(model, video, "What colour is the bar at [00:10]?", env, args.threads)
        runs.append({"miss": miss, "hit": hit})
        print(f"run {i + 1}: miss ({miss['cache']}) prefill {miss['ttft_engine_s']:.3f} s "
              f"[{miss['prompt_evaluated']} tokens]; hit ({hit['cache']}) {hit['ttft_engine_s']:.4f} s "
              f"[{hit['prompt_evaluated']} tokens, state {hit['state_bytes'] / 1e6:.1f} MB loaded in "
              f"{hit['state_load_s']:.3f} s]; launch->first token {miss['launch_to_first_token_s']:.2f} s vs "
              f"{hit['launch_to_first_token_s']:.2f} s", flush=True)
    ok = all(r["miss"]["cache"] == "miss" and r["hit"]["cache"] == "hit" for r in runs)

    def med(side: str, key: str) -> float:
        return median([r[side][key] for r in runs])

    ratio = med("miss", "ttft_engine_s") / med("hit", "ttft_engine_s")
    ratio_wall = med("miss", "launch_to_first_token_s") / med("hit", "launch_to_first_token_s")
    rows = [
        row("followup.ttft", f"Video follow-up, time to first token: saved state vs none ({args.seconds} s video, "
            "tiny Gemma 4)", ours=med("hit", "ttft_engine_s"), reference=med("miss", "ttft_engine_s"), unit="s",
            ref_label="no saved state", ratio=ratio, target=">= 10x", passed=at_least(ratio, 10) if ok else False,
            note=f"{med('miss', 'prompt_evaluated'):.0f} vs {med('hit', 'prompt_evaluated'):.0f} tokens evaluated"
                 + ("" if ok else "; cache did not miss then hit!")),
        row("followup.wall", "Same, launch to first token of the whole `gemmapipe video` run",
            ours=med("hit", "launch_to_first_token_s"), reference=med("miss", "launch_to_first_token_s"), unit="s",
            ref_label="no saved state", ratio=ratio_wall, target="(info)",
            note=f"a hit spends {med('hit', 'launch_to_engine_s'):.2f} s before the engine starts "
                 f"(imports done at {med('hit', 'app_imported_s'):.2f} s), no video decoding"),
    ]
    write_result("followup", {"video": video.name, "seconds": args.seconds, "model": model.name, "runs": runs,
                              "cache_behaviour_ok": ok, "rows": rows})
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
