"""Token economy: tokens fed with and without silence skipping and frame de-duplication, and whether the
probe models answer the same either way.

1. Silence skipping (target: >= 25% fewer audio tokens). bench/bench_segment.py runs the VAD
   (core/tasks/segment.py `segment_speech`) over synthetic speech-like audio with ~30% pauses
   (utterances of 0.5-12 s, pauses of 0.6-4.6 s, drifting background noise) and counts the audio
   tokens of its clips against feeding the whole stream. Its figures are taken from
   bench/results/segment.json.
2. Same answers with skipping (Gemma 3 270M + the audio probe projector of tests/models/probe.py,
   whose audio spells text tokens). A recording of probe utterances (the probe's own sentences,
   0.2-0.9 s) separated by pauses of 0.6-1.2 s; each utterance is answered (greedy continuation;
   the 270M is a base model) three times with the real engine: its own span of the recording alone
   (the reference: the speech as recorded, background noise included; the clean utterance's answer
   is recorded too),
   with skipping (core/tasks/transcribe.py `iter_segments` over the VAD's clips, as `gemmapipe
   transcribe` does) and without (the same `clip_messages` for the utterance with all the audio
   around it, up to the middle of the pauses). Same answers = with skipping, every utterance gets
   the answer its speech alone gets. Done twice: pauses of digital silence, and of background
   noise at -60 dBFS.
3. Frame de-duplication (target: >= 50% fewer tokens). A slide-show mp4 made with PyAV (a few
   distinct probe slides, each held for several seconds) goes through core/tasks/video.py
   `build_timeline` with `VideoOptions(dedupe=True)` and `dedupe=False`; tokens per
   `Timeline.tokens(70)` (frames + timestamp text).
4. Same answer with de-duplication: `gemmapipe video SLIDES.mp4 -m GEMMA3_270M --mmproj VISION_PROBE
   --no-audio` with and without `--no-dedupe`.

    python bench/bench_economy.py [--quick] [--hours 1.0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    HERE,
    MEDIA,
    RESULTS,
    at_least,
    audio_probe,
    bench_threads,
    gemma3_270m,
    instrumented,
    isolated_env,
    print_rows,
    row,
    skipped,
    vision_probe,
)
from common import write_result as _write

SR = 16000
FRAME = 640
# Utterances the probe can spell: each is a concatenation of the probe's own texts (tests/models/probe.py
# PROBE_TEXTS), tokenized one by one, so every token is in the default codebook.
UTTERANCES = [(0,), (3,), (2,), (4,), (5,), (1,)]
SLIDES = [0, 3, 2, 4, 5, 1]


def _tokens(model: Path, parts: tuple[int, ...]) -> list[int]:
    from models.probe import PROBE_TEXTS, tokenize

    return [t for i in parts for t in tokenize(model, PROBE_TEXTS[i])]


# ----------------------------------------------------------------------------------- 1. segment bench


def silence_economy(hours: float, repeat: int) -> dict[str, Any]:
    out = RESULTS / "segment.json"
    cmd = [sys.executable, str(HERE / "bench_segment.py"), "--hours", str(hours), "--repeat", str(repeat),
           "--out", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


# ------------------------------------------------------------------------ 2. same answers, skipping


class _Clip:
    def __init__(self, start: int, end: int, samples: np.ndarray) -> None:
        self.start, self.end, self.samples = start, end, samples


def _probe_recording(model: Path, probe: Path, n: int, noise_db: float | None,
                     seed: int = 3) -> tuple[np.ndarray, list[tuple[int, int]], list[np.ndarray]]:
    """Probe utterances separated by 0.6-1.2 s pauses of background noise at `noise_db` dBFS (digital
    silence when None). Utterances start on the 640-sample grid: a probe code is one whole window."""
    from models.probe import read_probe_codebook, tokens_to_waveform

    rng = np.random.default_rng(seed)
    codebook = read_probe_codebook(probe)
    waves = [tokens_to_waveform(_tokens(model, UTTERANCES[i % len(UTTERANCES)]), codebook) for i in range(n)]
    pauses = [FRAME * int(rng.integers(15, 31)) for _ in range(n + 1)]  # 0.6-1.2 s
    total = sum(w.size for w in waves) + sum(pauses)
    x = np.zeros(total, dtype=np.float32)
    if noise_db is not None:
        x += (rng.standard_normal(total) * 10 ** (noise_db / 20)).astype(np.float32)
    spans = []
    pos = pauses[0]
    for i, w in enumerate(waves):
        x[pos:pos + w.size] += w
        spans.append((pos, pos + w.size))
        pos += w.size + pauses[i + 1]
    return x, spans, waves


def silence_answers(model: Path, threads: int, n: int, noise_db: float | None) -> dict[str, Any]:
    """Per utterance, three answers of the real engine (greedy): to the utterance's audio alone (the
    reference: what the speech says); with skipping (core/tasks/transcribe.py `iter_segments` over
    the VAD's clips, as `gemmapipe transcribe` does); without skipping (the same `clip_messages`
    for the utterance with all the audio around it, up to the middle of the pauses, fed as is)."""
    from gemmapipe.core.engine.base import EngineConfig, GenerateOptions
    from gemmapipe.core.engine.local import LocalEngine
    from gemmapipe.core.model import resolve
    from gemmapipe.core.tasks.segment import segment_speech
    from gemmapipe.core.tasks.transcribe import TranscribeOptions, clip_messages, iter_segments, n_ctx_for

    probe = audio_probe(model)
    x, spans, waves = _probe_recording(model, probe, n, noise_db)
    # the probe codes are synthetic sounds, speech only to a level detector: the energy one
    clips = list(segment_speech((_block(x, i) for i in range(0, x.size, SR)), vad="energy"))
    bounds = [0] + [(a[1] + b[0]) // 2 for a, b in itertools.pairwise(spans)] + [x.size]

    options = TranscribeOptions(generate=GenerateOptions(max_tokens=8))
    pair = resolve(model, probe, needs={"audio"})
    with LocalEngine(EngineConfig(model=model, mmproj=probe, threads=threads), pair,
                     n_ctx=n_ctx_for(options)) as eng:
        templated = bool(eng.template)

        def ask(samples: np.ndarray) -> str:
            text = "".join(eng.generate(clip_messages(samples, options, templated=templated), options.generate))
            return " ".join(text.split())

        alone = [ask(x[a:b]) for a, b in spans]  # the speech as recorded (noise and all), nothing around it
        clean = [ask(w) for w in waves]
        ev0 = eng.stats.total_prompt_evaluated
        t = time.perf_counter()
        segs = list(iter_segments(iter(clips), lambda: eng, options, templated=lambda e: templated))
        t_skip, ev_skip = time.perf_counter() - t, eng.stats.total_prompt_evaluated - ev0
        t = time.perf_counter()
        without = [ask(x[a:b]) for a, b in itertools.pairwise(bounds)]
        t_full, ev_full = time.perf_counter() - t, eng.stats.total_prompt_evaluated - ev0 - ev_skip

    with_skip = [" | ".join(g.text for g in segs if g.start_ms * SR // 1000 < e and g.end_ms * SR // 1000 > s)
                 for s, e in spans]
    tokens_skip = sum(-(-(c.end - c.start) // FRAME) for c in clips)
    tokens_full = -(-x.size // FRAME)
    speech = sum(e - s for s, e in spans)
    return {
        "pauses": "digital silence" if noise_db is None else f"noise at {noise_db:g} dBFS",
        "utterances": len(spans), "audio_s": round(x.size / SR, 2), "pause_fraction": round(1 - speech / x.size, 3),
        "clips_with_skipping": len(clips), "audio_tokens_with_skipping": tokens_skip,
        "audio_tokens_without": tokens_full, "saved_fraction": round(1 - tokens_skip / tokens_full, 4),
        "prompt_tokens_evaluated_with": ev_skip, "prompt_tokens_evaluated_without": ev_full,
        "model_s_with": round(t_skip, 2), "model_s_without": round(t_full, 2),
        "same_with_skipping": sum(p == q for p, q in zip(with_skip, alone, strict=True)),
        "same_without_skipping": sum(p == q for p, q in zip(without, alone, strict=True)),
        "same_as_clean_speech_with_skipping": sum(p == q for p, q in zip(with_skip, clean, strict=True)),
        "answers_clean_speech": clean, "answers_speech_alone": alone, "answers_with_skipping": with_skip,
        "answers_without_skipping": without,
    }


def _block(x: np.ndarray, i: int) -> Any:
    from gemmapipe.core.media.audio import AudioBlock

    return AudioBlock(i, x[i:i + SR])


# ----------------------------------------------------------------------------- 3./4. slide show


def make_slideshow(path: Path, model: Path, probe: Path, slides: int, hold_s: int, fps: int = 5) -> Path:
    import av

    from models.probe import read_probe_codebook, tokens_to_image

    if path.exists():
        return path
    codebook = read_probe_codebook(probe)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 480, 336, "yuv420p"
        s.time_base = Fraction(1, fps)
        s.codec_context.options = {"crf": "18", "preset": "veryfast"}
        i = 0
        for k in range(slides):
            img = tokens_to_image(_tokens(model, (SLIDES[k % len(SLIDES)],)), codebook)
            for _ in range(hold_s * fps):
                f = av.VideoFrame.from_ndarray(img, format="rgb24")
                f.pts, f.time_base = i, Fraction(1, fps)
                c.mux(s.encode(f))
                i += 1
        c.mux(s.encode(None))
    tmp.replace(path)
    return path


def dedupe_tokens(video: Path) -> dict[str, Any]:
    from gemmapipe.core.media.source import open_input
    from gemmapipe.core.tasks.video import VideoOptions, build_timeline

    out: dict[str, Any] = {}
    for dedupe in (True, False):
        with open_input(str(video)) as src:
            t = time.perf_counter()
            tl = build_timeline(src, VideoOptions(dedupe=dedupe, audio=False))
            dt = time.perf_counter() - t
        out["with" if dedupe else "without"] = {"frames": tl.frames_total, "dropped": tl.frames_dropped,
                                                "tokens": tl.tokens(70), "saved_tokens": tl.saved_tokens(70),
                                                "build_s": round(dt, 3)}
    out["saved_fraction"] = round(1 - out["with"]["tokens"] / out["without"]["tokens"], 4)
    return out


def dedupe_answers(video: Path, model: Path, probe: Path, threads: int) -> dict[str, Any]:
    env = isolated_env("economy")
    res: dict[str, Any] = {}
    for dedupe in (True, False):
        args = ["video", "-m", str(model), "--mmproj", str(probe), "-t", str(threads), "--no-audio", "--no-cache",
                "--max-tokens", "12", "-f", "json", "-p", "What do the slides say?", str(video)]
        if not dedupe:
            args.insert(-1, "--no-dedupe")
        rep = instrumented(args, env=env, report=MEDIA / "economy-report.json", stdout=subprocess.PIPE)
        doc = json.loads(rep["stdout"])
        st = rep["requests"][0]["stats"]
        res["with" if dedupe else "without"] = {
            "answer": doc["text"], "prompt_tokens": st["prompt_tokens"], "prefill_s": round(st["prefill_s"], 3),
            "frames_dropped": doc["meta"].get("frames_dropped"), "wall_s": round(rep["wall_s"], 2)}
    res["same"] = res["with"]["answer"] == res["without"]["answer"]
    return res


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 minutes of VAD audio, 2 utterances, 3 slides")
    ap.add_argument("--hours", type=float, default=None, help="hours of audio for bench_segment (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="default: all cores, 1 on a busy machine")
    args = ap.parse_args()
    args.threads = args.threads or bench_threads()
    hours = args.hours or (0.1 if args.quick else 1.0)
    n_utt, n_slides, hold = (2, 3, 10) if args.quick else (4, 6, 20)
    rows = []
    result: dict[str, Any] = {"quick": args.quick}

    seg = silence_economy(hours, 1 if args.quick else 2)
    result["silence"] = {k: seg[k] for k in ("audio_s", "speech_fraction_truth", "speech_fraction_clips",
                                             "tokens_without_skipping", "tokens_with_skipping",
                                             "tokens_saved_fraction", "sample_recall", "utterances_missed")}
    saved = seg["tokens_saved_fraction"]
    audio_min = seg["audio_s"] / 60
    rows.append(row("economy.silence", "Audio tokens per minute, silence skipping vs none (speech with "
                    f"{1 - seg['speech_fraction_truth']:.0%} pauses)",
                    ours=seg["tokens_with_skipping"] / audio_min, reference=seg["tokens_without_skipping"] / audio_min,
                    unit="tok/min", ref_label="no skipping", ratio=saved, target=">= 25% fewer",
                    passed=at_least(saved, 0.25),
                    note=f"ratio = fraction saved; speech recall {seg['sample_recall']:.3f}, "
                         f"{seg['utterances_missed']} utterances missed"))

    model = gemma3_270m()
    from gemmapipe.core.engine.native import quiet_native_logs

    quiet_native_logs(False)
    print("silence skipping on the audio probe ...", flush=True)
    for noise_db in (None, -60.0):
        sa = silence_answers(model, args.threads, n_utt, noise_db)
        kind = "zero" if noise_db is None else "noise"
        result[f"silence_probe_{kind}"] = sa
        rows.append(row(f"economy.silence_answers_{kind}", "Same transcript with/without skipping, 270M + audio "
                        f"probe, pauses of {sa['pauses']}",
                        ours=sa["audio_tokens_with_skipping"], reference=sa["audio_tokens_without"], unit="tokens",
                        ref_label="no skipping", ratio=sa["saved_fraction"], target="same answers",
                        passed=sa["same_with_skipping"] == sa["utterances"],
                        note=f"answer as to the speech alone: {sa['same_with_skipping']}/{sa['utterances']} with "
                             f"skipping, {sa['same_without_skipping']}/{sa['utterances']} without "
                             f"({sa['same_as_clean_speech_with_skipping']}/{sa['utterances']} as to the clean "
                             "speech with skipping); "
                             f"{sa['pause_fraction']:.0%} pauses; ratio = fraction saved"))

    vprobe = vision_probe(model)
    video = make_slideshow(MEDIA / f"slides_{n_slides}x{hold}s.mp4", model, vprobe, n_slides, hold)
    short = make_slideshow(MEDIA / "slides_3x4s.mp4", model, vprobe, 3, 4)
    dd = dedupe_tokens(video)
    result["dedupe"] = dd
    minutes = dd["without"]["frames"] / 60
    rows.append(row("economy.dedupe", "Video tokens per minute, frame de-dupe vs --no-dedupe "
                    f"({n_slides} slides x {hold} s)",
                    ours=dd["with"]["tokens"] / minutes, reference=dd["without"]["tokens"] / minutes,
                    unit="tok/min", ref_label="--no-dedupe", ratio=dd["saved_fraction"], target=">= 50% fewer",
                    passed=at_least(dd["saved_fraction"], 0.5),
                    note=f"ratio = fraction saved; {dd['with']['dropped']}/{dd['with']['frames']} frames dropped"))
    print("slide show on the vision probe ...", flush=True)
    try:
        da = dedupe_answers(short, model, vprobe, args.threads)
        result["dedupe_probe"] = da
        rows.append(row("economy.dedupe_answers",
                        "Same video answer with/without de-dupe, 270M + vision probe (3 slides x 4 s)",
                        ours=da["with"]["prompt_tokens"], reference=da["without"]["prompt_tokens"], unit="tokens",
                        ref_label="--no-dedupe", ratio=1 - da["with"]["prompt_tokens"] / da["without"]["prompt_tokens"],
                        target="same answer", passed=da["same"],
                        note=f"prefill {da['with']['prefill_s']} s vs {da['without']['prefill_s']} s"
                             + ("" if da["same"] else
                                f"; answers: {da['with']['answer']!r} vs {da['without']['answer']!r}")))
    except RuntimeError as exc:
        result["dedupe_probe_error"] = str(exc)
        rows.append(skipped("economy.dedupe_answers", "Same video answer with and without de-dupe",
                            f"gemmapipe video failed: {str(exc)[:200]}", "same answer"))
    _write("economy", {**result, "rows": rows})
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
