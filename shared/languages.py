"""Languages Whisper knows (ISO 639-1 codes, plus haw and yue), for validating requests up front."""

import re

WHISPER_LANGUAGES = frozenset(
    [
        "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy", "da", "de",
        "el", "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw", "he", "hi", "hr", "ht",
        "hu", "hy", "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn", "ko", "la", "lb", "ln", "lo", "lt",
        "lv", "mg", "mi", "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl", "nn", "no", "oc", "pa", "pl",
        "ps", "pt", "ro", "ru", "sa", "sd", "si", "sk", "sl", "sn", "so", "sq", "sr", "su", "sv", "sw", "ta",
        "te", "tg", "th", "tk", "tl", "tr", "tt", "uk", "ur", "uz", "vi", "yi", "yo", "zh", "yue",
    ]
)


_ALIASES = {"cmn": "zh", "zho": "zh", "chi": "zh", "eng": "en", "iw": "he"}
_AUTO = {"", "auto", "detect", "none"}


def normalize(code: str | None) -> str | None:
    """`zh-CN` → `zh`, `EN_us` → `en`, `cmn` → `zh`; empty or `auto` → None (detect)."""
    if code is None:
        return None
    base = code.strip().lower().replace("_", "-").split("-")[0]
    if base in _AUTO:
        return None
    return _ALIASES.get(base, base)


# Chinese tags that ask for Traditional characters; `zh`, `zh-CN` and the rest mean Simplified.
_TRADITIONAL_CHINESE = {"tw": "zh-TW", "hk": "zh-HK", "mo": "zh-MO", "hant": "zh-Hant"}


def check(code: str | None) -> str | None:
    """Normalised code (None: detect), or ValueError naming the unknown language.

    Chinese keeps a Traditional region or script (`zh-TW`, `zh-HK`, `zh-Hant`): the ASR stage writes
    those transcripts in Traditional characters and every other `zh` in Simplified.
    """
    base = normalize(code)
    if base is not None and base not in WHISPER_LANGUAGES:
        raise ValueError(f"unknown language {code!r}: use an ISO 639-1 code such as en or zh")
    if base == "zh" and code:
        for tag in code.strip().lower().replace("_", "-").split("-")[1:]:
            if tag in _TRADITIONAL_CHINESE:
                return _TRADITIONAL_CHINESE[tag]
    return base


_HAN = re.compile(r"[\u4e00-\u9fff\u3400-\u4dbf]")
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\uac00-\ud7af]")


_LATIN_WORD = re.compile(r"[A-Za-z]+")


def written_in_chinese(text: str) -> bool:
    """Mostly Han characters (more of them than Latin words), and no kana or hangul (Japanese, Korean)."""
    han = len(_HAN.findall(text))
    return han > len(_LATIN_WORD.findall(text)) and not _KANA_HANGUL.search(text)
