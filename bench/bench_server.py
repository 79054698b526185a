"""gemmapipe against llama.cpp's own tools: `gemmapipe describe --server` on `llama-server -np 4` with
-j 1 and -j 4 over 20 images, and gemmapipe's local engine against `llama-mtmd-cli` on the same image
and audio jobs. Wall time, prefill and decode tokens/s (the server's and mtmd-cli's own timings, the
local engine's stats), in one run.

Model: the real Gemma 3 270M Q4_K_M with the vision and audio probe projectors of tests/models
(gemma4uv/gemma4ua on a real 270M: real compute, synthetic media). It has no chat template, so the
server and mtmd-cli get the plain template the tests use. The binaries are those of
`.ci/llama-server.sh` (GEMMAPIPE_LLAMA_SERVER, or built/found by running the script). One run on a
shared machine: the figures are noisy, read them as orders of magnitude.

    python bench/bench_server.py [--images 20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    MEDIA,
    ROOT,
    bench_threads,
    gemma3_270m,
    gemmapipe_exe,
    instrumented,
    isolated_env,
    machine_info,
    print_rows,
    row,
    timed_run,
    write_result,
)

MAX_TOKENS = 32
PROMPT = "Describe the picture."
PLAIN = ("{%- for message in messages -%}{%- if message.content is string -%}{{ message.content }}"
         "{%- else -%}{%- for part in message.content -%}{{ part.text }}{%- endfor -%}{%- endif -%}{%- endfor -%}")
TIMING = re.compile(r"(prompt eval|eval) time =\s+([\d.]+) ms /\s+(\d+) (?:tokens|runs)")


def server_binary() -> Path:
    path = os.environ.get("GEMMAPIPE_LLAMA_SERVER")
    if not path:
        path = subprocess.run(["bash", str(ROOT / ".ci" / "llama-server.sh")], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
    return Path(path)


def av_probe(model: Path) -> Path:
    from common import _cached, _probe_key, audio_probe, vision_probe

    from models import probe

    v, a = vision_probe(model), audio_probe(model)
    return _cached("probe-av-v", _probe_key(model), lambda d: probe.build_av_probe(d, v, a)) / "probe-av.gguf"


def make_media(folder: Path, n: int, model: Path, mmproj: Path) -> tuple[list[Path], Path]:
    import numpy as np
    import soundfile as sf
    from PIL import Image

    from models.probe import read_probe_codebook, tokenize, tokens_to_waveform

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    images = []
    for i in range(n):
        p = folder / f"img{i:02d}.png"
        if not p.exists():
            x = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            Image.fromarray(x).save(p)
        images.append(p)
    wav = folder / "spoken.wav"
    if not wav.exists():
        cb = read_probe_codebook(mmproj)
        words = tokenize(model, "The quick brown fox jumps over the lazy dog.") * 8  # ~3.5 s of audio
        sf.write(wav, tokens_to_waveform(words, cb), 16000, subtype="FLOAT")
    return images, wav


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(binary: Path, model: Path, mmproj: Path, template: Path, threads: int, log: Path
                 ) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    args = [str(binary), "-m", str(model), "--mmproj", str(mmproj), "--host", "127.0.0.1", "--port", str(port),
            "-np", "4", "-c", str(4 * 2048), "-t", str(threads), "--no-webui", "--chat-template-file", str(template)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"llama-server did not start:\n{log.read_text(errors='replace')[-2000:]}")


def timings(text: str) -> dict[str, float]:
    """Sums of llama.cpp's `prompt eval time = X ms / N tokens` and `eval time = ...` lines."""
    out = {"prompt_ms": 0.0, "prompt_n": 0.0, "eval_ms": 0.0, "eval_n": 0.0}
    for kind, ms, n in TIMING.findall(text):
        key = "prompt" if kind == "prompt eval" else "eval"
        out[f"{key}_ms"] += float(ms)
        out[f"{key}_n"] += float(n)
    return out


def rate(n: float, ms: float) -> float | None:
    return n / (ms / 1000) if ms > 0 else None


def bench_server(binary: Path, model: Path, mmproj: Path, template: Path, images: list[Path], threads: int,
                 env: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    log = MEDIA / "llama-server-bench.log"
    proc, url = start_server(binary, model, mmproj, template, threads, log)
    res: dict[str, Any] = {}
    try:
        base = [*gemmapipe_exe(), "describe", "--server", url, "-p", PROMPT, "--max-tokens", str(MAX_TOKENS),
                "-f", "jsonl"]
        timed_run([*base, str(images[0])], env=env)  # warm
        for jobs in (1, 4):
            before = log.stat().st_size
            wall, p = timed_run([*base, "-j", str(jobs), *map(str, images)], env=env, stdout=subprocess.PIPE)
            docs = [json.loads(x) for x in p.stdout.decode().splitlines()]
            with open(log, "rb") as fh:
                fh.seek(before)
                t = timings(fh.read().decode(errors="replace"))
            res[f"j{jobs}"] = {"wall_s": round(wall, 3), "answers": len(docs),
                               "prompt_tok_s": rate(t["prompt_n"], t["prompt_ms"]),
                               "decode_tok_s": rate(t["eval_n"], t["eval_ms"]), **t}
    finally:
        proc.terminate()
        proc.wait(20)
    j1, j4 = res["j1"], res["j4"]
    rows = [row("server.describe_j4", f"Describe {len(images)} images on `llama-server -np 4`: -j 4 vs -j 1",
                ours=j4["wall_s"], reference=j1["wall_s"], unit="s", ref_label="-j 1",
                ratio=j1["wall_s"] / j4["wall_s"], target="(report)",
                note=f"server prefill {j1['prompt_tok_s'] or 0:.0f} / {j4['prompt_tok_s'] or 0:.0f} tok/s, decode "
                     f"{j1['decode_tok_s'] or 0:.1f} / {j4['decode_tok_s'] or 0:.1f} tok/s (-j 1 / -j 4, per request); "
                     f"{threads} thread(s)")]
    return res, rows


def bench_local(binary: Path, model: Path, mmproj: Path, template: Path, image: Path, wav: Path, threads: int,
                env: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cli = binary.with_name("llama-mtmd-cli")
    res: dict[str, Any] = {}
    rows = []
    for kind, media, prompt in (("image", image, PROMPT), ("audio", wav, " the")):
        rep = instrumented(["chat", "-m", str(model), "--mmproj", str(mmproj), "-t", str(threads), "--max-tokens",
                            str(MAX_TOKENS), "-a", str(media), prompt], env=env, report=MEDIA / "server-report.json",
                           stdout=subprocess.PIPE)
        st = rep["requests"][0]["stats"]
        ours = {"wall_s": round(rep["wall_s"], 3), "prompt_tokens": st["prompt_tokens"], "generated": st["generated"],
                "prompt_tok_s": rate(st["prompt_evaluated"], st["prefill_s"] * 1000),
                "decode_tok_s": rate(st["generated"], st["decode_s"] * 1000)}
        wall, p = timed_run([str(cli), "-m", str(model), "--mmproj", str(mmproj), "-t", str(threads), "--temp", "0",
                             "-n", str(MAX_TOKENS), "--perf", "-lv", "4", f"--{kind}", str(media), "-p", prompt,
                             "--jinja", "--chat-template", template.read_text()], env=env, stdout=subprocess.PIPE)
        t = timings(p.stderr.decode(errors="replace"))
        theirs = {"wall_s": round(wall, 3), "prompt_tokens": t["prompt_n"], "generated": t["eval_n"],
                  "prompt_tok_s": rate(t["prompt_n"], t["prompt_ms"]), "decode_tok_s": rate(t["eval_n"], t["eval_ms"])}
        res[kind] = {"gemmapipe": ours, "mtmd_cli": theirs}
        rows.append(row(f"server.local_{kind}", f"One {kind} question, 270M + probe: `gemmapipe chat -a` vs "
                        "`llama-mtmd-cli`", ours=ours["wall_s"], reference=theirs["wall_s"], unit="s",
                        ref_label="llama-mtmd-cli", ratio=theirs["wall_s"] / ours["wall_s"], target="(report)",
                        note=f"prefill {ours['prompt_tok_s'] or 0:.0f} vs {theirs['prompt_tok_s'] or 0:.0f} tok/s "
                             f"({ours['prompt_tokens']} vs {theirs['prompt_tokens']:.0f} prompt tokens: mtmd-cli keeps "
                             f"the <|image>/<|audio> wrapper text); decode {ours['decode_tok_s'] or 0:.1f} vs "
                             f"{theirs['decode_tok_s'] or 0:.1f} tok/s"))
    return res, rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="default: all cores, 1 on a busy machine")
    ap.add_argument("--quick", action="store_true", help="8 images")
    args = ap.parse_args()
    if args.quick:
        args.images = 8
    threads = args.threads or bench_threads()
    binary = server_binary()
    model = gemma3_270m()
    mmproj = av_probe(model)
    images, wav = make_media(MEDIA / "server", args.images, model, mmproj)
    template = MEDIA / "plain.jinja"
    template.write_text(PLAIN)
    env = isolated_env("server")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    server, rows = bench_server(binary, model, mmproj, template, images, threads, env)
    local, more = bench_local(binary, model, mmproj, template, images[0], wav, threads, env)
    rows += more
    write_result("server", {"machine": machine_info(), "images": args.images, "max_tokens": MAX_TOKENS,
                            "threads": threads,
                            "llama_server": " ".join((version.stdout + version.stderr).split()),
                            "server": server, "local": local, "rows": rows})
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
