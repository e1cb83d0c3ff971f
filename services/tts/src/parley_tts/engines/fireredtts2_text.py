"""FireRedTTS2's text handling, as upstream's inference code does it (FireRedTeam/FireRedTTS2 at 404f3f6).

Upstream treats text differently in its two modes, and the model was tuned on what those produce:

- **Dialogue** (the post-trained checkpoint): a turn is sent as written. Only a turn longer than 80 words
  (150 characters when it has CJK characters) is split, at sentence ends, into pieces of at most that
  many, each spoken as a turn of its own (`split_turn`).
- **Monologue** (the pre-trained checkpoint): text is normalised (`clean_text`) and split into pieces of
  at most ~400 UTF-8 bytes, at sentence ends, then commas, then spaces, then anywhere (`split_monologue`).

`clean_text` is upstream HEAD's, which drops the curly double quotes “ ”; the PyPI copy of the package
(tts-webui-fireredtts2 0.1.0) is older and turns them into an apostrophe.

Both splitters keep upstream's quirks, because the model is fed exactly what upstream feeds it: an
English turn over the limit is re-joined with single spaces and loses punctuation that follows no words
("Wait... what" becomes "Wait. what"); a sentence over the limit stays whole; a monologue piece may pass
the byte limit by up to three bytes where a multi-byte character straddles it.

`strip_control_tokens` is ours: it removes the model's framing and speaker tokens from user text, so text
cannot end its own frame early or switch the speaker mid-turn (paralinguistic tags such as `<|laugh|>`
stay, as upstream documents them for dialogue text).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable

# The languages upstream's README lists the model as speaking (ISO 639-1); any of its voices,
# cloned ones included, speaks each of them.
LANGUAGES = ("en", "zh", "ja", "ko", "fr", "de", "ru")

# --- the model's control tokens -------------------------------------------------------------------

_CONTROL_TOKENS = re.compile(r"<\|text_start\|>|<\|text_end\|>|\[S\d+\]")
_LEADING_TAG = re.compile(r"^\[S\d+\]")


def strip_control_tokens(text: str) -> str:
    """`text` without `<|text_start|>`, `<|text_end|>` or speaker tags (`[S1]`, `[S2]`, ...)."""
    return _CONTROL_TOKENS.sub("", text)


# --- normalisation (monologue) -----------------------------------------------------------------------

# Upstream maps symbols with a regex alternation in which every multi-character key ("——", "……") comes
# after its single-character prefix, so only single characters are ever replaced: a translation table
# gives the same result.
_SYMBOLS = str.maketrans(
    {
        "\n": "",
        "\t": "",
        "…": ",",
        "“": "",
        "”": "",
        "‘": "'",
        "’": "'",
        "【": "",
        "】": "",
        "[": "",
        "]": "",
        "（": "",
        "）": "",
        "(": "",
        ")": "",
        "・": "",
        "·": "",
        "「": "'",
        "」": "'",
        "《": "'",
        "》": "'",
        "—": "",
        "～": "，",
        "~": "，",
        "：": ",",
        "；": ",",
        ";": ",",
        ":": ",",
        '"': "",
        "！": "，",
        "*": "",
    }
)
_EMOJI = re.compile("[\U0001f600-\U0001f64f\U0001f300-\U0001f5ff\U0001f680-\U0001f6ff\U0001f1e0-\U0001f1ff]+")
_REPEATED_STOPS = re.compile(r"[.,]{2,}")


def clean_text(text: str) -> str:
    """Upstream HEAD's normalisation: trimmed, symbols mapped or dropped, emoji dropped, ".." / ",," made one."""
    text = text.strip().replace("\xa0", "").translate(_SYMBOLS)
    text = _EMOJI.sub("", text)
    return _REPEATED_STOPS.sub(lambda run: run.group()[0], text)


# --- monologue pieces ---------------------------------------------------------------------------------

MONOLOGUE_PIECE_BYTES = 400
_SENTENCE_ENDS = frozenset(".!?。！？")
_COMMAS = frozenset(",，")
_SPACES = frozenset(" ")
_DECIMAL = re.compile(r"(\d+)\.(\d+)")
_PROTECTED_DECIMAL = re.compile(r"<(\d+)_f_(\d+)>")


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _cut_after(pieces: Iterable[str], limit: int, marks: frozenset[str]) -> list[str]:
    """Each piece over `limit` bytes cut after every one of `marks` (each mark stays with the text before it)."""
    out: list[str] = []
    for piece in pieces:
        if _size(piece) <= limit:
            out.append(piece)
            continue
        start = 0
        for index, char in enumerate(piece):
            if char in marks:
                out.append(piece[start : index + 1])
                start = index + 1
        if start < len(piece):
            out.append(piece[start:])
    return out


def _cut_by_size(pieces: Iterable[str], limit: int) -> list[str]:
    """Each piece over `limit` bytes cut as soon as a part reaches `limit` bytes."""
    out: list[str] = []
    for piece in pieces:
        if _size(piece) <= limit:
            out.append(piece)
            continue
        part, size = "", 0
        for char in piece:
            part += char
            size += _size(char)
            if size >= limit:
                out.append(part)
                part, size = "", 0
        if part:
            out.append(part)
    return out


def _speakable(text: str) -> bool:
    return any(not (char.isspace() or char in string.punctuation) for char in text)


def split_monologue(text: str, limit: int = MONOLOGUE_PIECE_BYTES) -> list[str]:
    """Upstream's monologue pieces: `clean_text`, then cut at sentence ends (not inside decimals), commas,
    spaces and finally anywhere until no part passes `limit` bytes, then parts joined back greedily up to
    `limit`. Pieces are trimmed; pieces of only spaces and ASCII punctuation are left out."""
    protected = _DECIMAL.sub(r"<\1_f_\2>", clean_text(text))
    parts = [_PROTECTED_DECIMAL.sub(r"\1.\2", part) for part in _cut_after([protected], limit, _SENTENCE_ENDS)]
    parts = _cut_by_size(_cut_after(_cut_after(parts, limit, _COMMAS), limit, _SPACES), limit)
    pieces: list[str] = []
    current = ""
    for part in parts:
        if _size(current) + _size(part) <= limit:
            current += part
            continue
        if _speakable(current.strip()):
            pieces.append(current.strip())
        current = part
    if _speakable(current.strip()):
        pieces.append(current.strip())
    return pieces


# --- dialogue turns -----------------------------------------------------------------------------------

TURN_WORDS = 80  # an English (non-CJK) turn longer than this is split
TURN_CJK_CHARS = 150  # a turn with CJK characters longer than this (in characters) is split
_CJK = re.compile(r"[\u4e00-\u9fff]")
_ENGLISH_ENDS = re.compile(r"([.!?])")
_CJK_ENDS = re.compile(r"([。！？])")
_CLAUSE_ENDS = re.compile(r"(?<=[,，、;；:：])")


def _sentences(text: str, ends: re.Pattern[str]) -> list[str]:
    """Sentences with their end mark; a mark with no words before it is dropped, as upstream does."""
    parts = ends.split(text)
    sentences = [body.strip() + mark for body, mark in zip(parts[0::2], parts[1::2], strict=False) if body.strip()]
    if parts[-1].strip():
        sentences.append(parts[-1].strip())
    return sentences


def _join(units: list[str], separator: str, measure: Callable[[str], int], limit: int) -> list[str]:
    """Consecutive units joined with `separator` while the join measures at most `limit`."""
    joined: list[str] = []
    current = ""
    for unit in units:
        if not current:
            current = unit
        elif measure(current + separator + unit) <= limit:
            current += separator + unit
        else:
            joined.append(current)
            current = unit
    if current:
        joined.append(current)
    return joined


def _words(text: str) -> int:
    return len(text.split())


def split_turn(
    text: str,
    max_words: int = TURN_WORDS,
    max_cjk_chars: int = TURN_CJK_CHARS,
    *,
    split_long_sentences: bool = False,
) -> list[str]:
    """Upstream's dialogue turn pieces: the turn (a leading speaker tag removed, trimmed) as it is while it is
    short enough, else its sentences joined back up to the limit. A sentence over the limit stays whole,
    unless `split_long_sentences`, which cuts it at clause marks and then between words (CJK: characters)."""
    text = _LEADING_TAG.sub("", text).strip()
    cjk = bool(_CJK.search(text))
    measure, limit, separator = (len, max_cjk_chars, "") if cjk else (_words, max_words, " ")
    if measure(text) <= limit:
        return [text]
    pieces = _join(_sentences(text, _CJK_ENDS if cjk else _ENGLISH_ENDS), separator, measure, limit)
    if not split_long_sentences:
        return pieces
    return [part for piece in pieces for part in _split_long(piece, cjk, measure, limit, separator)]


def _split_long(piece: str, cjk: bool, measure: Callable[[str], int], limit: int, separator: str) -> list[str]:
    if measure(piece) <= limit:
        return [piece]
    clauses = [clause.strip() for clause in _CLAUSE_ENDS.split(piece) if clause.strip()]
    units: list[str] = []
    for clause in clauses:
        if measure(clause) <= limit:
            units.append(clause)
        elif cjk:
            units += [clause[i : i + limit] for i in range(0, len(clause), limit)]
        else:
            words = clause.split()
            units += [" ".join(words[i : i + limit]) for i in range(0, len(words), limit)]
    return _join(units, separator, measure, limit)
