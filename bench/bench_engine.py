"""Engine speed: `gemmapipe chat` against llama.cpp's own C++ tool, `llama-mtmd-cli`, built from the
same llama.cpp (`.ci/llama-server.sh` builds both it and llama-server), on the same model, image,
prompt, thread count, context and batch sizes, in the same run (target: ours/theirs >= 0.95 for
prefill and decode tokens/s; whole-job wall time reported).

- ours: `gemmapipe chat -m 270M --mmproj PROBE -a IMAGE --no-template PROMPT` in a fresh process under
  bench/_instrument.py, exactly what the console script runs. Tokens/s from the engine's own stats:
  prefill = evaluated prompt tokens / prefill_s (image and text), decode = generated tokens /
  decode_s, which is the whole loop between tokens (llama_decode, sampling, detokenization, the
  thread hand-off, writing each piece to stdout). The instrument also times llama.cpp's own calls,
  which splits our time per token into llama.cpp's and ours.
- theirs: `llama-mtmd-cli ... --image IMAGE -p PROMPT --temp 0 --perf` with a plain chat template
  (the model's text as is, as --no-template gives ours). Tokens/s from its `--perf` lines: prompt eval
  (its llama_decode of the image and the text) and eval (its llama_decode calls per generated token:
  its sampling and printing are not in that figure, so the ratio is conservative for us).

The two prompts differ by a few tokens (mtmd-cli keeps the Gemma 4 image wrapper as text, which the
270M's vocabulary lacks and gemmapipe drops), so the greedy texts differ too; both generate the
requested count (a base model rarely stops). Runs come in adjacent pairs, the order alternating; the
ratios reported are medians of the pairs' ratios.

    python bench/bench_engine.py [--tokens 128] [--repeat 5] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_server import PLAIN, TIMING  # the plain chat template and llama.cpp's --perf lines
from common import (
    MEDIA,
    at_least,
    bench_threads,
    gemma3_270m,
    instrumented,
    isolated_env,
    machine_info,
    median,
    print_rows,
    row,
    skipped,
    timed_run,
    vision_probe,
    write_result,
)

# ~230 tokens of text after a 48-token image: a prefill of a few hundred tokens, one 512-token batch.
PROMPT = ("The history of the city begins with a small settlement on the river, where traders met to "
          "exchange grain, salt and cloth. Over the centuries it grew into ") * 6


def mtmd_cli() -> Path | None:
    from bench_server import server_binary

    try:
        cli = server_binary().with_name("llama-mtmd-cli")
    except (subprocess.CalledProcessError, OSError):
        return None
    return cli if cli.exists() else None


def ours(model: Path, mmproj: Path, image: Path, n_gen: int, threads: int, env: dict[str, str]) -> dict[str, Any]:
    rep = instrumented(["chat", "-m", str(model), "--mmproj", str(mmproj), "-t", str(threads), "--max-tokens",
                        str(n_gen), "-a", str(image), "--no-template", PROMPT], env=env,
                       report=MEDIA / "engine-report.json", stdout=subprocess.PIPE)
    req = rep["requests"][0]
    st = req["stats"]
    loop_native = req["native_compute_s"] - req["native_compute_to_first_s"]
    n_steps = max(1, st["generated"] - 1)  # decodes in the loop: the last token is never evaluated
    return {"wall_s": rep["wall_s"], "prompt_tokens": st["prompt_tokens"], "generated": st["generated"],
            "prefill_tps": st["prompt_evaluated"] / st["prefill_s"], "decode_tps": st["generated"] / st["decode_s"],
            "loop_ms_per_token": st["decode_s"] / st["generated"] * 1000,
            "native_ms_per_step": loop_native / n_steps * 1000,
            "n_ctx": None, "text": rep.get("stdout", "")}


def theirs(cli: Path, model: Path, mmproj: Path, image: Path, n_gen: int, threads: int, n_ctx: int,
           env: dict[str, str]) -> dict[str, Any]:
    wall, p = timed_run([str(cli), "-m", str(model), "--mmproj", str(mmproj), "-t", str(threads), "-c", str(n_ctx),
                         "-b", "512", "-ub", "512", "--temp", "0", "-n", str(n_gen), "--perf", "-lv", "4",
                         "--image", str(image), "-p", PROMPT, "--jinja", "--chat-template", PLAIN],
                        env=env, stdout=subprocess.PIPE)
    t = {kind: (float(ms), int(n)) for kind, ms, n in TIMING.findall(p.stderr.decode(errors="replace"))}
    (p_ms, p_n), (e_ms, e_n) = t["prompt eval"], t["eval"]
    return {"wall_s": wall, "prompt_tokens": p_n, "generated": e_n + 1, "prefill_tps": p_n / (p_ms / 1000),
            "decode_tps": e_n / (e_ms / 1000), "eval_ms_per_token": e_ms / e_n,
            "text": p.stdout.decode(errors="replace")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5, help="pairs of runs")
    ap.add_argument("--threads", type=int, default=None, help="default: all cores, 1 on a busy machine")
    ap.add_argument("--quick", action="store_true", help="48 tokens, 2 pairs")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.repeat = 48, 2
    cli = mtmd_cli()
    if cli is None:
        rows = [skipped(k, f"Engine {k.split('.')[1]} tok/s: `gemmapipe chat` vs `llama-mtmd-cli`",
                        "llama-mtmd-cli is not built (.ci/llama-server.sh)", ">= 0.95")
                for k in ("engine.prefill", "engine.decode")]
        write_result("engine", {"machine": machine_info(), "rows": rows})
        print_rows(rows)
        return 0
    from PIL import Image

    model = gemma3_270m()
    mmproj = vision_probe(model)
    image = MEDIA / "engine.png"
    Image.new("RGB", (96, 96), (120, 160, 200)).save(image)
    args.threads = args.threads or bench_threads()
    env = isolated_env("engine")  # chat keeps its conversation under XDG_DATA_HOME
    n_ctx = 4096  # what `gemmapipe chat` loads for this prompt (its default context), given to mtmd-cli too
    ours(model, mmproj, image, 1, args.threads, env)  # warm the page cache
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": []}
    for i in range(args.repeat):
        for side in (("theirs", "ours") if i % 2 == 0 else ("ours", "theirs")):
            r = (ours(model, mmproj, image, args.tokens, args.threads, env) if side == "ours"
                 else theirs(cli, model, mmproj, image, args.tokens, args.threads, n_ctx, env))
            runs[side].append(r)
            print(f"{side:6s} prefill {r['prefill_tps']:7.1f} tok/s ({r['prompt_tokens']} tokens)  decode "
                  f"{r['decode_tps']:6.1f} tok/s ({r['generated']} tokens)  wall {r['wall_s']:.2f} s", flush=True)
    pairs = {k: [o[k] / t[k] for o, t in zip(runs["ours"], runs["theirs"], strict=True)]
             for k in ("prefill_tps", "decode_tps")}
    pairs["wall"] = [t["wall_s"] / o["wall_s"] for o, t in zip(runs["ours"], runs["theirs"], strict=True)]
    med = {f"{side}_{k}": median([r[k] for r in rs]) for side, rs in runs.items()
           for k in ("prefill_tps", "decode_tps", "wall_s")}
    loop_ms = median([r["loop_ms_per_token"] for r in runs["ours"]])
    native_ms = median([r["native_ms_per_step"] for r in runs["ours"]])
    their_ms = median([r["eval_ms_per_token"] for r in runs["theirs"]])
    r_prefill, r_decode, r_wall = (median(pairs[k]) for k in ("prefill_tps", "decode_tps", "wall"))
    o0, t0 = runs["ours"][0], runs["theirs"][0]
    common = f"{args.threads} thread(s), {len(pairs['wall'])} pairs, 270M Q4_K_M + vision probe, 96x96 image"
    rows = [
        row("engine.prefill", "Engine prefill tok/s: `gemmapipe chat -a` vs `llama-mtmd-cli --image`",
            ours=med["ours_prefill_tps"], reference=med["theirs_prefill_tps"], unit="tok/s", ref_label="llama-mtmd-cli",
            ratio=r_prefill, target=">= 0.95", passed=at_least(r_prefill, 0.95),
            note=f"{o0['prompt_tokens']} vs {t0['prompt_tokens']} prompt tokens (mtmd-cli keeps the image wrapper "
                 f"text); {common}"),
        row("engine.decode", "Engine decode tok/s: `gemmapipe chat -a` vs `llama-mtmd-cli --image`",
            ours=med["ours_decode_tps"], reference=med["theirs_decode_tps"], unit="tok/s", ref_label="llama-mtmd-cli",
            ratio=r_decode, target=">= 0.95", passed=at_least(r_decode, 0.95),
            note=f"per token: ours {loop_ms:.2f} ms for the whole loop, of which llama.cpp's calls {native_ms:.2f} ms; "
                 f"mtmd-cli's llama_decode alone {their_ms:.2f} ms (its sampling not counted); {args.tokens} tokens"),
        row("engine.job", "Whole job wall time: `gemmapipe chat -a` vs `llama-mtmd-cli --image`",
            ours=med["ours_wall_s"], reference=med["theirs_wall_s"], unit="s", ref_label="llama-mtmd-cli",
            ratio=r_wall, target="(report)", passed=None,
            note="launch to exit, model load included (mtmd-cli also runs a warm-up decode); " + common),
    ]
    write_result("engine", {
        "machine": machine_info(), "model": model.name, "mmproj": mmproj.name, "threads": args.threads,
        "tokens": args.tokens, "repeat": args.repeat, "n_ctx": n_ctx, "llama_mtmd_cli": str(cli),
        "per_token_ms": {"ours_loop": round(loop_ms, 3), "ours_native": round(native_ms, 3),
                         "ours_outside_native": round(loop_ms - native_ms, 3), "theirs_eval": round(their_ms, 3)},
        "medians": {k: round(v, 3) for k, v in med.items()},
        "pair_ratios": {k: [round(x, 3) for x in v] for k, v in pairs.items()},
        "runs": {side: [{k: v for k, v in r.items() if k != "text"} for r in rs] for side, rs in runs.items()},
        "text": {"ours": o0["text"][:300], "theirs": t0["text"][:300]},
        "rows": rows,
    })
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
