"""Media benchmark: gemmapipe.core.media against the ffmpeg CLI doing the same job in the same run.

    python bench/bench_media.py [--generate-only] [--quick]

1. 1 FPS frames from a 5-minute 720p H.264 file: iter_frames (scaled to the 70-token frame size)
   versus `ffmpeg -vf fps=1 -f rawvideo -pix_fmt rgb24 -` (target: >= 1.5x faster).
2. Decode + resample one hour of MP3 speech to 16 kHz mono float32: read_audio/iter_audio versus
   `ffmpeg -ac 1 -ar 16000 -f f32le -` (target: >= 1.2x faster).
3. Peak memory (RSS above the baseline) while streaming the hour of audio with iter_audio (< 150 MB).

Media are generated with PyAV (no ffmpeg CLI needed) and cached under bench/.media/ (gitignored).
ffmpeg comparisons are skipped with a message when no `ffmpeg` is on PATH.  Ratios are printed and
everything is written to bench/results/media.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MEDIA = HERE / ".media"
RESULTS = HERE / "results"
VIDEO = MEDIA / "video_720p_300s_h264.mp4"
SPEECH = MEDIA / "speech_3600s.mp3"


# --------------------------------------------------------------------------------------------- media


def make_video(path: Path, seconds: int = 300, fps: int = 30, size: tuple[int, int] = (1280, 720)) -> None:
    """A 720p H.264 (x264 veryfast: B-frames, CRF 23, yuv420p) clip of a textured scene that pans and zooms."""
    import av
    import numpy as np
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (h // 6, w // 6, 3), dtype=np.uint8)
    tex = np.asarray(Image.fromarray(small).resize((w * 2, h * 2), Image.Resampling.BICUBIC))
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.time_base = Fraction(1, fps)
        s.codec_context.options = {"preset": "veryfast", "crf": "23"}
        n = seconds * fps
        for i in range(n):
            scene = (i // (fps * 7)) % 4  # a "cut" every 7 s
            x = (i * 5 + scene * 311) % w
            y = (int(60 * np.sin(i / 40)) + h // 2 + scene * 97) % h
            arr = np.ascontiguousarray(tex[y : y + h, x : x + w])
            if scene % 2:
                arr = arr[:, ::-1]
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            f.pts = i
            f.time_base = Fraction(1, fps)
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    tmp.replace(path)


def make_speech(path: Path, seconds: int = 3600, sr: int = 44100) -> None:
    """One hour of speech-like MP3 (44.1 kHz stereo, 128 kbit/s): voiced harmonics with syllable and pause
    envelopes plus a little noise."""
    import av
    import numpy as np

    rng = np.random.default_rng(1)
    tmp = path.with_suffix(".part.mp3")
    with av.open(str(tmp), "w", format="mp3") as c:
        s = c.add_stream("libmp3lame", rate=sr)
        s.layout = "stereo"
        s.bit_rate = 128000
        fs = s.codec_context.frame_size or 1152
        rs = av.AudioResampler(format=s.format.name, layout="stereo", rate=sr, frame_size=fs)
        block = sr * 10
        pts = 0
        phase = 0.0
        for b in range(seconds // 10):
            t = np.arange(block) / sr
            f0 = 110 + 40 * np.sin(2 * np.pi * 0.3 * (t + b * 10)) + rng.uniform(-5, 5)
            inst = phase + 2 * np.pi * np.cumsum(f0) / sr
            phase = float(inst[-1])
            voiced = sum(np.sin(k * inst) / k for k in range(1, 8))
            syll = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 2
            pause = (np.sin(2 * np.pi * 0.2 * (t + b * 10)) > -0.6).astype(np.float64)
            x = 0.25 * voiced * syll * pause + 0.01 * rng.standard_normal(block)
            x = np.clip(x, -1, 1).astype(np.float32)
            data = np.stack([x, 0.9 * x])
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format="fltp", layout="stereo")
            frame.sample_rate = sr
            frame.pts = pts
            pts += block
            for out in rs.resample(frame):
                c.mux(s.encode(out))
        for out in rs.resample(None):
            c.mux(s.encode(out))
        c.mux(s.encode(None))
    tmp.replace(path)


def ensure_media(quick: bool) -> tuple[Path, Path]:
    MEDIA.mkdir(parents=True, exist_ok=True)
    video, speech = VIDEO, SPEECH
    if quick:
        video, speech = MEDIA / "video_720p_30s_h264.mp4", MEDIA / "speech_300s.mp3"
    if not video.exists():
        t = time.perf_counter()
        print(f"generating {video.name} ...", flush=True)
        make_video(video, seconds=30 if quick else 300)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    if not speech.exists():
        t = time.perf_counter()
        print(f"generating {speech.name} ...", flush=True)
        make_speech(speech, seconds=300 if quick else 3600)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
    return video, speech


# ------------------------------------------------------------------------------------------- helpers


def _status_kb(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb() -> float:
    return _status_kb("self", "VmRSS") / 1024


def child_pids() -> list[int]:
    """Direct children of this process (the audio helper processes, if any)."""
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == me:
                    out.append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    return out


def pss_kb(pid: int) -> int:
    """Proportional set size: private memory plus a fair share of pages shared with other processes."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRSS:
    """Samples memory every 50 ms in a thread, in MB: .peak (this process's RSS), .peak_total (plus the
    whole RSS of its child processes, shared library pages counted again for each) and .peak_total_pss
    (plus the children's proportional set size: what they really add)."""

    def __init__(self) -> None:
        self.peak = rss_mb()
        self.peak_total = self.peak
        self.peak_total_pss = self.peak
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = rss_mb()
        kids = child_pids()
        self.peak = max(self.peak, me)
        self.peak_total = max(self.peak_total, me + sum(_status_kb(p, "VmRSS") for p in kids) / 1024)
        self.peak_total_pss = max(self.peak_total_pss, me + sum(pss_kb(p) for p in kids) / 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.05)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self._sample()


def cpu_seconds() -> tuple[float, float]:
    """(this process, its waited-for children) user+system CPU seconds."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def run_ffmpeg(args: list[str]) -> int:
    """Run ffmpeg and count the bytes it writes to stdout."""
    p = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", *args], stdout=subprocess.PIPE)
    assert p.stdout is not None
    n = 0
    while True:
        b = p.stdout.read(1 << 20)
        if not b:
            break
        n += len(b)
    rc = p.wait()
    if rc:
        raise RuntimeError(f"ffmpeg failed ({rc}): {args}")
    return n


def timed(fn: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process and its children, result)."""
    c0 = sum(cpu_seconds())
    t = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t
    return wall, sum(cpu_seconds()) - c0, out


def compare(name: str, ours: Any, theirs: Any | None, rounds: int, target: float) -> dict[str, Any]:
    """Run ours and ffmpeg alternately `rounds` times (the machine may be shared: best of each counts)."""
    walls: dict[str, list[float]] = {"ours": [], "ffmpeg": []}
    cpus: dict[str, list[float]] = {"ours": [], "ffmpeg": []}
    outs: dict[str, Any] = {}
    for r in range(rounds):
        for who, fn in (("ours", ours), ("ffmpeg", theirs)):
            if fn is None:
                continue
            wall, cpu, out = timed(fn)
            walls[who].append(round(wall, 3))
            cpus[who].append(round(cpu, 3))
            outs[who] = out
            print(f"  {name} round {r + 1}: {who:6s} {wall:6.2f} s wall, {cpu:6.2f} s CPU", flush=True)
    res: dict[str, Any] = {
        "ours_s": min(walls["ours"]),
        "ours_runs_s": walls["ours"],
        "ours_cpu_s": min(cpus["ours"]),
        "result": outs.get("ours"),
    }
    if theirs is not None:
        best_ours, best_ff = min(walls["ours"]), min(walls["ffmpeg"])
        res.update(
            ffmpeg_s=best_ff,
            ffmpeg_runs_s=walls["ffmpeg"],
            ffmpeg_cpu_s=min(cpus["ffmpeg"]),
            ffmpeg_result=outs.get("ffmpeg"),
            ratio=round(best_ff / best_ours, 2),
            ratio_cpu=round(min(cpus["ffmpeg"]) / min(cpus["ours"]), 2),
            target=target,
            met=best_ff / best_ours >= target,
        )
        print(
            f"{name}: ours {best_ours:.2f} s, ffmpeg {best_ff:.2f} s -> {best_ff / best_ours:.2f}x "
            f"(target {target}x; CPU ratio {res['ratio_cpu']}x)",
            flush=True,
        )
    else:
        print(f"{name}: ours {min(walls['ours']):.2f} s (no ffmpeg to compare with)", flush=True)
    return res


# ------------------------------------------------------------------------------------------ benches


def bench_frames(video: Path, have_ffmpeg: bool, rounds: int) -> dict[str, Any]:
    from gemmapipe.core.media.frames import iter_frames
    from gemmapipe.core.media.source import open_input

    def ours() -> dict[str, Any]:
        with open_input(str(video)) as src:
            n = 0
            shape: tuple[int, ...] = ()
            for fr in iter_frames(src, fps=1.0, max_tokens=70):
                n += 1
                shape = fr.pixels.shape
            return {"frames": n, "shape": list(shape)}

    def theirs() -> dict[str, Any]:
        n = run_ffmpeg(["-i", str(video), "-vf", "fps=1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        return {"frames": n // (1280 * 720 * 3), "shape": [720, 1280, 3]}

    res = compare("frames", ours, theirs if have_ffmpeg else None, rounds, 1.5)
    res["file"] = video.name
    res["one_decoder"] = _variant("frames (one decoder)", ours, {"GEMMAPIPE_VIDEO_THREADS": "1"}, res.get("ffmpeg_s"))
    return res


def _variant(label: str, fn: Any, env: dict[str, str], ffmpeg_s: float | None) -> dict[str, float]:
    """Best of two runs of `fn` with `env` set (then restored)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        runs = [timed(fn)[:2] for _ in range(2)]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    wall, cpu = min(runs)
    line = f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU"
    if ffmpeg_s:
        line += f" -> {ffmpeg_s / wall:.2f}x"
    print(line, flush=True)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def bench_audio(speech: Path, have_ffmpeg: bool, rounds: int) -> dict[str, Any]:
    from gemmapipe.core.media.audio import read_audio
    from gemmapipe.core.media.source import open_input

    def ours() -> dict[str, Any]:
        with open_input(str(speech)) as src:
            return {"samples": int(read_audio(src).shape[0])}

    def theirs() -> dict[str, Any]:
        return {"samples": run_ffmpeg(["-i", str(speech), "-ac", "1", "-ar", "16000", "-f", "f32le", "-"]) // 4}

    res = compare("audio", ours, theirs if have_ffmpeg else None, rounds, 1.2)
    res["file"] = speech.name
    # the other ways the library can run, forced (the default: libsndfile pieces in helper processes)
    variants = (
        ("pyav_in_process", {"GEMMAPIPE_AUDIO_PROCS": "0"}),
        ("pyav_helper", {"GEMMAPIPE_AUDIO_SNDFILE": "0", "GEMMAPIPE_AUDIO_PROCS": "4"}),
    )
    for label, env in variants:
        res[label] = _variant(label.replace("_", " "), ours, env, res.get("ffmpeg_s"))
    return res


def bench_stream_memory(speech: Path) -> dict[str, Any]:
    import av  # noqa: F401 - loaded before the baseline: a working process has them
    import numpy  # noqa: F401

    from gemmapipe.core.media.audio import iter_audio
    from gemmapipe.core.media.source import open_input

    base = rss_mb()
    t = time.perf_counter()
    n = 0
    with PeakRSS() as peak, open_input(str(speech)) as src:
        for block in iter_audio(src):
            n += block.samples.shape[0]
    dt = time.perf_counter() - t
    res = {
        "samples": n,
        "seconds": round(dt, 3),
        "baseline_rss_mb": round(base, 1),
        "peak_rss_above_baseline_mb": round(peak.peak - base, 1),
        "peak_with_helpers_pss_above_baseline_mb": round(peak.peak_total_pss - base, 1),
        "peak_with_helpers_rss_above_baseline_mb": round(peak.peak_total - base, 1),
        "limit_mb": 150,
    }
    res["met"] = res["peak_with_helpers_pss_above_baseline_mb"] < 150
    print(
        f"stream: {n / 16000:.0f} s of audio in {dt:.2f} s; peak memory above the baseline "
        f"({res['baseline_rss_mb']} MB, numpy and PyAV loaded): this process {res['peak_rss_above_baseline_mb']} MB; "
        f"with the helper processes {res['peak_with_helpers_pss_above_baseline_mb']} MB PSS "
        f"({res['peak_with_helpers_rss_above_baseline_mb']} MB counting their shared libraries in full); limit 150",
        flush=True,
    )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--quick", action="store_true", help="30 s video and 5 min audio instead")
    ap.add_argument("--rounds", type=int, default=3, help="alternate ours/ffmpeg N times, best counts (default 3)")
    args = ap.parse_args()
    video, speech = ensure_media(args.quick)
    if args.generate_only:
        return 0
    have_ffmpeg = shutil.which("ffmpeg") is not None
    ff_version = None
    if have_ffmpeg:
        ff_version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.splitlines()[0]
        print(ff_version)
    else:
        print("ffmpeg not found on PATH: skipping the ffmpeg comparisons (apt-get install ffmpeg to run them)")
    import av

    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "pyav": av.__version__,
        "pyav_ffmpeg": str(av.ffmpeg_version_info),
        "ffmpeg_cli": ff_version,
        "quick": args.quick,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"load average at start: {results['loadavg_at_start']} on {os.cpu_count()} CPUs", flush=True)
    # memory first, while the process is small
    results["stream_memory"] = bench_stream_memory(speech)
    results["frames"] = bench_frames(video, have_ffmpeg, args.rounds)
    results["audio"] = bench_audio(speech, have_ffmpeg, args.rounds)
    results["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "media.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
