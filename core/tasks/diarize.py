"""diarize: the model labels the speaker of each speech clip, given an exemplar clip of every
speaker met so far, so labels stay consistent across a long recording.

Prompt per clip (audio early, exemplars first): "Speaker S1: <audio> Speaker S2: <audio> ... Which
of these speakers talks in the next clip, or is it a new one? Clip: <audio>", and the answer is
constrained by a JSON-schema grammar to {"speaker": "S1" | ... | "new", "text": "..."}.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..context import context_for
from ..engine.base import Engine, GenerateOptions
from ..engine.grammar import schema_to_grammar
from ..engine.parts import Audio, Message, Part, Text
from ..errors import UsageError
from ..results import Segment, Transcript
from .transcribe import SAMPLE_RATE, cut_repetition, trim_quiet_edges

if TYPE_CHECKING:
    import numpy as np

    from ..media.source import Source

EXEMPLAR_S = 3.0


@dataclass
class DiarizeOptions:
    min_speakers: int = 1
    max_speakers: int = 8
    names: list[str] = field(default_factory=list)
    language: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    max_clip_s: float = 20.0  # leaves room for exemplars within the model's ~30 s comfort zone
    min_silence_ms: float = 500.0  # a pause at least this long ends a clip
    vad: str = "silero"  # voice-activity detector: "silero" or "energy" (core/tasks/segment.py)
    generate: GenerateOptions = field(default_factory=lambda: GenerateOptions(max_tokens=320))

    def validate(self) -> None:
        if self.min_speakers < 1 or self.max_speakers < self.min_speakers:
            raise UsageError(None, f"need 1 <= min ({self.min_speakers}) <= max ({self.max_speakers})",
                             parameter="speakers")


def speaker_schema(known: int, can_add: bool) -> dict[str, Any]:
    labels = [f"S{i + 1}" for i in range(known)] + (["new"] if can_add or known == 0 else [])
    return {"type": "object", "properties": {"speaker": {"enum": labels}, "text": {"type": "string"}},
            "required": ["speaker", "text"], "additionalProperties": False}


def clip_prompt(exemplars: list[np.ndarray], clip: np.ndarray, options: DiarizeOptions) -> list[Message]:
    parts: list[Part] = []
    for i, ex in enumerate(exemplars):
        parts += [Text(f"Speaker S{i + 1}: "), Audio(ex), Text("\n")]
    lang = f" in {options.language}" if options.language else ""
    if exemplars:
        ask = ("Which of the speakers above talks in the next clip? Answer \"new\" if it is none of them. "
               f"Also transcribe the clip{lang}. Reply as JSON: {{\"speaker\": ..., \"text\": ...}}.\nClip: ")
    else:
        ask = f"Transcribe the next clip{lang}. Reply as JSON: {{\"speaker\": \"new\", \"text\": ...}}.\nClip: "
    parts += [Text(ask), Audio(clip)]
    return [Message("user", parts)]


def n_ctx_for(options: DiarizeOptions) -> int:
    audio = int((options.max_clip_s + options.max_speakers * EXEMPLAR_S) * 25) + 16 * options.max_speakers
    need = audio + 256 + options.generate.max_tokens
    return context_for(need, 2048)


def label(index: int, options: DiarizeOptions) -> str:
    return options.names[index] if index < len(options.names) else f"S{index + 1}"


def iter_turns(clips: Iterator[Any], engine_for: Callable[[], Engine], options: DiarizeOptions, *,
               on_progress: Callable[[int], None] | None = None) -> Iterator[Segment]:
    exemplars: list[np.ndarray] = []
    for raw in clips:
        clip = trim_quiet_edges(raw)
        engine = engine_for()
        can_add = len(exemplars) < options.max_speakers
        schema = speaker_schema(len(exemplars), can_add)
        gen = GenerateOptions(**{**options.generate.__dict__, "grammar": schema_to_grammar(schema),
                                 "json_schema": schema})
        raw = "".join(engine.generate(clip_prompt(exemplars, clip.samples, options), gen))
        who, text, truncated = read_answer(raw)
        flags = ["truncated"] if truncated else []
        index: int | None
        if who is not None and who.startswith("S") and who[1:].isdigit() and 0 < int(who[1:]) <= len(exemplars):
            index = int(who[1:]) - 1
        elif truncated:
            index = None  # a cut-off answer never makes up a speaker
        elif can_add:
            exemplars.append(clip.samples[: int(EXEMPLAR_S * SAMPLE_RATE)].copy())
            index = len(exemplars) - 1
        else:
            index = len(exemplars) - 1
        text, looped = cut_repetition(" ".join(text.split()))
        if looped:
            flags.append("repetition")
        if on_progress:
            on_progress(clip.end)
        yield Segment(start_ms=clip.start * 1000 // SAMPLE_RATE, end_ms=clip.end * 1000 // SAMPLE_RATE,
                      text=text, speaker=None if index is None else label(index, options), flags=flags)


_FIELD = r'"{}"\s*:\s*"((?:[^"\\]|\\.)*)'


def read_answer(raw: str) -> tuple[str | None, str, bool]:
    """(speaker, text, truncated) from the model's JSON answer. An answer cut off before its JSON
    closed (the token limit) is `truncated`: the speaker only if its value was complete, and as much
    of the text as was written (none when it had not started)."""
    try:
        answer = json.loads(raw)
    except json.JSONDecodeError:
        answer = None
    if isinstance(answer, dict):
        return str(answer.get("speaker", "new")), str(answer.get("text", "")), False
    speaker = re.search(_FIELD.format("speaker") + '"', raw)
    text = re.search(_FIELD.format("text"), raw)
    return (_json_string(speaker.group(1)) if speaker else None,
            _json_string(text.group(1)) if text else "", True)


def _json_string(body: str) -> str:
    """The value of a JSON string's body, even one cut in the middle of an escape."""
    for cut in range(min(6, len(body)) + 1):
        try:
            return str(json.loads('"' + body[: len(body) - cut] + '"'))
        except json.JSONDecodeError:
            continue
    return ""


def diarize(source: Source, engine_for: Callable[[], Engine], options: DiarizeOptions, *,
            on_segment: Callable[[Segment], None] | None = None,
            on_progress: Callable[[int], None] | None = None) -> Transcript:
    from ..media.audio import iter_audio
    from .segment import segment_speech

    options.validate()
    t0 = time.perf_counter()
    clips = segment_speech(iter_audio(source, start_ms=options.start_ms, end_ms=options.end_ms),
                           vad=options.vad, max_clip_s=options.max_clip_s, min_silence_ms=options.min_silence_ms)
    result = Transcript(file=source.name)
    for seg in iter_turns(clips, engine_for, options, on_progress=on_progress):
        result.segments.append(seg)
        if on_segment:
            on_segment(seg)
    speakers = sorted({s.speaker for s in result.segments if s.speaker})
    result.meta["speakers"] = speakers
    result.meta["timings"] = {"total_s": round(time.perf_counter() - t0, 3)}
    return result


def require_scoring() -> None:
    """UsageError (exit 2) naming the extra to install when pyannote.metrics is missing."""
    try:
        import pyannote.metrics  # noqa: F401
    except ImportError:
        raise UsageError(None, "needs pyannote.metrics", "pip install 'gemmapipe[score]'", parameter="score") from None


RttmTurn = tuple[float, float, str]  # onset s, duration s, speaker


def read_rttm(path: str) -> list[RttmTurn]:
    """The SPEAKER lines of a reference RTTM, read and checked before any work (UsageError naming the
    file and line: missing, unreadable, a malformed line)."""
    import math

    where = f"{{score}} {path}"
    turns: list[RttmTurn] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                cols = line.split()
                if not cols or cols[0] != "SPEAKER":
                    continue  # comments and the other RTTM record types
                if len(cols) < 8:
                    raise UsageError(where, f"line {n}: a SPEAKER line has 8 or more fields, this one {len(cols)}")
                try:
                    onset, dur = float(cols[3]), float(cols[4])
                except ValueError:
                    raise UsageError(where, f"line {n}: onset and duration must be numbers "
                                            f"(got {cols[3]!r} and {cols[4]!r})") from None
                if not (math.isfinite(onset) and math.isfinite(dur)) or onset < 0 or dur < 0:
                    raise UsageError(where, f"line {n}: onset and duration must be finite and not negative")
                turns.append((onset, dur, cols[7]))
    except UnicodeDecodeError:
        raise UsageError(where, "not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(where, exc.strerror or str(exc)) from None
    if not turns:
        raise UsageError(where, "has no SPEAKER lines", "an RTTM line reads: SPEAKER file 1 onset duration "
                                                        "<NA> <NA> name <NA> <NA>")
    return turns


def score_der(reference: str | list[RttmTurn], segments: list[Segment], uri: str) -> dict[str, float]:
    """DER against a reference RTTM (a path, or what read_rttm returned) with pyannote.metrics
    (the `score` extra)."""
    require_scoring()
    from pyannote.core import Annotation, Timeline
    from pyannote.core import Segment as PSegment
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref = Annotation(uri=uri)
    for onset, dur, speaker in read_rttm(reference) if isinstance(reference, str) else reference:
        ref[PSegment(onset, onset + dur)] = speaker
    hyp = Annotation(uri=uri)
    for seg in segments:
        hyp[PSegment(seg.start_ms / 1000, seg.end_ms / 1000)] = seg.speaker or "S?"
    metric = DiarizationErrorRate()
    # Score over the union of both extents (what pyannote otherwise guesses, with a warning).
    uem = Timeline([(ref.get_timeline() | hyp.get_timeline()).extent()]) if len(ref) or len(hyp) else None
    detail = metric(ref, hyp, uem=uem, detailed=True)
    return {k: float(v) for k, v in detail.items()}
