"""Cuts streamed LLM text into pieces worth sending to TTS.

The first piece leaves at the first clause boundary past a minimum length,
so the first audio starts early; later pieces are whole sentences, which
synthesise with better prosody.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s")
_CLAUSE_END = re.compile(r"[,;:—–]\s")


class SentenceChunker:
    def __init__(self, first_clause_min_chars: int) -> None:
        self.first_clause_min_chars = first_clause_min_chars
        self._buffer = ""
        self._emitted = 0

    def push(self, text: str) -> list[str]:
        self._buffer += text
        pieces: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                return pieces
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if piece:
                pieces.append(piece)
                self._emitted += 1

    def flush(self) -> list[str]:
        piece, self._buffer = self._buffer.strip(), ""
        return [piece] if piece else []

    def _next_cut(self) -> int | None:
        sentence = _SENTENCE_END.search(self._buffer)
        if sentence is not None:
            return sentence.end()
        if self._emitted == 0:
            for clause in _CLAUSE_END.finditer(self._buffer):
                if clause.start() >= self.first_clause_min_chars:
                    return clause.end()
        return None
