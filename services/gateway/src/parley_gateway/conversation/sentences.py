"""Cuts streamed LLM text into pieces worth sending to TTS.

The first piece leaves at the first clause boundary past a minimum length, so the first audio
starts early; later pieces are whole sentences, which synthesise with better prosody. With a word
cap (`first_piece_max_words`) a first sentence that runs on without a clause mark leaves after that
many words, cut before a word an English phrase starts with (an article, a preposition): earlier
audio for a break in the sentence's melody. The cap makes an opening of that many words: after a
first piece shorter than that ("Sure!"), the next piece leaves by the same rules; and until the
pieces hold four times the cap, clause marks still end pieces. Both keep the next audio ready
before what came before it has finished playing: a long sentence written whole after a short
opening would be heard after a gap.

Sentences are found by `sentencex` (Wikimedia's rule-based segmenter: abbreviations such as
"Dr.", "e.g." and "U.S.", decimals, ellipses and quotes are handled by its language rules). On a
stream, a sentence is complete once the segmenter sees another one start after it: all segments
but the last leave, the last waits for more text or for `flush`, which segments it too.

The text is looked at right after each whitespace character, whatever the deltas were. So the
word before is always whole (sentencex reads it: "a.m. And" ends a sentence, "a.m. tomorrow"
does not), and the same text gives the same pieces however it was split: sentencex reads the
whole buffer (which quotes pair up, say), so looking at the ends of deltas could cut elsewhere.
Every cut needs whitespace after it anyway, so this costs no latency. Each look segments only
the unsent text (usually less than a sentence): a few microseconds.

Chinese and Japanese put no space between words or after a sentence ("今天很好。明天下雨！"):
their sentence and clause marks are full-width ("。！？", "，、；："), so the text is looked at
right after each of those and after each ideograph or kana too, where the same holds (what comes
before is whole): a sentence leaves with the first character of the next. The reply's
language picks sentencex's rules ("zh", "ja", "es" with "¿¡", "fr" with its space before "?"
and "!", ...); sentencex falls back to generic rules for a language it has none for.

A clause boundary is a ",", ";", ":" or dash followed by whitespace, so "1,000" and "3.14" are
never cut, or a full-width "，", "、", "；" or "：" (which never sit inside a number); it only
counts for the first piece, and only before the first possible sentence end. A piece without a
single letter ("2." from a numbered list) is not sent alone but joins the next, and no piece
ends on an opening quote or bracket ("«", "“", "「", "¿").

sentencex 1.0.32 panics on an uppercase letter, a non-ASCII space and a period ("D\\u00a0."), so
it is given a copy with such spaces made ASCII (same length, same offsets); should it panic
anyway, the text waits for the next look or for `flush`, and is never lost.
"""

from __future__ import annotations

import re
import unicodedata

from sentencex import segment

# A reply whose language is not known gets the default language's rules (the prompt and voices are English).
from parley_gateway.conversation.language import DEFAULT_LANGUAGE, is_english
from parley_gateway.conversation.unfinished import OPEN_ENDINGS

_CLAUSE_END = re.compile(r"[,;:—–](?=\s)|[，、；：]")
_WHOLE_WORD = re.compile(r"\S+(?=\s)")
# With a word cap, pieces may leave at clause marks until they hold this many times its words.
LEAD_IN_OPENINGS = 4
# Where the text is looked at: after whitespace, and in scripts written without spaces after the
# full-width marks that end a sentence or clause and after every ideograph or kana (each is a
# whole word, or part of one that sentencex never cuts).
_LOOK_AFTER = re.compile(r"[\s。！？，、；：\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


class SentenceChunker:
    def __init__(self, first_clause_min_chars: int, language: str = "", first_piece_max_words: int = 0) -> None:
        self.first_clause_min_chars = first_clause_min_chars
        self.first_piece_max_words = first_piece_max_words  # 0: no cut inside a clause
        self.language = language or DEFAULT_LANGUAGE  # sentencex's rules for it
        self._buffer = ""
        self._emitted = 0
        self._emitted_words = 0

    @property
    def _opening(self) -> bool:
        """Whether the next piece is still part of the reply's opening, which leaves early: the first
        piece, and with a word cap every piece until the pieces sent hold that many words (after a
        short "Sure!" the next sentence would otherwise leave whole, and be heard after a gap)."""
        return self._emitted == 0 or self._emitted_words < self.first_piece_max_words

    @property
    def _lead_in(self) -> bool:
        """Whether the next piece may still leave at a clause mark: the opening, and with a word cap
        until the pieces sent hold LEAD_IN_OPENINGS times as many words. The opening's few seconds of
        audio would otherwise run out before a long sentence after it has been written and spoken."""
        return self._opening or self._emitted_words < LEAD_IN_OPENINGS * self.first_piece_max_words

    def push(self, text: str) -> list[str]:
        pieces: list[str] = []
        start = 0
        for space in _LOOK_AFTER.finditer(text):
            self._buffer += text[start : space.end()]
            start = space.end()
            pieces += self._cut()
        self._buffer += text[start:]
        return pieces

    def flush(self) -> list[str]:
        pieces = self._cut()  # the text's end may be a sentence's end, as whitespace would be
        piece, self._buffer = self._buffer.strip(), ""
        return [*pieces, piece] if piece else pieces

    def _cut(self) -> list[str]:
        pieces: list[str] = []
        while (cut := self._next_cut()) is not None:
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if piece:
                pieces.append(piece)
                self._emitted += 1
                self._emitted_words += len(piece.split())
        return pieces

    def _word_cap_cut(self, lead: int) -> int | None:
        """Where a piece of the opening with no sentence end yet leaves once it has `first_piece_max_words`
        whole words (each followed by whitespace): after its last clause mark if it has one, however
        short, else after that many words, or in English before the last of them (from the third on)
        that a phrase starts with ("that is | a very good question", never "that is a very | good")."""
        words = list(_WHOLE_WORD.finditer(self._buffer, lead))
        if len(words) < self.first_piece_max_words:
            return None
        words = words[: self.first_piece_max_words]
        clauses = list(_CLAUSE_END.finditer(self._buffer, lead, words[-1].end()))
        if clauses:
            return clauses[-1].end()
        if is_english(self.language):
            for index in range(len(words) - 1, 1, -1):
                if words[index].group().lower() in OPEN_ENDINGS:
                    return words[index - 1].end()
        return words[-1].end()

    def _next_cut(self) -> int | None:
        """Where the next piece ends in the buffer, or None while it may still grow."""
        lengths = _segment_lengths(self._buffer, self.language)
        if self._lead_in:
            lead = len(self._buffer) - len(self._buffer.lstrip())
            # Clauses after a possible sentence end wait: that sentence end may come first.
            limit = lengths[0] if len(lengths) > 1 else len(self._buffer)
            for clause in _CLAUSE_END.finditer(self._buffer, lead, limit):
                if clause.start() - lead >= self.first_clause_min_chars:
                    return clause.end()
            if self._opening and self.first_piece_max_words and len(lengths) == 1:
                return self._word_cap_cut(lead)
        end = 0
        # The last segment is never complete: the text after it may still belong to it.
        for length in lengths[:-1]:
            end += length
            if _opens(self._buffer[:end].rstrip()[-1:]):
                # sentencex gives an opening quote with nothing after it yet to the sentence before
                # ("merci. « "): what follows will tell where it belongs.
                return None
            if any(char.isalpha() for char in self._buffer[:end]):
                return end
        return None


def _opens(char: str) -> bool:
    """An opening bracket or quote ("(", "«", "“", "「"), or Spanish's opening "¿" and "¡"."""
    return bool(char) and (unicodedata.category(char) in {"Ps", "Pi"} or char in "¿¡")


def _segment_lengths(text: str, language: str) -> list[int]:
    """The lengths of text's sentences, in order; they add up to len(text)."""
    safe = text if text.isascii() else "".join(" " if char.isspace() and not char.isascii() else char for char in text)
    try:
        sentences: list[str] = segment(language, safe)
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        return [len(text)]
    if "".join(sentences) != safe:  # sentencex keeps every character today; never cut blind if not
        return [len(text)]
    return [len(sentence) for sentence in sentences]
