"""transcribe: speech regions (<= 30 s each) -> one model call each -> segments with sample-exact times."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..audio_format import SAMPLE_RATE
from ..context import context_for
from ..engine.base import Engine, GenerateOptions, is_templated
from ..engine.parts import Audio, Message, Text
from ..results import Segment, Transcript

if TYPE_CHECKING:
    from ..media.source import Source

MAX_CLIP_S = 30.0  # Google documents clips of up to 30 s; comprehension collapses beyond ~450-500 tokens
AUDIO_TOKENS_PER_S = 25

# Google's ASR prompt from the Gemma 4 model card.
ASR_PROMPT = (
    "Transcribe the following speech segment in {language} into {language} text.\n\n"
    "Follow these specific instructions for formatting the answer:\n"
    "* Only output the transcription, with no newlines.\n"
    "* When transcribing numbers, write the digits, i.e. write 1.7 and not one point seven, "
    "and write 3 instead of three."
)
ASR_PROMPT_AUTO = (
    "Transcribe the following speech segment in its original language.\n\n"
    "Follow these specific instructions for formatting the answer:\n"
    "* Only output the transcription, with no newlines.\n"
    "* When transcribing numbers, write the digits, i.e. write 1.7 and not one point seven, "
    "and write 3 instead of three."
)


@dataclass
class TranscribeOptions:
    language: str | None = None
    prompt: str | None = None  # extra context or vocabulary
    start_ms: int | None = None
    end_ms: int | None = None
    max_clip_s: float = MAX_CLIP_S
    min_silence_ms: float = 500.0  # a pause at least this long ends a clip
    vad: str = "silero"  # voice-activity detector: "silero" or "energy" (core/tasks/segment.py)
    generate: GenerateOptions = field(default_factory=lambda: GenerateOptions(max_tokens=320))
    jobs: int = 1  # clips sent at once (an engine that takes concurrent requests: a server)


def asr_instruction(options: TranscribeOptions) -> str:
    text = ASR_PROMPT.format(language=options.language) if options.language else ASR_PROMPT_AUTO
    if options.prompt:
        text += f"\n* Context and vocabulary that may occur: {options.prompt}"
    return text


def clip_messages(samples: Any, options: TranscribeOptions, *, templated: bool) -> list[Message]:
    """Audio first in the turn (the model understands audio best early in its context).

    With no chat template (a base model, --no-template) there is nothing to instruct: the model
    simply continues the audio, after any --prompt context.
    """
    if templated:
        return [Message("user", [Audio(samples), Text(asr_instruction(options))])]
    parts: list[Any] = [Text(options.prompt)] if options.prompt else []
    return [Message("user", [*parts, Audio(samples)])]


def n_ctx_for(options: TranscribeOptions, extra_tokens: int = 0) -> int:
    audio = int(options.max_clip_s * AUDIO_TOKENS_PER_S) + 8
    need = audio + 256 + options.generate.max_tokens + extra_tokens
    return context_for(need, 1024)


_WORD = re.compile(r"\S+")
SILENCE_RMS = 1e-4  # a 40 ms window quieter than this (-80 dBFS) carries nothing
EDGE_DB = 40.0  # edge windows this far below the clip's loudest window are background, not speech


@dataclass
class Clip:
    start: int  # samples from the file start
    end: int
    samples: Any


def trim_quiet_edges(clip: Any, window: int = 640) -> Clip:
    """Drop whole 40 ms windows of silence or faint background at the clip's edges (the VAD's pad).

    The projector normalises every 40 ms window on its own (RMSNorm), so faint noise reaches the
    model as loud as speech: the pad would cost tokens, can change the answer, and blurs the
    timestamps. 40 dB below the loudest window keeps soft consonants (typically 20-30 dB down).
    """
    import numpy as np

    x = clip.samples
    n = x.size // window
    if n == 0:
        return Clip(clip.start, clip.end, x)
    frames = x[: n * window].reshape(n, window).astype(np.float64)
    rms = np.sqrt((frames * frames).mean(axis=1))
    floor = max(SILENCE_RMS, float(rms.max()) * 10 ** (-EDGE_DB / 20))
    loud = np.flatnonzero(rms >= floor)
    if loud.size == 0:
        return Clip(clip.start, clip.end, x)
    a = int(loud[0]) * window
    b = x.size if loud[-1] == n - 1 else (int(loud[-1]) + 1) * window
    return Clip(clip.start + a, clip.start + b, x[a:b])


def cut_repetition(text: str, *, min_repeats: int = 4, max_period: int = 12) -> tuple[str, bool]:
    """Cut a trailing loop ("the the the ...", "I said, I said, ...") after its first occurrence."""
    words = _WORD.findall(text)
    n = len(words)
    for period in range(1, max_period + 1):
        if n < period * min_repeats:
            break
        tail = words[n - period:]
        repeats, i = 1, n - period
        while i - period >= 0 and words[i - period:i] == tail:
            repeats += 1
            i -= period
        if repeats >= min_repeats:
            kept = words[: i + period]
            return " ".join(kept), True
    return text, False


def iter_segments(
    clips: Iterator[Any], engine_for: Callable[[], Engine], options: TranscribeOptions, *,
    templated: Callable[[Engine], bool] = is_templated, on_progress: Callable[[int], None] | None = None,
) -> Iterator[Segment]:
    """One segment per speech clip, in order; silence never reaches the model. With
    `options.jobs` > 1 that many clips are in flight at once (results still come in order)."""
    from ..parallel import ordered_map

    def one(raw: Any) -> tuple[Any, Segment | None]:
        clip = trim_quiet_edges(raw)
        engine = engine_for()
        msgs = clip_messages(clip.samples, options, templated=templated(engine))
        text = "".join(engine.generate(msgs, options.generate)).strip()
        text = " ".join(text.split())  # the model is asked for one line; make sure of it
        text, looped = cut_repetition(text)
        flags = ["repetition"] if looped else []
        if engine.stats.stop_reason == "length" and not looped:
            flags.append("truncated")
        if not text:
            return raw, None
        return raw, Segment(start_ms=clip.start * 1000 // SAMPLE_RATE, end_ms=clip.end * 1000 // SAMPLE_RATE,
                            text=text, flags=flags)

    for raw, segment in ordered_map(one, clips, options.jobs):
        if on_progress:
            on_progress(raw.end)
        if segment is not None:
            yield segment


def transcribe(
    source: Source, engine_for: Callable[[], Engine], options: TranscribeOptions, *,
    templated: Callable[[Engine], bool] = is_templated, on_segment: Callable[[Segment], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Transcript:
    """Stream the input's audio through the VAD and the model; memory stays flat however long it is."""
    from ..media.audio import iter_audio
    from .segment import segment_speech

    t0 = time.perf_counter()
    blocks = iter_audio(source, start_ms=options.start_ms, end_ms=options.end_ms)
    clips = segment_speech(blocks, vad=options.vad, max_clip_s=options.max_clip_s,
                           min_silence_ms=options.min_silence_ms)
    result = Transcript(file=source.name)
    for seg in iter_segments(clips, engine_for, options, templated=templated, on_progress=on_progress):
        result.segments.append(seg)
        if on_segment:
            on_segment(seg)
    result.meta["timings"] = {"total_s": round(time.perf_counter() - t0, 3)}
    return result
