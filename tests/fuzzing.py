"""Fuzzing the media layer and --dry-run with mutated media: only clean errors (BadInput, exit 3) or
success, never a crash, a hang or a traceback. And the option values: bad numbers, times and choices
are one usage-error line (exit 2), odd ones are accepted or refused that way, never an internal error.

Used by tests/test_fuzz.py (a short run in CI) and runnable alone for a long run:

    python tests/fuzzing.py --minutes 10 [--seed N]

A long run prints how many inputs it tried; any input that fails the contract is saved under
tests/fuzz_corpus/ and replayed by the tests from then on.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

CORPUS = Path(__file__).parent / "fuzz_corpus"
PER_INPUT_TIMEOUT_S = 10


def seeds(directory: Path) -> list[Path]:
    """Small valid media of every kind we take, written with PyAV, numpy and Pillow."""
    sys.path.insert(0, str(Path(__file__).parent))
    from media_factory import write_image, write_tone, write_video

    directory.mkdir(parents=True, exist_ok=True)
    out = [
        write_tone(directory / "a.wav", "wav", seconds=0.3),
        write_tone(directory / "a.mp3", "mp3", seconds=0.3),
        write_tone(directory / "a.ogg", "ogg", seconds=0.3),
        write_tone(directory / "a.flac", "flac", seconds=0.3),
        write_video(directory / "v.mp4", seconds=1.0, fps=5, with_audio=True),
        write_image(directory / "i.png", size=(64, 48)),
        write_image(directory / "i.jpg", size=(64, 48), fmt="JPEG"),
    ]
    return [Path(p) for p in out]


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if not b:
            break
        i = rng.randrange(len(b))
        if op == 0:  # flip bytes
            for _ in range(rng.randint(1, 16)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1:  # truncate
            del b[i:]
        elif op == 2:  # insert random bytes
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif op == 3:  # duplicate a chunk
            j = min(len(b), i + rng.randint(1, 512))
            b[j:j] = b[i:j]
        elif op == 4:  # zero a range
            j = min(len(b), i + rng.randint(1, 256))
            b[i:j] = bytes(j - i)
        else:  # big-endian "huge" integers in headers
            j = min(len(b), i + 4)
            b[i:j] = b"\xff" * (j - i)
    return bytes(b)


class Hang(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def fire(signum: int, frame: object) -> None:
        raise Hang(f"no result within {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def exercise_media(path: Path) -> str:
    """Open, plan and decode a little of the input; return "ok" or "bad-input"."""
    from gemmapipe.core.errors import BadInput
    from gemmapipe.core.media.audio import iter_audio
    from gemmapipe.core.media.frames import iter_frames
    from gemmapipe.core.media.image import load_image
    from gemmapipe.core.media.source import open_input
    from gemmapipe.core.plan import plan_input

    try:
        with deadline(PER_INPUT_TIMEOUT_S), open_input(str(path)) as src:
            plan_input(src, want_audio=src.kind != "image", want_frames=src.kind != "audio")
            if src.kind == "image":
                load_image(src)
                return "ok"
            for i, _ in enumerate(iter_audio(src)):
                if i >= 2:
                    break
            if src.kind == "video":
                for _ in iter_frames(src, max_frames=3):
                    pass
        return "ok"
    except BadInput:
        return "bad-input"


def exercise_dry_run(path: Path) -> str:
    """Every subcommand's --dry-run: exit 0 or 3, one error line, never 'internal'."""
    from gemmapipe.cli.app import run

    for command in ("transcribe", "diarize", "describe", "video"):
        err = io.StringIO()
        with deadline(PER_INPUT_TIMEOUT_S), contextlib.redirect_stderr(err), \
                contextlib.redirect_stdout(io.StringIO()):
            code = run([command, "--dry-run", str(path)])
        text = err.getvalue()
        if code not in (0, 3) or "internal" in text or "Traceback" in text:
            raise AssertionError(f"{command} --dry-run: exit {code}: {text.strip()}")
    return "ok"


# --- option values -----------------------------------------------------------------------------------
# Bad values for numeric, time and choice options: each is a usage error (exit 2, one error line and at
# most a hint, nothing on stdout) on every --dry-run command that takes the option.

TIME_OPTIONS = ("--start", "--end")
BAD_OPTION_VALUES: list[tuple[str, str]] = [
    ("--start", "inf"), ("--start", "-inf"), ("--start", "1e400"), ("--start", "nan"), ("--start", "1:99"),
    ("--start", "-5"), ("--start", "1:2:3:4"), ("--start", "9" * 400), ("--end", "inf"), ("--end", "1e400s"),
    ("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-1"), ("--timeout", "nan"),
    ("--timeout", "1e400"), ("--timeout", "0"), ("-t", "100000"), ("-t", "32768"), ("-t", "0"), ("-t", "1e3"),
    ("-c", "99999999999"), ("--max-tokens", "99999999999"), ("--seed", "-1"), ("--seed", "4294967296"),
    ("--gpu-layers", "-2"), ("--retries", "1000000"), ("-j", "100000"), ("--flash-attn", "maybe"),
    ("--cache-type", "q5_9"), ("--cache-type", ""),
]
DRY_RUN_COMMANDS = ("transcribe", "diarize", "describe", "video")
# options whose values the random run draws from odd_number()
NUMERIC_OPTIONS = ("--start", "--end", "--temperature", "--timeout", "-t", "-c", "--max-tokens", "--seed",
                   "--gpu-layers", "--retries", "-j")
ODD_NUMBERS = ("inf", "-inf", "nan", "NaN", "1e400", "-1e400", "1e-400", "0", "-0", "1:99", "1:60", "59:59",
               "1:2:3", "0x10", "1_000", "", " ", "1e308", "4294967296", "9223372036854775808", "½", "٣")


def option_cases(media: dict[str, Path]) -> list[list[str]]:
    """[command, --dry-run, option, value, input] for every bad value and every command taking it."""
    cases = []
    for option, value in BAD_OPTION_VALUES:
        for command in DRY_RUN_COMMANDS:
            if option in TIME_OPTIONS and command == "describe":
                continue
            cases.append([command, "--dry-run", option, value, str(media[command])])
    return cases


def odd_number(rng: random.Random) -> str:
    """A number-ish string: a special value, or random characters from numbers' alphabet."""
    if rng.random() < 0.5:
        return rng.choice(ODD_NUMBERS)
    return "".join(rng.choice("0123456789.:-+eEinfa_ s") for _ in range(rng.randint(1, 12)))


def exercise_option(args: list[str], *, allowed: tuple[int, ...] = (2,)) -> int:
    """Run the CLI on `args`; the contract: an allowed exit status, and a refusal is one error line (plus
    at most a hint) with nothing on stdout, never 'internal' or a traceback."""
    from gemmapipe.cli.app import run

    err, out = io.StringIO(), io.StringIO()
    with deadline(PER_INPUT_TIMEOUT_S), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = run(args)
    text = err.getvalue()
    lines = text.splitlines()
    if code not in allowed or "internal" in text or "Traceback" in text:
        raise AssertionError(f"{args}: exit {code}: {text.strip()}")
    if code != 0 and (out.getvalue() or not 1 <= len(lines) <= 2 or not lines[0].startswith("gemmapipe: error: ")
                      or (len(lines) == 2 and not lines[1].startswith("gemmapipe: hint: "))):
        raise AssertionError(f"{args}: exit {code}: not one error line: {text!r}, stdout {out.getvalue()!r}")
    return code


def random_option_case(rng: random.Random, media: dict[str, Path]) -> list[str]:
    command = rng.choice(DRY_RUN_COMMANDS)
    options = [o for o in NUMERIC_OPTIONS if not (command == "describe" and o in TIME_OPTIONS)]
    option, value = rng.choice(options), odd_number(rng)
    return [command, "--dry-run", option, value, str(media[command])]  # Click takes "-5" as the value


# --- file names ------------------------------------------------------------------------------------------
# Odd names for a good input: each run is exit 0, JSON output stays valid UTF-8 and names the file by its
# exact bytes, and the error line for a missing one stays one line.

ODD_NAMES: list[bytes] = [
    b"caf\xe9.wav", b"\xff\xfe.wav", b"new\nline.wav", b"tab\there.wav", b"-dash.wav", b" space .wav",
    b"\xe2\x80\xa8sep.wav", b"esc\x1b[31m.wav", b"n" * 240 + b".wav", "日本語 🎤.wav".encode(), b"a.b.c.wav",
]


def exercise_name(good: Path, raw_name: bytes, folder: Path) -> None:
    """Copy `good` to `raw_name` in `folder`, then dry-run it to stdout and to -o; and ask for a missing
    file of that name: the contract holds for every name."""
    import json
    import shutil

    from gemmapipe.cli.app import run

    target = os.fsencode(folder) + b"/" + raw_name
    shutil.copyfile(good, target)
    name = os.fsdecode(target)
    out_json = folder / "plan.json"
    for args in (["transcribe", "--dry-run", name], ["transcribe", "--dry-run", "-o", str(out_json), name]):
        err, out = io.StringIO(), io.StringIO()
        with deadline(PER_INPUT_TIMEOUT_S), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = run(args)
        if code != 0 or "Traceback" in err.getvalue():
            raise AssertionError(f"{raw_name!r}: exit {code}: {err.getvalue().strip()}")
    text = out_json.read_bytes().decode("utf-8")  # strict: valid UTF-8 whatever the name
    if os.fsencode(json.loads(text)["file"]) != target:
        raise AssertionError(f"{raw_name!r}: the plan names another file")
    os.unlink(target)
    exercise_option(["transcribe", "--dry-run", name], allowed=(3,))  # missing now: one error line


def check(path: Path) -> str:
    result = exercise_media(path)
    exercise_dry_run(path)
    return result


def option_media(base: list[Path]) -> dict[str, Path]:
    """The seed each --dry-run command takes, from seeds()."""
    by_suffix = {p.suffix: p for p in base}
    return {"transcribe": by_suffix[".wav"], "diarize": by_suffix[".wav"], "describe": by_suffix[".png"],
            "video": by_suffix[".mp4"]}


def long_run(minutes: float, seed: int) -> int:
    import tempfile

    rng = random.Random(seed)
    tried = crashes = 0
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = seeds(Path(tmp) / "seeds")
        blobs = [(p.suffix, p.read_bytes()) for p in base]
        media = option_media(base)
        for args in option_cases(media):
            exercise_option(args)
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            args = random_option_case(rng, media)  # one odd option value per mutated input
            try:
                exercise_option(args, allowed=(0, 2, 3))
            except Exception:
                crashes += 1
                print(f"CRASH on options {args}:\n{traceback.format_exc()}", file=sys.stderr)
            suffix, data = rng.choice(blobs)
            case = Path(tmp) / f"case{suffix}"
            case.write_bytes(mutate(data, rng))
            tried += 1
            try:
                outcome = check(case)
                counts[outcome] = counts.get(outcome, 0) + 1
            except Exception:
                crashes += 1
                CORPUS.mkdir(exist_ok=True)
                keep = CORPUS / f"crash-{seed}-{tried}{suffix}"
                keep.write_bytes(case.read_bytes())
                print(f"CRASH on {keep}:\n{traceback.format_exc()}", file=sys.stderr)
    print(f"fuzzing: {tried} inputs in {minutes} min (seed {seed}): {counts}, {crashes} crashes")
    return 1 if crashes else 0


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    sys.exit(long_run(args.minutes, args.seed))
