"""Text as a speech synthesiser should get it.

A TTS front end reads code points: styled letters from Unicode's maths block ("𝕳𝖊𝖑𝖑𝖔"),
full-width forms and ligatures are letters it may not know, and invisible characters (zero-width
joiners, bidi marks, soft hyphens, byte-order marks) or control characters can make it stall,
spell or click. `normalize_for_speech` folds the first kind to plain characters with Unicode's
compatibility normalisation (NFKC) and drops the second kind by Unicode general category, both
from the standard library's `unicodedata`, which follows the Unicode database Python ships.
"""

from __future__ import annotations

import unicodedata

# Format (Cf: ZWJ, ZWSP, bidi marks, soft hyphen, BOM, tags), private-use (Co), surrogate (Cs)
# and unassigned (Cn) code points have nothing to say aloud.
_DROPPED_CATEGORIES = frozenset({"Cf", "Co", "Cs", "Cn"})


def normalize_for_speech(text: str) -> str:
    """Returns text in NFKC form, without invisible characters, its whitespace runs one space.

    Control characters (Cc: tabs, line breaks, NUL, ...) separate words like a space would;
    format, private-use, surrogate and unassigned code points are removed without a trace, so
    "soft\\u00adware" stays one word. The result has no leading or trailing whitespace.
    """
    text = unicodedata.normalize("NFKC", text)
    if not (text.isascii() and text.isprintable()):
        kept: list[str] = []
        for char in text:
            category = unicodedata.category(char)
            if category == "Cc":
                kept.append(" ")
            elif category not in _DROPPED_CATEGORIES:
                kept.append(char)
        text = "".join(kept)
    return " ".join(text.split())
