"""Cuts streamed LLM text into pieces worth sending to TTS.

The first piece leaves at the first clause boundary past a minimum length, so the first audio
starts early; later pieces are whole sentences, which synthesise with better prosody.

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

A clause boundary is a ",", ";", ":" or dash followed by whitespace, so "1,000" and "3.14" are
never cut; it only counts for the first piece, and only before the first possible sentence end.
A piece without a single letter ("2." from a numbered list) is not sent alone but joins the next.

sentencex 1.0.32 panics on an uppercase letter, a non-ASCII space and a period ("D\\u00a0."), so
it is given a copy with such spaces made ASCII (same length, same offsets); should it panic
anyway, the text waits for the next look or for `flush`, and is never lost.
"""

from __future__ import annotations

import re

from sentencex import segment

# Replies are in English (the default prompt and voices are); sentencex has rules per language.
_LANGUAGE = "en"
_CLAUSE_END = re.compile(r"[,;:—–](?=\s)")
_WHITESPACE = re.compile(r"\s")


class SentenceChunker:
    def __init__(self, first_clause_min_chars: int) -> None:
        self.first_clause_min_chars = first_clause_min_chars
        self._buffer = ""
        self._emitted = 0

    def push(self, text: str) -> list[str]:
        pieces: list[str] = []
        start = 0
        for space in _WHITESPACE.finditer(text):
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
        return pieces

    def _next_cut(self) -> int | None:
        """Where the next piece ends in the buffer, or None while it may still grow."""
        lengths = _segment_lengths(self._buffer)
        if self._emitted == 0:
            lead = len(self._buffer) - len(self._buffer.lstrip())
            # Clauses after a possible sentence end wait: that sentence end may come first.
            limit = lengths[0] if len(lengths) > 1 else len(self._buffer)
            for clause in _CLAUSE_END.finditer(self._buffer, lead, limit):
                if clause.start() - lead >= self.first_clause_min_chars:
                    return clause.end()
        end = 0
        # The last segment is never complete: the text after it may still belong to it.
        for length in lengths[:-1]:
            end += length
            if any(char.isalpha() for char in self._buffer[:end]):
                return end
        return None


def _segment_lengths(text: str) -> list[int]:
    """The lengths of text's sentences, in order; they add up to len(text)."""
    safe = text if text.isascii() else "".join(" " if char.isspace() and not char.isascii() else char for char in text)
    try:
        sentences: list[str] = segment(_LANGUAGE, safe)
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if type(exc).__name__ != "PanicException":
            raise
        return [len(text)]
    if "".join(sentences) != safe:  # sentencex keeps every character today; never cut blind if not
        return [len(text)]
    return [len(sentence) for sentence in sentences]
