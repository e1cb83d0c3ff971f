from __future__ import annotations

import unicodedata

import pytest

from parley.text import normalize_for_speech


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("𝕳𝖊𝖑𝖑𝖔 𝒘𝒐𝒓𝒍𝒅", "Hello world"),  # maths-styled letters
        ("Ｈｅｌｌｏ，ｗｏｒｌｄ！１２３", "Hello,world!123"),  # full-width forms
        ("ﬁne ﬂowers", "fine flowers"),  # ligatures
        ("Wait…", "Wait..."),
        ("already plain, 42% & $5 at 20°C for 3€.", "already plain, 42% & $5 at 20°C for 3€."),
        ("Ça va? Grüße, ñandú", "Ça va? Grüße, ñandú"),  # letters with accents stay (composed)
        ("Cafe\u0301", "Café"),  # ... and decomposed ones are composed
    ],
)
def test_compatibility_forms_fold_to_plain_characters(text: str, spoken: str) -> None:
    assert normalize_for_speech(text) == spoken


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("zero\u200bwidth", "zerowidth"),  # ZWSP (Cf)
        ("soft\u00adware", "software"),  # soft hyphen (Cf): one word, not two
        ("\u200fright\u200e to \u202aleft\u202c", "right to left"),  # bidi marks (Cf)
        ("\ufeffbyte order", "byte order"),  # BOM (Cf)
        ("a\u200db", "ab"),  # ZWJ (Cf)
        ("private\ue000use", "privateuse"),  # Co
        ("lone\ud800surrogate", "lonesurrogate"),  # Cs
        ("un\u0378assigned", "unassigned"),  # Cn
    ],
)
def test_invisible_characters_are_removed(text: str, spoken: str) -> None:
    assert normalize_for_speech(text) == spoken


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("line\nbreak", "line break"),
        ("tab\tand\r\nCRLF", "tab and CRLF"),
        ("nul\x00bell\x07", "nul bell"),  # control characters separate words, then vanish
        ("next\x85line", "next line"),  # NEL is a C1 control character
        ("  many   \n\n spaces\u00a0\u2003here  ", "many spaces here"),
        ("\u2028\u2029", ""),
        ("", ""),
        ("\x00\u200b\t", ""),
    ],
)
def test_whitespace_and_controls_collapse_to_single_spaces(text: str, spoken: str) -> None:
    assert normalize_for_speech(text) == spoken


def test_nothing_invisible_or_control_survives() -> None:
    every_bmp_char = "".join(chr(c) for c in range(0x10000))
    out = normalize_for_speech(every_bmp_char)
    assert {unicodedata.category(c) for c in out}.isdisjoint({"Cc", "Cf", "Co", "Cs", "Cn"})
    assert "  " not in out and out == out.strip()


def test_normalizing_twice_changes_nothing() -> None:
    text = "𝕳𝖊𝖑𝖑𝖔\u200b ﬁne\t\tＡＢＣ \u00adx"
    once = normalize_for_speech(text)
    assert normalize_for_speech(once) == once


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("你好，世界！你好吗？", "你好，世界！你好吗？"),  # CJK text keeps its full-width punctuation
        ("注意：明天；后天", "注意：明天；后天"),
        ("価格はＡＢ１２です！", "価格はAB12です！"),  # ... while its full-width letters and digits fold
        ("ｶﾀｶﾅ｡", "カタカナ。"),  # half-width kana become the usual forms
        ("Ｈｉ，ｔｈｅｒｅ！", "Hi,there!"),  # no CJK: plain NFKC
    ],
)
def test_cjk_text_keeps_its_full_width_punctuation(text: str, spoken: str) -> None:
    assert normalize_for_speech(text) == spoken
