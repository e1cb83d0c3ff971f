"""Makes streamed model text fit to be spoken and shown in a voice UI.

Models love markdown (and small ones, HTML); a voice does not: emphasis
stars, headings, code ticks, bullets, HTML tags and emoji are dropped, and
line breaks become spaces, as the text streams (so nothing waits for the
whole reply), even when a tag is split across deltas. Numbers stay digits:
the TTS front end (espeak-ng for Piper) speaks them in the voice's language.
"""

from __future__ import annotations

import re

_DROP = str.maketrans({c: None for c in "*`#~•_|>"})
_EMOJI = re.compile("[\U0001f000-\U0001faff\u2600-\u27bf\ufe0f\u200d]")
_BULLET = re.compile(r"^\s*(?:[-+]|\d+[.)])\s+")


class SpeechShaper:
    def __init__(self) -> None:
        self._line_start = True
        self._pending = ""  # the start of a line, held until we know if it is a bullet
        self._last_was_space = True
        self._in_tag = False  # inside an HTML tag, which may span deltas

    def push(self, text: str) -> str:
        out: list[str] = []
        for line_index, line in enumerate(text.split("\n")):
            if line_index:  # a line break
                out.append(self._flush_line_start())
                out.append(self._space())
                self._line_start = True
            if self._line_start:
                self._pending += line
                if len(self._pending.strip()) < 4 and line_index == len(text.split("\n")) - 1:
                    continue  # too little to tell a bullet from a word yet
                out.append(self._flush_line_start())
            else:
                out.append(self._clean(line))
        return "".join(out)

    def flush(self) -> str:
        return self._flush_line_start()

    def _flush_line_start(self) -> str:
        if not self._pending:
            return ""
        text, self._pending, self._line_start = _BULLET.sub("", self._pending), "", False
        return self._clean(text)

    def _space(self) -> str:
        if self._last_was_space:
            return ""
        self._last_was_space = True
        return " "

    def _strip_tags(self, text: str) -> str:
        kept: list[str] = []
        for char in text:
            if self._in_tag:
                self._in_tag = char != ">"
            elif char == "<":
                self._in_tag = True
            else:
                kept.append(char)
        return "".join(kept)

    def _clean(self, text: str) -> str:
        text = _EMOJI.sub("", self._strip_tags(text).translate(_DROP))
        if self._last_was_space:
            text = text.lstrip()
        text = re.sub(r"\s{2,}", " ", text)
        if text:
            self._last_was_space = text.endswith(" ")
        return text
