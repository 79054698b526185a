"""Benchmark the voice activity segmenters: the energy detector on one hour of synthetic 16 kHz
speech-like audio, and both detectors (silero, the default, and energy) side by side on the recorded
test track (tests/data/vad_track: real speech, music, sound effects, noise).

Recorded track, per detector: non-speech time fed (seconds and fraction of the non-speech time),
clips holding no speech, speech covered, audio tokens per minute of the track, all on the clips as
fed (after the quiet-edge trim); detector time per hour of audio, timed on the track tiled to
--track-minutes (Silero's session is created before the clock starts: model load excluded).

The audio: utterances (0.5-12 s) made of syllables (a harmonic voice with a moving pitch under a
syllable envelope, some with a fricative burst of high-passed noise in front, gaps of up to 250 ms
inside an utterance) separated by pauses of 0.6-4.6 s (~30% of the time), each utterance at its
own loudness (15 dB spread), over -56 dBFS background noise whose level drifts by +-3 dB, with a
little mains hum. The truth is the utterance spans.

Reports the seconds spent in `segment_speech` (best of --repeat runs; the audio is generated
beforehand and not counted),
clips per second of wall time, the fraction of samples marked speech against the truth, sample
recall/precision, and the token economy: audio tokens fed with and without silence skipping.
Writes bench/results/segment.json.

    python bench/bench_segment.py [--hours 1] [--block-s 1.0] [--seed 0] [--repeat 3] [--track-minutes 10]

The synthetic hour is speech only to a level detector (harmonic "syllables"), so it runs the energy
detector; Silero rightly hears no speech in it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gemmapipe.core.tasks.segment import FRAME, SAMPLE_RATE, segment_speech

SR = SAMPLE_RATE


@dataclass
class Block:
    offset: int
    samples: np.ndarray


def _syllable(rng: np.random.Generator) -> np.ndarray:
    dur = rng.uniform(0.12, 0.32)
    n = int(dur * SR)
    t = np.arange(n) / SR
    f0 = rng.uniform(95, 230) * (1 + rng.uniform(-0.15, 0.15) * t / dur)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 9))
    env = np.sin(np.pi * np.arange(n) / n) ** 1.5
    level = 10 ** (rng.uniform(-24, -12) / 20)
    syl = level * env * voice / 2.0
    if rng.random() < 0.35:  # fricative in front: high-passed noise, ~15 dB under the vowel
        m = int(rng.uniform(0.05, 0.12) * SR)
        noise = np.diff(rng.standard_normal(m + 1))
        fr = level * 10 ** (-15 / 20) * noise * np.hanning(m)
        syl = np.concatenate((fr, syl))
    return syl


def _utterance(rng: np.random.Generator, dur: float) -> np.ndarray:
    parts: list[np.ndarray] = []
    total = 0
    while total < dur * SR:
        syl = _syllable(rng)
        gap = np.zeros(int(rng.choice([rng.uniform(0.02, 0.08), rng.uniform(0.1, 0.25)], p=[0.8, 0.2]) * SR))
        parts += [syl, gap]
        total += syl.size + gap.size
    return np.concatenate(parts[:-1])  # no trailing gap: the utterance ends with a syllable


def make_audio(seconds: float, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Speech-like audio and its truth: [start, end) sample spans of the utterances."""
    rng = np.random.default_rng(seed)
    total = int(seconds * SR)
    x = rng.standard_normal(total, dtype=np.float32)
    x *= np.float32(10 ** (-56 / 20))
    t = np.arange(total, dtype=np.float32) / np.float32(SR)
    # the background breathes: +-3 dB over ~20 s
    x *= 10 ** (np.float32(0.15) * np.sin(np.float32(2 * np.pi / 20) * t + np.float32(rng.uniform(0, 6.3))))
    x += np.float32(10 ** (-66 / 20)) * np.sin(np.float32(2 * np.pi * 50) * t)
    del t
    # each utterance at its own loudness (a 15 dB spread: near and far talkers)
    pool = [_utterance(rng, d) * 10 ** (rng.uniform(-15, 0) / 20) for d in rng.uniform(0.5, 12, 160)]
    truth: list[tuple[int, int]] = []
    pos = int(rng.uniform(0.5, 3) * SR)
    while True:
        utt = pool[int(rng.integers(len(pool)))]
        if pos + utt.size > total:
            break
        x[pos : pos + utt.size] += utt.astype(np.float32)
        truth.append((pos, pos + utt.size))
        pos += utt.size + int(rng.uniform(0.6, 4.6) * SR)
    return x, truth


def blocks_of(x: np.ndarray, size: int) -> Iterator[Block]:
    for i in range(0, x.size, size):
        yield Block(i, x[i : i + size])


def _mask(spans: list[tuple[int, int]], n: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    for a, b in spans:
        m[a:b] = True
    return m


TRACK = Path(__file__).resolve().parent.parent / "tests" / "data" / "vad_track"


def recorded_track(minutes: float, repeat: int) -> dict[str, object]:
    """Both detectors on the recorded track: what they feed, and their time per hour of audio."""
    import soundfile as sf

    from gemmapipe.core.tasks.silero import silero_session
    from gemmapipe.core.tasks.transcribe import trim_quiet_edges

    x, _ = sf.read(TRACK / "track.flac", dtype="float32")
    truth = json.loads((TRACK / "truth.json").read_text())["speech"]
    speech = _mask([(a, b) for a, b in truth], x.size)
    tiled = np.tile(x, max(1, round(minutes * 60 * SR / x.size)))
    silero_session()  # the model load is not the detector's time
    out: dict[str, object] = {"track_s": round(x.size / SR, 3), "speech_s": round(float(speech.sum()) / SR, 3)}
    for vad in ("energy", "silero"):
        clips = [trim_quiet_edges(c) for c in segment_speech(blocks_of(x, SR), vad=vad)]
        fed = _mask([(c.start, c.end) for c in clips], x.size)
        tokens = sum(-(-(c.end - c.start) // FRAME) for c in clips)
        runs = []
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            for _clip in segment_speech(blocks_of(tiled, SR), vad=vad):
                pass
            runs.append(time.perf_counter() - t0)
        out[vad] = {
            "clips": len(clips),
            "clips_without_speech": sum(1 for c in clips if not speech[c.start : c.end].any()),
            "non_speech_fed_s": round(float((fed & ~speech).sum()) / SR, 2),
            "non_speech_fed_fraction": round(float((fed & ~speech).sum() / (~speech).sum()), 4),
            "speech_covered": round(float((fed & speech).sum() / speech.sum()), 4),
            "tokens_fed": tokens,
            "tokens_per_minute": round(tokens / (x.size / SR / 60), 1),
            "detector_s_per_hour": round(min(runs) * 3600 / (tiled.size / SR), 3),
            "timed_on_s": round(tiled.size / SR, 1),
        }
    out["tokens_per_minute_whole_track"] = round(-(-x.size // FRAME) / (x.size / SR / 60), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--block-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--track-minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "segment.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    x, truth = make_audio(args.hours * 3600, args.seed)
    gen_s = time.perf_counter() - t0

    runs = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        found = list(segment_speech(blocks_of(x, int(args.block_s * SR)), vad="energy"))
        runs.append(time.perf_counter() - t0)
        clips = [(c.start, c.end, c.tokens, c.cut) for c in found]
    seg_s = min(runs)

    n = x.size
    truth_m = _mask(truth, n)
    clip_m = _mask([(a, b) for a, b, _, _ in clips], n)
    hit = int(np.count_nonzero(truth_m & clip_m))
    lengths = np.array([(b - a) / SR for a, b, _, _ in clips]) if clips else np.zeros(1)
    missed = sum(1 for a, b in truth if not clip_m[a:b].any())
    # boundary error of the clips that hold exactly one utterance (pad taken off), in ms
    pad = 120 * SR // 1000
    d_start, d_end = [], []
    for a, b, _, cut in clips:
        inside = [(s, e) for s, e in truth if s < b and e > a]
        if len(inside) == 1 and not cut and a > 0:
            d_start.append((a + pad - inside[0][0]) * 1000 / SR)
            d_end.append((b - pad - inside[0][1]) * 1000 / SR)
    merged = sum(1 for a, b, _, _ in clips if sum(1 for s, e in truth if s < b and e > a) > 1)
    tokens_all = -(-n // FRAME)
    # what transcribe feeds the model: each clip after its quiet edges (the pad over background) are trimmed
    from gemmapipe.core.tasks.transcribe import trim_quiet_edges

    tokens_vad = sum(t for _, _, t, _ in clips)
    tokens_clips = sum(-(-trim_quiet_edges(c).samples.size // FRAME) for c in found)
    report = {
        "audio_s": n / SR,
        "block_s": args.block_s,
        "generate_s": round(gen_s, 3),
        "segment_s": round(seg_s, 3),
        "segment_s_runs": [round(r, 3) for r in runs],
        "realtime_factor": round(n / SR / seg_s, 1),
        "clips": len(clips),
        "clips_per_s": round(len(clips) / seg_s, 1),
        "forced_cuts": sum(1 for *_, cut in clips if cut),
        "clip_s": {
            "min": round(float(lengths.min()), 3),
            "median": round(float(np.median(lengths)), 3),
            "max": round(float(lengths.max()), 3),
        },
        "utterances": len(truth),
        "utterances_missed": missed,
        "clips_holding_several_utterances": merged,
        "boundary_error_ms": {
            "note": "clip start + 120 ms pad - truth start, clip end - pad - truth end; p5/p50/p95",
            "start": [round(float(v)) for v in np.percentile(d_start, [5, 50, 95])] if d_start else [],
            "end": [round(float(v)) for v in np.percentile(d_end, [5, 50, 95])] if d_end else [],
        },
        "speech_fraction_truth": round(float(truth_m.mean()), 4),
        "speech_fraction_clips": round(float(clip_m.mean()), 4),
        "sample_recall": round(hit / max(1, int(truth_m.sum())), 4),
        "sample_precision": round(hit / max(1, int(clip_m.sum())), 4),
        "tokens_without_skipping": tokens_all,
        "tokens_with_skipping": tokens_clips,
        "tokens_of_vad_clips_before_edge_trim": tokens_vad,
        "tokens_saved_fraction": round(1 - tokens_clips / tokens_all, 4),
        "recorded_track": recorded_track(args.track_minutes, args.repeat),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
