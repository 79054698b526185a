"""transcribe --translate: Google's speech-translation prompt, reading its two-part answer, the
spoken-language question when -l is not given, and what each format shows (--bilingual).

The fake engine answers in request order: with no -l the first request of an input is the
spoken-language question, then one request per speech clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gemmapipe.cli.app import run
from gemmapipe.core.engine.parts import Text
from gemmapipe.core.errors import ExitStatus, UsageError
from gemmapipe.core.languages import LANGUAGES
from gemmapipe.core.tasks.transcribe import (
    LANGUAGE_QUESTION,
    TranscribeOptions,
    iter_segments,
    language_grammar,
    read_language,
    split_translation,
)

from fake_engine import FakeEngine, fake_engine  # noqa: F401  (fixture)
from media_factory import recorded_speech, speech_file


def _texts(request: tuple) -> str:  # type: ignore[type-arg]
    return "".join(p.text for p in request[0][0].parts if isinstance(p, Text))


# --- reading the answer -----------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "expected"), [
    ("Hallo Welt.\nEnglish: Hello world.", ("Hallo Welt.", "Hello world.")),  # as asked
    ("Hallo Welt. English: Hello world.", ("Hallo Welt.", "Hello world.")),  # the newline left out
    ("Hallo Welt.English:Hello world.", ("Hallo Welt.", "Hello world.")),
    ("  Hallo Welt.\n\nenglish:   Hello world.  \n", ("Hallo Welt.", "Hello world.")),
    ("**German:** Hallo Welt.\n**English:** Hello world.", ("Hallo Welt.", "Hello world.")),  # markdown labels
    ("Hallo Welt.\nEnglish translation: Hello world.", ("Hallo Welt.", "Hello world.")),
    ("Hallo Welt.\nTranslation: Hello world.", ("Hallo Welt.", "Hello world.")),
    ("Hallo\nWelt.\nEnglish: Hello\nworld.", ("Hallo Welt.", "Hello world.")),  # extra lines, each side
    ("Hallo Welt.\nHello world.", ("Hallo Welt.", "Hello world.")),  # no label: line by line
    ("Hallo Welt.\nHello world.\nHow are you?", ("Hallo Welt.", "Hello world. How are you?")),
    ("Hallo Welt.", ("Hallo Welt.", "")),  # one line, no label: a transcription, not translated
    ("English: Hello world.", ("", "Hello world.")),
    ("Bonjour.\nEnglish：Hello.", ("Bonjour.", "Hello.")),  # a full-width colon
])
def test_split_translation(answer: str, expected: tuple[str, str]) -> None:
    assert split_translation(answer, "English", "German") == expected


def test_split_translation_same_language_keeps_the_line_as_both() -> None:
    assert split_translation("Hello world.", "English", "English") == ("Hello world.", "Hello world.")


def test_split_translation_label_is_the_target_not_any_word() -> None:
    # "Englisch" is not the label "English:", and the source label only goes at the start
    assert split_translation("Ich spreche Englisch: gut.\nEnglish: I speak English: well.", "English", "German") == (
        "Ich spreche Englisch: gut.", "I speak English: well.")


@pytest.mark.parametrize(("answer", "name"), [
    ("German", "German"), ("german.", "German"), (" **French** ", "French"), ("Deutsch", "German"),
    ("The language spoken is Spanish.", "Spanish"), ("Norwegian Bokmål", "Norwegian Bokmål"),
    ("It is Norwegian Nynorsk, I think", "Norwegian Nynorsk"), ("", None), ("no idea", None),
])
def test_read_language(answer: str, name: str | None) -> None:
    assert read_language(answer) == name


def test_language_grammar_admits_exactly_the_names() -> None:
    grammar = language_grammar()
    assert grammar.startswith("root ::= ")
    for name in set(LANGUAGES.values()):
        assert f'"{name}"' in grammar


def test_translation_without_a_template_is_refused() -> None:
    eng = FakeEngine(replies=["x"])
    clip = type("Clip", (), {"start": 0, "end": 16000, "samples": recorded_speech(16000)})()
    options = TranscribeOptions(language="German", translate="English")
    with pytest.raises(UsageError) as err:
        list(iter_segments(iter([clip]), lambda: eng, options, templated=lambda e: False))
    assert err.value.parameter == "translate"


# --- through the command line ------------------------------------------------------------------------


@pytest.mark.usefixtures("fake_model")
def test_translate_json_carries_text_translation_and_the_detected_language(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "talk.wav", [(1.0, 3.0), (5.0, 6.5)], 8.0)
    fake_engine.language = "German"
    fake_engine.replies = ["Hallo Welt.\nEnglish: Hello world.", "Wie geht's? English: How are you?"]
    assert run(["transcribe", "--translate", "en", "-f", "json", str(wav)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(s["text"], s["translation"]) for s in doc["segments"]] == [
        ("Hallo Welt.", "Hello world."), ("Wie geht's?", "How are you?")]
    meta = doc["meta"]
    assert meta["language"] == "German" and meta["language_detected"] is True and meta["translate"] == "English"
    requests = fake_engine[0].requests
    question, q_opts = requests[0]
    assert _texts(requests[0]) == LANGUAGE_QUESTION and q_opts.grammar == language_grammar()
    assert q_opts.max_tokens <= 32
    # the question is about the first clip, as the first transcription lays it out (a KV-cache prefix)
    assert np.array_equal(question[0].parts[0].samples, requests[1][0][0].parts[0].samples)
    prompt = _texts(requests[1])
    assert prompt.startswith("Transcribe the following speech segment in German, then translate it into English.")
    assert "then output the string 'English: ', then the translation in English." in prompt
    assert requests[1][1].max_tokens == 640 and requests[1][1].grammar is None
    assert len(requests) == 3  # the question is asked once per input


@pytest.mark.usefixtures("fake_model")
def test_translate_with_language_given_asks_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "talk.wav", [(1.0, 3.0)], 4.0)
    fake_engine.replies = ["Bonjour.\nJapanese: こんにちは。"]
    assert run(["transcribe", "-l", "fr", "--translate", "ja", "-f", "jsonl", str(wav)]) == 0
    (seg,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (seg["text"], seg["translation"]) == ("Bonjour.", "こんにちは。")
    (request,) = fake_engine[0].requests
    assert "speech segment in French, then translate it into Japanese" in _texts(request)


@pytest.mark.usefixtures("fake_model")
def test_undetected_language_falls_back_to_the_original_language_prompt(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "talk.wav", [(1.0, 3.0)], 4.0)
    fake_engine.language = "mumble"
    fake_engine.replies = ["Hallo.\nEnglish: Hello."]
    assert run(["transcribe", "--translate", "English", "-f", "json", "-v", str(wav)]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["meta"]["language"] is None and doc["meta"]["language_detected"] is False
    assert "in its original language, then translate it into English" in _texts(fake_engine[0].requests[1])
    assert "could not tell the spoken language" in out.err


@pytest.mark.usefixtures("fake_model")
def test_plain_transcription_reports_the_spoken_language(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "talk.wav", [(1.0, 3.0)], 4.0)
    fake_engine.language = "Italian"
    fake_engine.replies = ["ciao a tutti"]
    assert run(["transcribe", "-f", "json", "-v", str(wav)]) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["meta"]["language"] == "Italian" and doc["segments"][0]["text"] == "ciao a tutti"
    assert "translation" not in doc["segments"][0] and "translate" not in doc["meta"]
    assert "talk.wav: spoken language: Italian" in out.err
    # plain transcription keeps the original-language prompt: a wrong guess cannot turn it into a translation
    assert "in its original language" in _texts(fake_engine[0].requests[1])


@pytest.mark.usefixtures("fake_model")
@pytest.mark.parametrize(("fmt", "bilingual", "expected"), [
    ("txt", False, "Hello world.\nHow are you?\n"),
    ("txt", True, "Hallo Welt.\nHello world.\nWie geht's?\nHow are you?\n"),
    ("srt", False, "1\n{t1}\nHello world.\n\n2\n{t2}\nHow are you?\n\n"),
    ("srt", True, "1\n{t1}\nHallo Welt.\nHello world.\n\n2\n{t2}\nWie geht's?\nHow are you?\n\n"),
    ("vtt", True, "WEBVTT\n\n{t1}\nHallo Welt.\nHello world.\n\n{t2}\nWie geht's?\nHow are you?\n\n"),
])
def test_text_formats_show_the_translation(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           fake_engine: list, fmt: str, bilingual: bool,  # noqa: F811
                                           expected: str) -> None:
    wav = speech_file(tmp_path / "talk.wav", [(1.0, 3.0), (5.0, 6.5)], 8.0)
    fake_engine.replies = ["Hallo Welt.\nEnglish: Hello world.", "Wie geht's?\nEnglish: How are you?"]
    args = ["transcribe", "-l", "de", "--translate", "en", "-f", fmt, *(["--bilingual"] if bilingual else [])]
    assert run([*args, str(wav)]) == 0
    out = capsys.readouterr().out
    assert run(["transcribe", "-l", "de", "-f", "json", str(wav)]) == 0  # the same cue times
    segs = json.loads(capsys.readouterr().out)["segments"]
    from gemmapipe.core.writers import format_timestamp

    sep = "," if fmt == "srt" else "."
    t1, t2 = (f"{format_timestamp(s['start_ms'], sep)} --> {format_timestamp(s['end_ms'], sep)}" for s in segs)
    assert out == expected.format(t1=t1, t2=t2)


@pytest.mark.usefixtures("fake_model")
def test_an_untranslated_clip_shows_its_transcription_and_is_flagged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fake_engine: list) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "talk.wav", [(1.0, 3.0)], 4.0)
    fake_engine.replies = ["Hallo Welt."]
    assert run(["transcribe", "-l", "de", "--translate", "en", "-f", "jsonl", str(wav)]) == 0
    seg = json.loads(capsys.readouterr().out)
    assert seg["text"] == "Hallo Welt." and seg["translation"] == "" and "untranslated" in seg["flags"]
    assert run(["transcribe", "-l", "de", "--translate", "en", str(wav)]) == 0
    assert capsys.readouterr().out == "Hallo Welt.\n"


@pytest.mark.usefixtures("fake_model")
@pytest.mark.parametrize(("args", "says"), [
    (["--bilingual"], "--bilingual: needs --translate LANG"),
    (["--translate", "Klingon"], "--translate: unknown language 'Klingon'"),
    (["--translate", "Germn"], "did you mean German (de)?"),
    (["--translate", "auto"], "--translate: unknown language 'auto'"),
])
def test_bad_translate_options_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                fake_engine: list, args: list[str], says: str) -> None:  # noqa: F811
    wav = speech_file(tmp_path / "talk.wav", [(1.0, 3.0)], 4.0)
    assert run(["transcribe", *args, str(wav)]) == ExitStatus.USAGE
    assert says in capsys.readouterr().err
    assert not fake_engine


@pytest.mark.usefixtures("fake_model")
def test_translate_target_from_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               fake_engine: list, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    cfg = tmp_path / "config.toml"
    cfg.write_text('[transcribe]\ntranslate = "Deutsch"\nlanguage = "en"\n')
    monkeypatch.setenv("GEMMAPIPE_CONFIG", str(cfg))
    wav = speech_file(tmp_path / "talk.wav", [(1.0, 3.0)], 4.0)
    fake_engine.replies = ["Hello.\nGerman: Hallo."]
    assert run(["transcribe", "-f", "jsonl", str(wav)]) == 0
    assert json.loads(capsys.readouterr().out)["translation"] == "Hallo."
    assert "into German" in _texts(fake_engine[0].requests[0])


# --- real llama.cpp ---------------------------------------------------------------------------------

@pytest.mark.model
@pytest.mark.usefixtures("cli_env")
def test_tiny_gemma4_translate_and_detect(tiny_gemma4: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The grammar is accepted by llama.cpp and holds a random model's answer to a language name;
    the translation path runs end to end (meaningless text, the right shape)."""
    model, _ = tiny_gemma4
    wav = speech_file(tmp_path / "s.wav", [(0.5, 1.5)], 2.0)
    assert run(["transcribe", "-m", str(model), "-t", "2", "--max-tokens", "8", "--translate", "de", "-f", "json",
                str(wav)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta"]["language"] in set(LANGUAGES.values()) and doc["meta"]["language_detected"] is True
    assert doc["meta"]["translate"] == "German"
    assert all(isinstance(s["translation"], str) for s in doc["segments"])


@pytest.mark.model
def test_the_language_question_shares_the_clip_with_its_transcription(tiny_gemma4: tuple[Path, Path]) -> None:
    """Asking costs the question's tokens, not the clip's: the transcription finds the clip (and what
    precedes it) in llama.cpp's KV cache."""
    from gemmapipe.core.engine.base import EngineConfig
    from gemmapipe.core.engine.local import LocalEngine
    from gemmapipe.core.model import resolve
    from gemmapipe.core.tasks.transcribe import clip_messages, detect_language

    model, mmproj = tiny_gemma4
    pair = resolve(model, mmproj, needs={"audio"})
    samples = recorded_speech(32000)
    options = TranscribeOptions(translate="English", generate=TranscribeOptions().generate)
    options.generate.max_tokens = 4
    with LocalEngine(EngineConfig(model=model, mmproj=mmproj, threads=2), pair, n_ctx=2048) as eng:
        assert detect_language(eng, samples) in set(LANGUAGES.values())
        "".join(eng.generate(clip_messages(samples, options, templated=True, source="German"), options.generate))
        assert eng.stats.prompt_tokens - eng.stats.prompt_evaluated >= 50  # 2 s of audio: 50 tokens reused
