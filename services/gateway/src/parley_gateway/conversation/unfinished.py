"""Whether the words heard at a pause leave the sentence unfinished.

The VAD's turn model judges a pause by how the speech sounds; on flat or synthetic voices it
often takes a first half ("Could you remind me to call ...") for a finished question. The words
say more, and they are known by the time the turn would end (the pause's transcript), so a turn
is only ended early when they agree. Each rule below costs nothing but latency when it is wrong
on a finished sentence (the turn then waits for the silence cap), while a turn ended too early
answers the wrong question, so the rules lean towards "unfinished":

* **No closing punctuation.** Whisper writes a full stop, question or exclamation mark where it
  hears a sentence end, and none where the speech breaks off ("What a good present for",
  "who wrote the famous novel about" heard as "... album out"), or an ellipsis where it trails
  off ("So I was thinking..."). A transcript that does not end on a closing mark, in any script,
  is unfinished.
* **A dangling word** (English only): a preposition, article, conjunction, possessive or filler
  that no English sentence ends on ("the weather in", "a present for", "um").
* **An infinitive without its object** (English only): "to" and one more word ("the best way to
  cook", "remind me to call", "how to play"). Questions that end this way ("Can you recommend a
  good book to read?") are common too, so these words are only *doubtful*: a turn that sounds
  finished waits as a doubtful turn (turns.py), and one that sounds unfinished as long as for a
  dangling word.
"""

from __future__ import annotations

import re
from enum import Enum

from parley_gateway.conversation.language import is_english

_WORD = re.compile(r"[\w']+")
# Where a sentence can end: Latin, CJK full-width, Arabic and Devanagari marks. Closing quotes and
# brackets may follow the mark.
_SENTENCE_END = re.compile(r"[.!?…。！？؟।]+[\"'”’»)\]」』]*\s*$")
# An ellipsis alone is where Whisper hears the speech trail off ("So I was thinking..."), not end.
_TRAILING_OFF = re.compile(r"(?<![.!?])(\.\.\.|…)[\"'”’»)\]」』]*\s*$")
# Words an English sentence does not end on. Prepositions can be stranded ("where are you
# from?"): such a question then waits for the silence cap.
OPEN_ENDINGS = frozenset(
    "a an the and or but nor of to in on at for from with about into onto near between by than because if "  # noqa: SIM905
    "my your our their um uh er erm".split()
)


class Words(Enum):
    """What the words heard at a pause say of the sentence."""

    FINISHED = "finished"
    DOUBTFUL = "doubtful"  # it may have ended: "to" and a verb ("a good book to read?", "remind me to call?")
    UNFINISHED = "unfinished"  # it goes on: no closing mark, a dangling word, nothing intelligible


def read_words(text: str, language: str = "") -> Words:
    """Whether `text`, heard at a pause, reads as a finished sentence or the start of one still being spoken.

    `language`: the transcript's language ("" when unknown, read as English).
    """
    if not intelligible(text):
        return Words.UNFINISHED  # a breath or a click, not a finished question
    if not _SENTENCE_END.search(text) or _TRAILING_OFF.search(text):
        return Words.UNFINISHED
    if not is_english(language):
        return Words.FINISHED
    words = lowered_words(text)
    if words[-1] in OPEN_ENDINGS:
        return Words.UNFINISHED
    if len(words) >= 2 and words[-2] == "to" and not _capitalised_last_word(text):
        return Words.DOUBTFUL
    return Words.FINISHED


def intelligible(text: str) -> bool:
    """Whether a transcript has any word or number in it."""
    return any(c.isalnum() for c in text)


def lowered_words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _capitalised_last_word(text: str) -> bool:
    """ "to Paris", "to London": a place or a name is the object, not a verb waiting for one."""
    last: str = _WORD.findall(text)[-1]
    return last[:1].isupper() or last[:1].isdigit()
