"""A request's language: checked, matched to the voice, and used to write numbers out for engines that need it.

A speech request may say the language of its text (ISO 639-1; empty: the voice's own). A voice
speaks the languages it lists (`VoiceInfo.language`); a stored voice speaks every language of the
cloning engine that speaks it (FireRedTTS2 clones across languages), which need not include its
reference's: `voice_library.Voice.languages`.

Piper reads digits itself: espeak-ng phonemises them in the voice's language. FireRedTTS2's
upstream text front end (`clean_text`, the turn and monologue splitters) only maps punctuation and
passes digits to the model's tokenizer as they are. In English and Chinese, its authors' own
languages, we do the same (parity with their reference); in its other languages
(`numbers_written_out`) numbers are written out in words in the request's language with
`num2words` (cardinals and decimals, with the language's decimal mark and digit grouping) before
the text reaches the engine, after numeric dates are put in the language's long form
(`spoken_dates`). Whether the model reads digits well in any language is for a
measurement with its weights to say.
"""

from __future__ import annotations

import re
from functools import lru_cache

import grpc
from num2words import CONVERTER_CLASSES, num2words  # type: ignore[import-untyped]

from parley import refusals
from parley_tts.engines.fireredtts2_text import LANGUAGES as FIREREDTTS2_LANGUAGES
from parley_tts.refusal import Refused
from parley_tts.speech import EngineRuntime
from parley_tts.spoken_dates import dates_written_out

# ISO 639-1, or 639-2/3 for a language without a two-letter code (Whisper detects "haw", "yue").
ISO_639 = re.compile(r"^[a-z]{2,3}$")
# Languages that write a decimal comma (and group thousands with a point or a space).
_DECIMAL_COMMA = frozenset(
    {
        "fr",
        "de",
        "ru",
        "es",
        "it",
        "pt",
        "nl",
        "pl",
        "cs",
        "sk",
        "sl",
        "uk",
        "be",
        "bg",
        "ro",
        "tr",
        "da",
        "sv",
        "no",
        "fi",
        "hu",
        "lt",
        "lv",
        "id",
        "vi",
    }
)
# Digit runs with their grouping and decimals; never part of a word in a script written with spaces
# ("MP3", "4K"), while "3500円" (no spaces in Japanese) is a number.
_SPACED = r"A-Za-z\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff\d"
_POINT_NUMBER = re.compile(rf"(?<![{_SPACED}.,])(\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.(\d+))?(?![{_SPACED}])")
_COMMA_NUMBER = re.compile(rf"(?<![{_SPACED}.,])(\d{{1,3}}(?:[. \u00a0\u202f]\d{{3}})+|\d+)(?:,(\d+))?(?![{_SPACED}])")
# A number longer than this is a code or an id: read digit by digit, as it is written.
MAX_NUMBER_DIGITS = 15


def checked_language(language: str) -> str:
    """The request's language, or "" for the voice's own; refuses what is not an ISO 639 code."""
    if language and not ISO_639.match(language):
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"language {language[:20]!r} is not an ISO 639 code (two or three lowercase letters, e.g. 'en', 'fr')",
        )
    return language


def check_speaks(engine: EngineRuntime, spoken: frozenset[str], language: str, engines: list[EngineRuntime]) -> None:
    """Refuse (FAILED_PRECONDITION) a language the voice does not speak, naming an engine that does."""
    if not language or language in spoken:
        return
    here = [e.name for e in engines if any(language in info.languages for info in e.voices.values())]
    if here:
        hint = f"the {' or '.join(here)} engine here speaks it"
    elif language in FIREREDTTS2_LANGUAGES:
        hint = "the fireredtts2 engine speaks it (PARLEY_TTS_ENGINES=piper,fireredtts2, on a GPU)"
    else:
        hint = "a Piper voice in that language speaks it (PARLEY_TTS_PIPER_VOICES_DIR)"
    raise Refused(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"this voice of the {engine.name} engine speaks {', '.join(sorted(spoken)) or 'no listed language'}, "
        f"not {language!r}: {hint}",
        refusals.LANGUAGE,
    )


@lru_cache(maxsize=64)
def _num2words_language(language: str) -> str | None:
    return language if language in CONVERTER_CLASSES else None


def numbers_in_words(text: str, language: str) -> str:
    """`text` with its numbers written out in `language` (unchanged where num2words has no such language)."""
    lang = _num2words_language(language) if language else None
    if lang is None or not any(char.isdigit() for char in text):
        return text
    comma = language in _DECIMAL_COMMA
    pattern = _COMMA_NUMBER if comma else _POINT_NUMBER

    def spoken(match: re.Match[str]) -> str:
        whole = re.sub(r"\D", "", match.group(1))
        decimals = match.group(2)
        if not whole.isascii() or len(whole) > MAX_NUMBER_DIGITS:
            return match.group()
        try:
            if decimals:
                return str(num2words(float(f"{whole}.{decimals}"), lang=lang))
            return str(num2words(int(whole), lang=lang))
        except (NotImplementedError, OverflowError, ValueError, ArithmeticError):
            return match.group()

    return pattern.sub(spoken, text)


def prepare_text(text: str, language: str, engine: EngineRuntime) -> str:
    """Text as the engine should get it for a request in `language` (already normalised for speech)."""
    if language not in engine.numbers_written_out:
        return text
    return numbers_in_words(dates_written_out(text, language), language)
