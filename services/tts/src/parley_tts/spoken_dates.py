"""Dates as a reply in a language says them, for engines that do not read digits themselves.

A numeric date ("03.12.2026", "12/03/2026", "2026-12-03") would otherwise be read as three
numbers ("drei.zwölf.zweitausendsechsundzwanzig"). It is rewritten in the language's long form
from the CLDR data (Babel: "3. Dezember 2026", "3 décembre 2026", "2026年12月3日"), whose numbers
`speech_text.numbers_in_words` then writes out. Days are read as the language reads them where
CLDR's form leaves a number that is not a cardinal: a German day is an ordinal ("am 3. Dezember"
→ "am dritten Dezember"), a French first of the month is "premier".

Day-first order is read for the languages written with spaces, year-first for Chinese, Japanese
and Korean. An impossible date ("31.02.2026") is left as it is written.
"""

from __future__ import annotations

import datetime
import re
from functools import lru_cache

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, get_month_names
from num2words import num2words  # type: ignore[import-untyped]

YEAR_FIRST = frozenset({"zh", "ja", "ko"})
_ISO = re.compile(r"(?<![\d.,/-])(\d{4})-(\d{1,2})-(\d{1,2})(?![\d.,/-]?\d)")
_DAY_FIRST = re.compile(r"(?<![\d.,/-])(\d{1,2})([./])(\d{1,2})\2(\d{4})(?![\d.,/-]?\d)")
_YEAR_FIRST = re.compile(r"(?<![\d.,/-])(\d{4})([./])(\d{1,2})\2(\d{1,2})(?![\d.,/-]?\d)")
# German prepositions after which a day is dative ("am dritten"), else nominative ("der dritte").
_GERMAN_DATIVE = re.compile(r"(?:\b(?:am|vom|zum|im|dem|bis zum|seit dem|ab dem)\s+)$", re.IGNORECASE)


@lru_cache(maxsize=32)
def _known(language: str) -> bool:
    try:
        Locale.parse(language)
    except (UnknownLocaleError, ValueError):
        return False
    return True


def _long(match: re.Match[str], year: int, month: int, day: int, language: str) -> str:
    try:
        date = datetime.date(year, month, day)
    except ValueError:
        return match.group()
    return str(format_date(date, format="long", locale=language))


def _months(language: str) -> str:
    return "|".join(map(re.escape, get_month_names("wide", locale=language).values()))


def _german_days(text: str) -> str:
    def ordinal(match: re.Match[str]) -> str:
        word = str(num2words(int(match.group(1)), lang="de", to="ordinal"))
        if _GERMAN_DATIVE.search(text[: match.start()]):
            word += "n"
        return f"{word} {match.group(2)}"

    return re.sub(rf"(?<![\d.,])(\d{{1,2}})\.\s+({_months('de')})\b", ordinal, text)


def _french_days(text: str) -> str:
    return re.sub(rf"(?<![\d.,])\b1(?:er)?(?=\s+(?:{_months('fr')})\b)", "premier", text)


def _russian_years(text: str) -> str:
    return re.sub(r"(\d{4})\s+г\.", r"\1 года", text)  # CLDR abbreviates "year"


# What each language reads differently from CLDR's long form with cardinal numbers.
_DAY_READERS = {"de": _german_days, "fr": _french_days, "ru": _russian_years}


def dates_written_out(text: str, language: str) -> str:
    """`text` with numeric dates in `language`'s long form and its days as the language says them."""
    if not language or not _known(language) or not any(char.isdigit() for char in text):
        return text
    text = _ISO.sub(lambda m: _long(m, int(m[1]), int(m[2]), int(m[3]), language), text)
    if language in YEAR_FIRST:
        text = _YEAR_FIRST.sub(lambda m: _long(m, int(m[1]), int(m[3]), int(m[4]), language), text)
    else:
        text = _DAY_FIRST.sub(lambda m: _long(m, int(m[4]), int(m[3]), int(m[1]), language), text)
    reader = _DAY_READERS.get(language)
    return reader(text) if reader else text
