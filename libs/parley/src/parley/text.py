"""Text as a speech synthesiser should get it.

A TTS front end reads code points: styled letters from Unicode's maths block ("𝕳𝖊𝖑𝖑𝖔"),
full-width forms and ligatures are letters it may not know, and invisible characters (zero-width
joiners, bidi marks, soft hyphens, byte-order marks) or control characters can make it stall,
spell or click. `normalize_for_speech` folds the first kind to plain characters with Unicode's
compatibility normalisation (NFKC) and drops the second kind by Unicode general category, both
from the standard library's `unicodedata`, which follows the Unicode database Python ships.

Chinese and Japanese text keeps its full-width punctuation ("，！？：；"): NFKC would make it
ASCII, and a CJK front end reads the two differently. FireRedTTS2's (upstream's `clean_text` and
turn splitter, parley_tts.engines.fireredtts2_text) ends CJK sentences only at "。！？" and maps
"！：；" to a full-width "，" pause; with ASCII marks a long Chinese turn would be cut only at "。",
and its model would read ASCII marks inside CJK text, which is not what it was trained on.
Full-width letters and digits ("ＡＢ１２") still become ASCII.
"""

from __future__ import annotations

import re
import unicodedata

# Format (Cf: ZWJ, ZWSP, bidi marks, soft hyphen, BOM, tags), private-use (Co), surrogate (Cs)
# and unassigned (Cn) code points have nothing to say aloud.
_DROPPED_CATEGORIES = frozenset({"Cf", "Co", "Cs", "Cn"})
# Han ideographs, kana (Japanese) and Hangul: text with any of them keeps its full-width punctuation.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
# The punctuation of the Fullwidth Forms block (not its letters and digits); the ideographic space
# is a space to NFKC, which makes it an ASCII one.
_FULLWIDTH_PUNCTUATION = re.compile(r"[\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff60]")


def normalize_for_speech(text: str) -> str:
    """Returns text in NFKC form (CJK text keeps its full-width punctuation), without invisible characters,
    its whitespace runs one space.

    Control characters (Cc: tabs, line breaks, NUL, ...) separate words like a space would;
    format, private-use, surrogate and unassigned code points are removed without a trace, so
    "soft\\u00adware" stays one word. The result has no leading or trailing whitespace.
    """
    text = _nfkc(text)
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


def _nfkc(text: str) -> str:
    """NFKC, except that CJK text keeps its full-width punctuation (see the module docstring)."""
    if text.isascii() or not _CJK.search(text):
        return unicodedata.normalize("NFKC", text)
    parts: list[str] = []
    start = 0
    for mark in _FULLWIDTH_PUNCTUATION.finditer(text):
        parts += [unicodedata.normalize("NFKC", text[start : mark.start()]), mark.group()]
        start = mark.end()
    parts.append(unicodedata.normalize("NFKC", text[start:]))
    return "".join(parts)


def breaks_off(text: str) -> bool:
    """Whether a piece of text stops inside a phrase: it ends on a letter or digit, no mark closing it."""
    stripped = text.rstrip()
    return bool(stripped) and stripped[-1].isalnum()
