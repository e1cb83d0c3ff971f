"""Numeric dates are read as the reply's language says them, not as three numbers."""

from __future__ import annotations

import pytest

from parley_tts.speech_text import numbers_in_words
from parley_tts.spoken_dates import dates_written_out


def spoken(text: str, language: str) -> str:
    return numbers_in_words(dates_written_out(text, language), language)


@pytest.mark.parametrize(
    ("text", "language", "heard"),
    [
        ("Am 03.12.2026 kommt sie.", "de", "Am dritten Dezember zweitausendsechsundzwanzig kommt sie."),
        ("Heute ist der 3. März.", "de", "Heute ist der dritte März."),
        (
            "Vom 1. Januar bis zum 31.01.2027.",
            "de",
            "Vom ersten Januar bis zum einunddreißigsten Januar zweitausendsiebenundzwanzig.",
        ),
        ("Rendez-vous le 01/03/2025.", "fr", "Rendez-vous le premier mars deux mille vingt-cinq."),
        ("Le 1er mai et le 12/03/2025.", "fr", "Le premier mai et le douze mars deux mille vingt-cinq."),
        ("2026-12-03に会いましょう。", "ja", "二千二十六年十二月三日に会いましょう。"),
        ("2026/12/03", "ko", "이천이십육년 십이월 삼일"),
        ("Встреча 03.12.2026.", "ru", "Встреча три декабря две тысячи двадцать шесть года."),
    ],
)
def test_a_numeric_date_is_read_in_the_language(text: str, language: str, heard: str) -> None:
    assert spoken(text, language) == heard


def test_what_is_not_a_date_stays_as_written() -> None:
    assert dates_written_out("Am 31.02.2026 nicht.", "de") == "Am 31.02.2026 nicht."  # no such day
    assert dates_written_out("Tel. 12.03.20261", "de") == "Tel. 12.03.20261"  # more digits: not a date
    assert dates_written_out("Le 03/12/2026.", "") == "Le 03/12/2026."  # no language: as written
    assert dates_written_out("Le 03/12/2026.", "xx") == "Le 03/12/2026."  # a language CLDR does not know
