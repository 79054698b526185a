"""transcribe: speech regions (<= 30 s each) -> one model call each -> segments with sample-exact times."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ..audio_format import SAMPLE_RATE
from ..context import context_for
from ..engine.base import Engine, GenerateOptions, is_templated
from ..engine.parts import Audio, Message, Text
from ..errors import UsageError
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
# Google's speech-translation (AST) prompt from the Gemma model card; {source} and {target} are
# English language names. Without a known source language, "its original language" stands in.
TRANSLATE_PROMPT = (
    "Transcribe the following speech segment in {source}, then translate it into {target}. "
    "When formatting the answer, first output the transcription in {source}, then one newline, "
    "then output the string '{target}: ', then the translation in {target}."
)
TRANSLATE_PROMPT_AUTO = (
    "Transcribe the following speech segment in its original language, then translate it into {target}. "
    "When formatting the answer, first output the transcription in its original language, then one newline, "
    "then output the string '{target}: ', then the translation in {target}."
)
# Asked once per input (on its first speech clip) when no language is given; the answer is held to
# the language names of core/languages.py by a grammar.
LANGUAGE_QUESTION = "Which language is spoken in this audio? Answer with the English name of the language only."
LANGUAGE_ANSWER_TOKENS = 24  # "Norwegian Nynorsk" is 17 characters: enough even one character a token
TRANSLATE_MAX_TOKENS = 640  # an answer holds the transcription and its translation: twice ASR's 320


@dataclass
class TranscribeOptions:
    language: str | None = None  # the spoken language (an English name); None: detect
    translate: str | None = None  # translate into this language (an English name); None: transcribe only
    prompt: str | None = None  # extra context or vocabulary
    start_ms: int | None = None
    end_ms: int | None = None
    max_clip_s: float = MAX_CLIP_S
    min_silence_ms: float = 500.0  # a pause at least this long ends a clip
    vad: str = "silero"  # voice-activity detector: "silero" or "energy" (core/tasks/segment.py)
    generate: GenerateOptions = field(default_factory=lambda: GenerateOptions(max_tokens=320))
    jobs: int = 1  # clips sent at once (an engine that takes concurrent requests: a server)


def asr_instruction(options: TranscribeOptions, source: str | None = None) -> str:
    """The instruction after each clip: Google's ASR prompt, or its translation prompt with a target
    language. `source`: the spoken language when known (given, or detected for this input)."""
    source = source or options.language
    if options.translate:
        template = TRANSLATE_PROMPT if source else TRANSLATE_PROMPT_AUTO
        text = template.format(source=source, target=options.translate)
        if options.prompt:
            text += f"\n\nContext and vocabulary that may occur: {options.prompt}"
        return text
    text = ASR_PROMPT.format(language=options.language) if options.language else ASR_PROMPT_AUTO
    if options.prompt:
        text += f"\n* Context and vocabulary that may occur: {options.prompt}"
    return text


def clip_messages(samples: Any, options: TranscribeOptions, *, templated: bool,
                  source: str | None = None) -> list[Message]:
    """Audio first in the turn (the model understands audio best early in its context).

    With no chat template (a base model, --no-template) there is nothing to instruct: the model
    simply continues the audio, after any --prompt context.
    """
    if templated:
        return [Message("user", [Audio(samples), Text(asr_instruction(options, source))])]
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


# --- the spoken language ----------------------------------------------------------------------

def _gbnf_literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@lru_cache(maxsize=1)
def language_grammar() -> str:
    """GBNF that admits exactly the English names of core/languages.py (the ones -l takes)."""
    from ..languages import LANGUAGES

    names = sorted(set(LANGUAGES.values()))
    return "root ::= " + " | ".join(_gbnf_literal(n) for n in names) + "\n"


def read_language(answer: str) -> str | None:
    """The English name of the language an answer names: the answer itself ("German", "german."), or
    else the first language name in it ("The language is German.", from a server that ignored the
    grammar); None when it names none."""
    from ..languages import LANGUAGES, language_name

    cleaned = answer.strip().strip(" .!\"'*`")
    if not cleaned:
        return None
    name = language_name(cleaned.splitlines()[0].strip(" .!\"'*`"))
    if name is not None:
        return name
    found: list[tuple[int, int, str]] = []
    for candidate in set(LANGUAGES.values()):
        m = re.search(rf"(?<!\w){re.escape(candidate)}(?!\w)", answer, re.IGNORECASE)
        if m:
            found.append((m.start(), -len(candidate), candidate))
    return min(found)[2] if found else None


def detect_language(engine: Engine, samples: Any) -> str | None:
    """Ask the model which language a clip is in (one short, grammar-bound answer). The clip is laid
    out as the transcription prompt lays it out, so a local engine reuses it from its KV cache."""
    options = GenerateOptions(max_tokens=LANGUAGE_ANSWER_TOKENS, temperature=0.0, grammar=language_grammar())
    msgs = [Message("user", [Audio(samples), Text(LANGUAGE_QUESTION)])]
    return read_language("".join(engine.generate(msgs, options)))


# --- the translation prompt's answer ---------------------------------------------------------------

_MARKUP = r"[*_#>\s]*"  # markdown the model may wrap a label in (**English:**)


def _label(names: list[str]) -> str:
    alternatives = "|".join(re.escape(n) for n in names if n)
    return rf"{_MARKUP}(?:{alternatives})(?:\s+translation)?[*_]*\s*[:：][*_]*[ \t]*"


def split_translation(answer: str, target: str, source: str | None = None) -> tuple[str, str]:
    """(transcription, translation) from an answer to the translation prompt, each on one line.

    Asked for: the transcription, one newline, `{target}: `, the translation. Also read: the label
    in markdown (`**English:**`) or as `Translation:`, the newline left out (`Hallo. English:
    Hello.`), a `{source}:` label on the transcription, extra lines (the transcription is what comes
    before the label; the translation all that follows). Without any label: the first line is the
    transcription and the other lines the translation; a single line is the transcription, and the
    translation is empty (unless the two languages are the same).
    """
    text = answer.strip()
    label = re.compile(rf"(?<!\w){_label([target, 'translation'])}", re.IGNORECASE)
    m = label.search(text)
    if m is not None:
        before, after = text[: m.start()], text[m.end():]
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) >= 2:
            before, after = lines[0], " ".join(lines[1:])
        elif source is not None and source == target:
            before = after = text
        else:
            before, after = text, ""
    source_label = re.compile(rf"^{_label([source or '', 'transcription', 'original'])}", re.IGNORECASE)
    before = source_label.sub("", before.strip(), count=1)
    return " ".join(before.split()), " ".join(after.split())


# --- clips -> segments --------------------------------------------------------------------------

def iter_segments(
    clips: Iterator[Any], engine_for: Callable[[], Engine], options: TranscribeOptions, *,
    templated: Callable[[Engine], bool] = is_templated, on_progress: Callable[[int], None] | None = None,
    on_language: Callable[[str | None], None] | None = None,
) -> Iterator[Segment]:
    """One segment per speech clip, in order; silence never reaches the model. With
    `options.jobs` > 1 that many clips are in flight at once (results still come in order).

    Without `options.language`, the model is first asked which language the first speech clip is in
    (a templated model only); `on_language` gets the answer (None: it could not tell), and a
    translation names it as the source language."""
    from ..parallel import ordered_map

    source = options.language

    def one(raw: Any) -> tuple[Any, Segment | None]:
        clip = trim_quiet_edges(raw)
        engine = engine_for()
        is_templated_ = templated(engine)
        if options.translate and not is_templated_:
            raise UsageError(None, "needs a model with a chat template (an instruction-tuned Gemma 4)",
                             "drop {no_template}, or use an instruction-tuned (-it) model",
                             parameter="translate")
        msgs = clip_messages(clip.samples, options, templated=is_templated_, source=source)
        answer = "".join(engine.generate(msgs, options.generate))
        truncated = engine.stats.stop_reason == "length"
        translation: str | None = None
        if options.translate:
            text, translation = split_translation(answer, options.translate, source)
        else:
            text = " ".join(answer.split())  # the model is asked for one line; make sure of it
        text, looped = cut_repetition(text)
        if translation is not None:
            translation, looped_t = cut_repetition(translation)
            looped = looped or looped_t
        flags = ["repetition"] if looped else []
        if truncated and not looped:
            flags.append("truncated")
        if translation == "" and text:
            flags.append("untranslated")
        if not text and not translation:
            return raw, None
        return raw, Segment(start_ms=clip.start * 1000 // SAMPLE_RATE, end_ms=clip.end * 1000 // SAMPLE_RATE,
                            text=text, flags=flags, translation=translation)

    clips = iter(clips)
    if options.language is None:
        first = next(clips, None)
        if first is None:
            return
        clips = itertools.chain([first], clips)
        engine = engine_for()
        if templated(engine):
            source = detect_language(engine, trim_quiet_edges(first).samples)
            if on_language:
                on_language(source)

    for raw, segment in ordered_map(one, clips, options.jobs):
        if on_progress:
            on_progress(raw.end)
        if segment is not None:
            yield segment


def transcribe(
    source: Source, engine_for: Callable[[], Engine], options: TranscribeOptions, *,
    templated: Callable[[Engine], bool] = is_templated, on_segment: Callable[[Segment], None] | None = None,
    on_progress: Callable[[int], None] | None = None, on_language: Callable[[str | None], None] | None = None,
) -> Transcript:
    """Stream the input's audio through the VAD and the model; memory stays flat however long it is.

    meta: `language` (given, or detected: then `language_detected` is true; None when the model could
    not tell) and, when translating, `translate` (the target language)."""
    from ..media.audio import iter_audio
    from .segment import segment_speech

    t0 = time.perf_counter()
    blocks = iter_audio(source, start_ms=options.start_ms, end_ms=options.end_ms)
    clips = segment_speech(blocks, vad=options.vad, max_clip_s=options.max_clip_s,
                           min_silence_ms=options.min_silence_ms)
    result = Transcript(file=source.name)
    if options.translate:
        result.meta["translate"] = options.translate

    def spoken(name: str | None) -> None:
        result.meta.update(language=name, language_detected=name is not None)
        if on_language:
            on_language(name)

    for seg in iter_segments(clips, engine_for, options, templated=templated, on_progress=on_progress,
                             on_language=spoken):
        result.segments.append(seg)
        if on_segment:
            on_segment(seg)
    result.meta["timings"] = {"total_s": round(time.perf_counter() - t0, 3)}
    return result
