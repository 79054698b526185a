"""Engine overhead: `gemmapipe chat` vs a minimal native llama.cpp loop on the same GGUF, same prompt,
same thread count, context and batch sizes, in the same run (target: ours/native >= 0.95 for both
prefill and decode tokens/s).

- ours: `gemmapipe.cli.app.run(["chat", "-m", MODEL, "-t", T, "--max-tokens", N, PROMPT])` in this
  process, exactly what the console script runs (template rendering, tokenization, KV-prefix
  bookkeeping, sampler chain, detokenization, writing each piece to stdout, which goes to a buffer
  here). The engine's own stats give prefill_s (from the call to the last prompt logits) and
  decode_s (from the first sample to the last token handed out).
- native: llama.cpp's C API through llama_cpp's ctypes: tokenize, one `llama_decode` of the whole
  prompt, then `llama_sampler_sample` (greedy chain) + `llama_decode` one token at a time. No
  detokenization, no Python around it beyond the loop itself.

Within each of our runs, the time spent inside llama.cpp's own calls (`llama_decode`, sampling) is
measured too: its share of our prefill and decode time is the ratio this run would show against a
native loop running at exactly the same speed, a figure that other load on the machine hardly
moves (it slows the native calls and the Python around them alike).

Runs come in adjacent pairs (one of each side, the order alternating from pair to pair), so both
sides of a pair see about the same load from the rest of the machine; the ratio reported is the
median of the pairs' ratios, the tokens/s shown are the medians of each side (the best runs are in
the JSON too). Extra pairs that stop after one token add prefill samples (a prefill takes ~2 s).
Both sides must produce the same greedy text.

    python bench/bench_engine.py [--tokens 128] [--repeat 6] [--prefill-pairs 8] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import at_least, bench_threads, gemma3_270m, isolated_env, median, print_rows, row, write_result

# ~420 tokens with Gemma's tokenizer: long enough for a stable prefill figure, one 512-token batch.
PROMPT = ("The history of the city begins with a small settlement on the river, where traders met to "
          "exchange grain, salt and cloth. Over the centuries it grew into ") * 12


def _quiet_logs() -> None:
    from gemmapipe.core.engine.native import quiet_native_logs

    quiet_native_logs(False)  # the same null log callback gemmapipe installs, so neither side pays for logs


def native(model_path: str, prompt: str, n_gen: int, threads: int, n_ctx: int, n_batch: int) -> dict[str, Any]:
    import llama_cpp as L

    _quiet_logs()
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(model_path.encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, n_batch, n_batch, 1
    cp.n_threads = cp.n_threads_batch = threads
    cp.flash_attn_type = -1  # auto, as gemmapipe's default
    cp.no_perf = True
    ctx = L.llama_init_from_model(model, cp)
    vocab = L.llama_model_get_vocab(model)
    data = prompt.encode()
    buf = (L.llama_token * (len(data) + 8))()
    n = L.llama_tokenize(vocab, data, len(data), buf, len(data) + 8, True, True)
    t0 = time.perf_counter()
    rc = L.llama_decode(ctx, L.llama_batch_get_one(buf, n))
    t_prefill = time.perf_counter() - t0
    assert rc == 0, rc
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
    out: list[int] = []
    tok = (L.llama_token * 1)()
    t0 = time.perf_counter()
    for _ in range(n_gen):
        t = L.llama_sampler_sample(chain, ctx, -1)
        if L.llama_vocab_is_eog(vocab, t):
            break
        out.append(t)
        tok[0] = t
        L.llama_decode(ctx, L.llama_batch_get_one(tok, 1))
    t_decode = time.perf_counter() - t0
    text = b""
    piece = ctypes.create_string_buffer(256)
    for t in out:
        k = L.llama_token_to_piece(vocab, t, piece, 256, 0, False)
        text += piece.raw[:k]
    L.llama_sampler_free(chain)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return {"prompt_tokens": n, "prefill_tps": n / t_prefill, "generated": len(out), "decode_tps": len(out) / t_decode,
            "text": text.decode("utf-8", "replace")}


class _NativeClock:
    """Time spent inside llama_decode and llama_sampler_sample (attributes of the binding module the
    engine looks up at call time), to split our own run into native work and everything around it."""

    NAMES = ("llama_decode", "llama_sampler_sample")

    def __init__(self) -> None:
        self.total = 0.0
        self._orig: dict[str, Any] = {}

    def __enter__(self) -> _NativeClock:
        llama = self._module()
        for name in self.NAMES:
            fn = self._orig[name] = getattr(llama, name)

            def timed(*a: Any, _fn: Any = fn) -> Any:
                t = time.perf_counter()
                try:
                    return _fn(*a)
                finally:
                    self.total += time.perf_counter() - t

            setattr(llama, name, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        llama = self._module()
        for name, fn in self._orig.items():
            setattr(llama, name, fn)

    @staticmethod
    def _module() -> Any:
        from _instrument import binding_modules

        return binding_modules()[0]


def ours(model_path: str, prompt: str, n_gen: int, threads: int) -> dict[str, Any]:
    """`gemmapipe chat` in this process; the engine it built is kept to read its stats, and the time
    spent in native calls during its prefill and its decode loop is measured within the same run."""
    from gemmapipe.cli.app import run
    from gemmapipe.core.engine.local import LocalEngine
    from gemmapipe.core.session import register_engine_factory

    made: list[LocalEngine] = []
    clock = _NativeClock()
    split: dict[str, float] = {}

    def factory(*args: Any, **kwargs: Any) -> LocalEngine:
        eng = LocalEngine(*args, **kwargs)
        generate = eng.generate

        def timed_generate(*a: Any, **k: Any) -> Any:
            n0 = clock.total
            it = generate(*a, **k)
            split["prefill_native"] = clock.total - n0
            n1 = clock.total

            def stream() -> Any:
                yield from it
                split["decode_native"] = clock.total - n1

            return stream()

        eng.generate = timed_generate  # type: ignore[method-assign]
        made.append(eng)
        return eng

    old = register_engine_factory(factory)
    out = io.StringIO()
    try:
        with clock, contextlib.redirect_stdout(out):
            rc = run(["chat", "-m", model_path, "-t", str(threads), "--max-tokens", str(n_gen), prompt])
    finally:
        register_engine_factory(old)
    if rc != 0:
        raise RuntimeError(f"gemmapipe chat exited {rc}")
    eng = made[-1]
    s = eng.stats
    return {"prompt_tokens": s.prompt_tokens, "prefill_tps": s.prompt_evaluated / s.prefill_s,
            "generated": s.generated, "decode_tps": s.generated / s.decode_s, "text": out.getvalue().rstrip("\n"),
            "n_ctx": eng.n_ctx, "n_batch": eng.n_batch,
            "prefill_native_share": split.get("prefill_native", 0.0) / s.prefill_s,
            "decode_native_share": split.get("decode_native", 0.0) / s.decode_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=6, help="pairs of runs")
    ap.add_argument("--prefill-pairs", type=int, default=8, help="extra pairs that stop after one token")
    ap.add_argument("--threads", type=int, default=None, help="default: all cores, 1 on a busy machine")
    ap.add_argument("--model", default=None)
    ap.add_argument("--quick", action="store_true", help="48 tokens, 3 + 2 pairs")
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.repeat, args.prefill_pairs = 48, 3, 2
    model = args.model or str(gemma3_270m())
    args.threads = args.threads or bench_threads()
    os.environ.update(isolated_env("engine"))  # chat keeps its conversation under XDG_DATA_HOME
    # warm the page cache and learn the context size chat picks, so the native loop gets the same one
    probe = ours(model, "Hi", 1, args.threads)
    n_ctx, n_batch = probe["n_ctx"], probe["n_batch"]
    def pair(i: int, n_gen: int, into: dict[str, list[dict[str, Any]]]) -> None:
        order = ("native", "ours") if i % 2 == 0 else ("ours", "native")
        for side in order:
            if side == "native":
                r = native(model, PROMPT, n_gen, args.threads, n_ctx, n_batch)
            else:
                r = ours(model, PROMPT, n_gen, args.threads)
            into[side].append(r)
            print(f"{side:6s} prefill {r['prefill_tps']:7.1f} tok/s ({r['prompt_tokens']} tokens)  "
                  f"decode {r['decode_tps']:6.1f} tok/s ({r['generated']} tokens)", flush=True)

    runs: dict[str, list[dict[str, Any]]] = {"native": [], "ours": []}
    for i in range(args.repeat):
        pair(i, args.tokens, runs)
    # more prefill samples: pairs that stop after one token (a prefill takes ~2 s, so one pair is noisy)
    extra: dict[str, list[dict[str, Any]]] = {"native": [], "ours": []}
    for i in range(args.prefill_pairs):
        pair(i, 1, extra)
    med = {f"{side}_{k}": median([r[k] for r in rs]) for side, rs in runs.items()
           for k in ("prefill_tps", "decode_tps")}
    med.update({f"{side}_prefill_tps": median([r["prefill_tps"] for r in rs + extra[side]])
                for side, rs in runs.items()})
    best = {f"{side}_{k}": max(r[k] for r in rs) for side, rs in runs.items() for k in ("prefill_tps", "decode_tps")}
    pairs = {k: [o[f"{k}_tps"] / n[f"{k}_tps"] for o, n in zip(runs["ours"], runs["native"], strict=True)]
             for k in ("prefill", "decode")}
    pairs["prefill"] += [o["prefill_tps"] / n["prefill_tps"]
                         for o, n in zip(extra["ours"], extra["native"], strict=True)]
    share = {k: median([r[f"{k}_native_share"] for r in runs["ours"]]) for k in ("prefill", "decode")}
    share["prefill"] = median([r["prefill_native_share"] for r in runs["ours"] + extra["ours"]])
    same_text = runs["native"][0]["text"].strip() == runs["ours"][0]["text"].strip()
    same_prompt = runs["native"][0]["prompt_tokens"] == runs["ours"][0]["prompt_tokens"]
    r_prefill, r_decode = median(pairs["prefill"]), median(pairs["decode"])
    per_token_ms = (1 / med["ours_decode_tps"] - 1 / med["native_decode_tps"]) * 1000
    note = "" if same_text else "generated text differs from the native loop!"
    rows = [
        row("engine.prefill", "Engine prefill tok/s: `gemmapipe chat` vs native llama.cpp loop",
            ours=med["ours_prefill_tps"], reference=med["native_prefill_tps"], unit="tok/s", ref_label="native loop",
            ratio=r_prefill, target=">= 0.95", passed=at_least(r_prefill, 0.95),
            note=f"median of {len(pairs['prefill'])} paired runs; {runs['ours'][0]['prompt_tokens']}-token prompt, "
                 f"{args.threads} thread(s); within our runs "
                 f"{share['prefill']:.1%} of prefill time is in llama.cpp"),
        row("engine.decode", "Engine decode tok/s: `gemmapipe chat` vs native llama.cpp loop",
            ours=med["ours_decode_tps"], reference=med["native_decode_tps"], unit="tok/s", ref_label="native loop",
            ratio=r_decode, target=">= 0.95", passed=at_least(r_decode, 0.95),
            note=(note or f"same greedy text; within our runs {share['decode']:.1%} of the decode loop is in "
                  f"llama.cpp ({per_token_ms:+.2f} ms/token vs the native loop)")),
    ]
    write_result("engine", {
        "model": Path(model).name, "threads": args.threads, "tokens": args.tokens, "repeat": args.repeat,
        "n_ctx": n_ctx, "n_batch": n_batch, "same_text": same_text, "same_prompt_tokens": same_prompt,
        "per_token_overhead_ms": round(per_token_ms, 3),
        "native_share_within_ours": {k: round(v, 4) for k, v in share.items()},
        "medians": {k: round(v, 2) for k, v in med.items()},
        "best": {k: round(v, 2) for k, v in best.items()},
        "pair_ratios": {k: [round(x, 3) for x in v] for k, v in pairs.items()},
        "ratio_of_best": {"prefill": round(best["ours_prefill_tps"] / best["native_prefill_tps"], 3),
                          "decode": round(best["ours_decode_tps"] / best["native_decode_tps"], 3)},
        "runs": {side: [{k: v for k, v in r.items() if k != "text"} for r in rs] for side, rs in runs.items()},
        "prefill_only_runs": {side: [{k: v for k, v in r.items() if k != "text"} for r in rs]
                              for side, rs in extra.items()},
        "text": {"native": runs["native"][0]["text"][:300], "ours": runs["ours"][0]["text"][:300]},
        "rows": rows,
    })
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
