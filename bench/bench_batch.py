"""Batch describe: `gemmapipe describe -m MODEL img1 ... imgN` (one process, one model load, the prompt
prefix evaluated once and kept in the KV cache) vs N separate `gemmapipe describe -m MODEL imgK`
processes, one after the other (what a shell loop does). Model: the tiny Gemma 4 pair of
tests/models/tiny_gemma4.py; images: N distinct 320x240 PNGs. Reports both wall times, their ratio
and how many prompt tokens the batch skipped thanks to the shared prefix. No target: the ratio is
reported.

    python bench/bench_batch.py [--images 50] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    MEDIA,
    bench_threads,
    gemmapipe_exe,
    isolated_env,
    print_rows,
    row,
    timed_run,
    tiny_gemma4,
    write_result,
)

MAX_TOKENS = 16


def make_images(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        if not p.exists():
            small = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(small).resize((320, 240), Image.Resampling.BICUBIC).save(p)
        paths.append(p)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores, 1 on a busy machine")
    ap.add_argument("--quick", action="store_true", help="10 images")
    args = ap.parse_args()
    if args.quick:
        args.images = 10
    args.threads = args.threads or bench_threads()
    model, _ = tiny_gemma4()
    images = make_images(MEDIA / "images", args.images)
    env = isolated_env("batch")
    base = [*gemmapipe_exe(), "describe", "-m", str(model), "-t", str(args.threads), "--max-tokens", str(MAX_TOKENS)]

    timed_run([*base, str(images[0])], env=env)  # warm the page cache
    t_batch, p = timed_run([*base, "-f", "jsonl", *map(str, images)], env=env, stdout=subprocess.PIPE)
    docs = [json.loads(line) for line in p.stdout.decode().splitlines() if line.strip()]
    assert len(docs) == len(images), f"{len(docs)} answers for {len(images)} images"
    prompt = sum(d["meta"]["prompt_tokens"] for d in docs)
    evaluated = sum(d["meta"]["prompt_evaluated"] for d in docs)
    print(f"one process, {len(images)} images: {t_batch:.2f} s ({evaluated}/{prompt} prompt tokens evaluated)",
          flush=True)

    singles = []
    for img in images:
        singles.append(timed_run([*base, str(img)], env=env)[0])
    t_sep = sum(singles)
    print(f"{len(images)} processes: {t_sep:.2f} s ({t_sep / len(images):.2f} s each)", flush=True)
    ratio = t_sep / t_batch
    rows = [row("batch.describe", f"Describe {len(images)} images: one `gemmapipe describe` vs {len(images)} "
                "invocations (tiny Gemma 4)", ours=t_batch, reference=t_sep, unit="s",
                ref_label=f"{len(images)} processes", ratio=ratio, target="(report)",
                note=f"{1 - evaluated / prompt:.0%} of prompt tokens reused from the KV cache; "
                     f"{t_batch / len(images) * 1000:.0f} vs {t_sep / len(images) * 1000:.0f} ms per image")]
    result: dict[str, Any] = {
        "images": len(images), "max_tokens": MAX_TOKENS, "batch_s": round(t_batch, 3),
        "separate_s": round(t_sep, 3), "separate_each_s": [round(x, 3) for x in singles],
        "prompt_tokens": prompt, "prompt_evaluated": evaluated, "rows": rows,
    }
    write_result("batch", result)
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
