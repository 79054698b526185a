"""Build tests/data/vad_track/track.flac and truth.json from recordings in three Debian packages.

Not run by the tests (they read the files this writes); kept so the track can be rebuilt and checked:

    apt-get download asterisk-core-sounds-en-g722 asterisk-moh-opsound-wav openttd-opensfx
    for f in *.deb; do dpkg -x "$f" root/; done
    python tests/data/vad_track/build.py root/

Speech: Allison Smith's recorded Asterisk prompts (16 kHz G.722), in six turns of one to three
prompts with 0.3-0.45 s between prompts (one turn over a music bed). Non-speech: two recorded music
loops (Asterisk music on hold, 8 kHz), recorded sound effects from OpenSFX (an explosion, a crash, a
jackhammer, applause, a car horn, a bus pulling away, kicks, a helicopter, wind, birds, a cash till),
a burst of brown noise, all over a faint brown-noise room tone. The truth is the span of each turn:
first to last sample of its prompts' speech (10 ms windows within 45 dB of the prompt's loudest one).
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import av
import numpy as np
import soundfile as sf

SR = 16000
HERE = Path(__file__).parent
ALLISON = "usr/share/asterisk/sounds/en_US_f_Allison"
MOH = "usr/share/asterisk/moh"
OPENSFX = "usr/share/games/openttd/baseset/opensfx/opensfx.cat"


def decode(data: bytes | str, fmt: str | None = None) -> np.ndarray:
    """Any file PyAV reads -> float32 mono at 16 kHz."""
    import io

    src = io.BytesIO(data) if isinstance(data, bytes) else data
    out = []
    with av.open(src, format=fmt) as c:
        rs = av.AudioResampler(format="flt", layout="mono", rate=SR)
        for frame in c.decode(audio=0):
            for f in rs.resample(frame):
                out.append(f.to_ndarray().reshape(-1))
        for f in rs.resample(None):
            out.append(f.to_ndarray().reshape(-1))
    return np.concatenate(out).astype(np.float32)


def opensfx(root: Path) -> dict[int, tuple[str, np.ndarray]]:
    """The WAV samples of OpenTTD's opensfx.cat: {index: (description, samples)}."""
    d = (root / OPENSFX).read_bytes()
    n = (struct.unpack("<I", d[:4])[0] & 0x7FFFFFFF) // 8
    out = {}
    for i in range(n):
        off, size = struct.unpack("<II", d[8 * i : 8 * i + 8])
        off &= 0x7FFFFFFF
        nl = d[off]
        name = d[off + 1 : off + 1 + nl].rstrip(b"\0").decode("latin1")
        wav = d[off + 1 + nl : off + size]
        if wav[:4] == b"RIFF":
            out[i] = (name, wav)
    return out


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def speech_span(x: np.ndarray) -> tuple[int, int]:
    w = 160
    n = x.size // w
    e = 10 * np.log10(np.mean(np.square(x[: n * w].reshape(n, w), dtype=np.float64), axis=1) + 1e-20)
    on = np.flatnonzero(e >= max(-60.0, e.max() - 45.0))
    return int(on[0]) * w, min(x.size, (int(on[-1]) + 1) * w)


def level(x: np.ndarray, peak_db: float) -> np.ndarray:
    return (x * (10 ** (peak_db / 20) / (np.abs(x).max() + 1e-12))).astype(np.float32)


def brown(n: int, db: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b = np.cumsum(rng.standard_normal(n))
    b -= np.convolve(b, np.ones(1601) / 1601, mode="same")  # no DC drift
    return (b * 10 ** (db / 20) / np.sqrt(np.mean(b * b))).astype(np.float32)


def main() -> int:
    root = Path(sys.argv[1])
    sfx = opensfx(root)
    credits: list[str] = []

    def prompt(name: str) -> np.ndarray:
        x = decode(str(root / ALLISON / f"{name}.g722"), "g722")
        a, b = speech_span(x)
        x = x[a:b]
        credits.append(f"speech {name}.g722: Allison Smith, asterisk-core-sounds-en-g722 1.6.1, CC-BY-SA-3.0")
        return (x * 10 ** ((-20 - rms_db(x)) / 20)).astype(np.float32)  # -20 dBFS while she speaks

    def effect(i: int, peak_db: float) -> np.ndarray:
        name, wav = sfx[i]
        credits.append(f"effect {i}: OpenSFX 1.0.3 (openttd-opensfx), {name}")
        return level(decode(wav), peak_db)

    def music(name: str, start_s: float, seconds: float, rms: float) -> np.ndarray:
        x = decode(str(root / MOH / f"{name}.wav"))[int(start_s * SR) : int((start_s + seconds) * SR)]
        ramp = np.minimum(1, np.minimum(np.arange(x.size), np.arange(x.size)[::-1]) / (0.05 * SR))
        credits.append(f"music {name}.wav {start_s}-{start_s + seconds} s: asterisk-moh-opsound-wav 2.03, CC-BY-SA-3.0")
        return (x * ramp * 10 ** ((rms - rms_db(x)) / 20)).astype(np.float32)

    turns = [
        ["hello", "dir-welcome", "vm-pls-try-again"],
        ["demo-nogo"],
        ["privacy-unident", "conf-invalid"],  # over a music bed
        ["dir-usingkeypad"],
        ["feature-not-avail-line", "vm-next", "pls-hold-while-try"],
        ["confbridge-pin", "do-not-disturb"],
    ]
    kick = effect(32, -4)
    plan: list[tuple[str, object]] = [  # ("gap", seconds) | ("turn", index) | ("sound", samples)
        ("gap", 1.5), ("turn", 0), ("gap", 1.0),
        ("sound", music("macroform-cold_day", 30, 12, -20)), ("gap", 1.0),
        ("sound", effect(18, -3)), ("gap", 0.8),  # explosion
        ("turn", 1), ("gap", 1.2),
        ("sound", effect(33, -6)), ("gap", 0.6),  # jackhammer
        ("sound", effect(17, -3)), ("gap", 1.0),  # crash
        ("turn", 2), ("gap", 1.0),
        ("sound", effect(29, -6)), ("gap", 0.8),  # applause
        ("sound", effect(35, -6)), ("gap", 0.5),  # car horn
        ("sound", effect(27, -6)), ("gap", 1.0),  # bus pulling away
        ("turn", 3), ("gap", 1.0),
        ("sound", brown(4 * SR, -28, 11)), ("gap", 1.0),
        ("sound", kick), ("gap", 0.4), ("sound", kick), ("gap", 0.4), ("sound", kick), ("gap", 0.8),
        ("sound", effect(24, -6)), ("gap", 0.3), ("sound", effect(52, -8)), ("gap", 1.0),  # helicopter, wind
        ("turn", 4), ("gap", 1.0),
        ("sound", effect(66, -8)), ("gap", 0.5), ("sound", effect(20, -6)), ("gap", 1.0),  # birds, cash till
        ("turn", 5), ("gap", 1.5),
        ("sound", music("reno_project-system", 60, 8, -20)), ("gap", 1.5),
    ]
    gaps = iter([0.3, 0.45, 0.35, 0.4, 0.3, 0.45, 0.35])
    parts: list[np.ndarray] = []
    truth: list[list[int]] = []
    prompts: list[list[int]] = []
    bed_turn: list[int] = []
    pos = 0
    for kind, what in plan:
        if kind == "gap":
            x = np.zeros(int(float(what) * SR), dtype=np.float32)  # type: ignore[arg-type]
        elif kind == "sound":
            x = what  # type: ignore[assignment]
        else:
            seq = []
            start = pos
            for k, name in enumerate(turns[int(what)]):  # type: ignore[call-overload]
                if k:
                    seq.append(np.zeros(int(next(gaps) * SR), dtype=np.float32))
                p = prompt(name)
                off = start + sum(s.size for s in seq)
                prompts.append([off, off + p.size])
                seq.append(p)
            x = np.concatenate(seq)
            truth.append([start, start + x.size])
            if what == 2:
                bed_turn = [start, start + x.size]
        parts.append(x)  # type: ignore[arg-type]
        pos += x.size  # type: ignore[union-attr]
    track = np.concatenate(parts)
    # the music bed under turn 3: from 1 s before it to 1 s after, 14 dB under the speech
    a, b = bed_turn[0] - SR, bed_turn[1] + SR
    track[a:b] += music("manolo_camp-morning_coffee", 10, (b - a) / SR, -34)
    track += brown(track.size, -52, 7)  # room tone
    track = np.clip(track, -1, 1)
    sf.write(HERE / "track.flac", track, SR, subtype="PCM_16", compression_level=1.0)
    (HERE / "truth.json").write_text(json.dumps({
        "sample_rate": SR, "samples": int(track.size),
        "speech": truth, "prompts": prompts,
        "note": "speech: the turns, [start, end) in samples; prompts: each recorded prompt inside them",
    }, indent=1) + "\n")
    (HERE / "CREDITS.txt").write_text("\n".join(dict.fromkeys(credits)) + "\n")
    print(track.size / SR, "s;", sum(b - a for a, b in truth) / SR, "s of speech")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
