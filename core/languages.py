"""Spoken languages: ISO 639-1 codes and names, mapped to the English name the prompts use.

The prompts say "Transcribe ... in German into German text", so `de`, `DE`, `de-AT`, `German`,
`german` and `Deutsch` must all become "German", and a typo or an invented language must be refused
rather than pasted into the prompt. The table lists the ISO 639-1 languages with a written
standard that Gemma's multilingual training covers (Gemma reports 140+ languages; how well it
transcribes each from speech varies), plus two without an ISO 639-1 code that people ask for
(Cantonese, Filipino).

A small table, not a library: langcodes, pycountry and iso639-lang each add 0.05-0.17 s to a run
(import and first lookup, measured) and 2-24 MB of data, and they accept every ISO 639 language,
Klingon (tlh) included, which is not what the model can do.
"""

from __future__ import annotations

import difflib
import unicodedata

# code -> English name (the name goes into the prompt as is)
LANGUAGES: dict[str, str] = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "bo": "Tibetan", "bs": "Bosnian",
    "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque",
    "fa": "Persian", "fi": "Finnish", "fo": "Faroese", "fr": "French", "fy": "Frisian", "ga": "Irish",
    "gd": "Scottish Gaelic", "gl": "Galician", "gu": "Gujarati", "ha": "Hausa", "he": "Hebrew",
    "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole", "hu": "Hungarian", "hy": "Armenian",
    "id": "Indonesian", "ig": "Igbo", "is": "Icelandic", "it": "Italian", "ja": "Japanese",
    "jv": "Javanese", "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "kn": "Kannada", "ko": "Korean",
    "ku": "Kurdish", "ky": "Kyrgyz", "la": "Latin", "lb": "Luxembourgish", "ln": "Lingala", "lo": "Lao",
    "lt": "Lithuanian", "lv": "Latvian", "mg": "Malagasy", "mi": "Maori", "mk": "Macedonian",
    "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi", "ms": "Malay", "mt": "Maltese",
    "my": "Burmese", "nb": "Norwegian Bokmål", "ne": "Nepali", "nl": "Dutch", "nn": "Norwegian Nynorsk",
    "no": "Norwegian", "ny": "Chichewa", "oc": "Occitan", "or": "Odia", "pa": "Punjabi", "pl": "Polish",
    "ps": "Pashto", "pt": "Portuguese", "qu": "Quechua", "ro": "Romanian", "ru": "Russian",
    "rw": "Kinyarwanda", "sa": "Sanskrit", "sd": "Sindhi", "si": "Sinhala", "sk": "Slovak",
    "sl": "Slovenian", "sm": "Samoan", "sn": "Shona", "so": "Somali", "sq": "Albanian", "sr": "Serbian",
    "st": "Sesotho", "su": "Sundanese", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu",
    "tg": "Tajik", "th": "Thai", "tk": "Turkmen", "tl": "Tagalog", "tr": "Turkish", "tt": "Tatar",
    "ug": "Uyghur", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese", "xh": "Xhosa",
    "yi": "Yiddish", "yo": "Yoruba", "zh": "Chinese", "zu": "Zulu",
    # no ISO 639-1 code: the ISO 639-3 one
    "yue": "Cantonese", "fil": "Filipino",
}

# other names people type -> code: endonyms and common English alternatives
ALIASES: dict[str, str] = {
    "deutsch": "de", "français": "fr", "español": "es", "castellano": "es", "italiano": "it",
    "português": "pt", "nederlands": "nl", "flemish": "nl", "русский": "ru", "polski": "pl",
    "čeština": "cs", "slovenčina": "sk", "magyar": "hu", "română": "ro", "українська": "uk",
    "ελληνικά": "el", "türkçe": "tr", "svenska": "sv", "dansk": "da", "norsk": "no", "suomi": "fi",
    "íslenska": "is", "català": "ca", "euskara": "eu", "galego": "gl", "cymraeg": "cy", "gaeilge": "ga",
    "hrvatski": "hr", "srpski": "sr", "српски": "sr", "български": "bg", "slovenščina": "sl",
    "lietuvių": "lt", "latviešu": "lv", "eesti": "et", "shqip": "sq", "bahasa indonesia": "id",
    "bahasa melayu": "ms", "tiếng việt": "vi", "ไทย": "th", "中文": "zh", "mandarin": "zh",
    "日本語": "ja", "한국어": "ko", "हिन्दी": "hi", "বাংলা": "bn", "اردو": "ur", "العربية": "ar",
    "עברית": "he", "فارسی": "fa", "farsi": "fa", "kiswahili": "sw", "tagalog": "tl", "pilipino": "fil",
    "punjabi": "pa", "panjabi": "pa", "oriya": "or", "sinhalese": "si", "burmese": "my",
    "myanmar": "my", "kirghiz": "ky", "uighur": "ug", "moldovan": "ro", "gaelic": "gd",
    "haitian": "ht", "bokmål": "nb", "bokmal": "nb", "nynorsk": "nn", "nyanja": "ny", "sotho": "st",
    "粵語": "yue", "廣東話": "yue",
}

AUTO = ("auto", "detect")  # what the default means, spelled out (whisper's `-l auto`)


def _key(text: str) -> str:
    """Case, accents and extra spaces do not matter: 'Français', 'francais ' -> 'francais'."""
    decomposed = unicodedata.normalize("NFKD", " ".join(text.split()).casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _index() -> dict[str, str]:
    index: dict[str, str] = {}
    for code, name in LANGUAGES.items():
        index[_key(code)] = code
        index[_key(name)] = code
    for alias, code in ALIASES.items():
        index[_key(alias)] = code
    return index


_INDEX = _index()


def language_name(value: str) -> str | None:
    """The English name for a code (`de`, `DE`, `de-AT`, `pt_BR`) or a name (`german`, `Deutsch`);
    None when it is not a language in the table."""
    key = _key(value)
    code = _INDEX.get(key)
    if code is None and len(key) > 3 and key[2:3] in ("-", "_"):  # a region or script subtag
        code = _INDEX.get(key[:2])
    return LANGUAGES[code] if code else None


def is_auto(value: str) -> bool:
    return _key(value) in AUTO


def closest(value: str) -> str | None:
    """The English name of the language `value` most likely misspells, if any is close."""
    matches = difflib.get_close_matches(_key(value), [k for k in _INDEX if len(k) > 3], n=1, cutoff=0.75)
    return LANGUAGES[_INDEX[matches[0]]] if matches else None


def code_of(name: str) -> str:
    return next(code for code, n in LANGUAGES.items() if n == name)
