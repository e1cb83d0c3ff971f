"""The language a conversation is in, and what follows from it for a reply.

A session started with a `language` keeps it. Without one, the language is learnt from what the
user says: the first final transcript with a detected language sets it, and it stays until the
speaker clearly switches. "Clearly" is one plain rule (`LanguageRule.switches`): another language
was detected with a probability of at least `switch_probability`, on an utterance of at least
`min_switch_audio_s` of audio. Whisper guesses the language of a short "ok" or "ja" badly, and a
name or a loan word can tip one utterance; a single confident, long enough utterance is enough
to follow a speaker who really changed language. Typed turns carry no detection: they keep it.

Language names come from `pycountry` (ISO 639), for instructions and notices a person reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import pycountry

# The language the default prompt, voices and turn rules are made for: a reply in it gets no
# instruction, so an English conversation is exactly what it was before languages were followed.
DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class LanguageRule:
    """When a detected language replaces the one the conversation is in."""

    switch_probability: float = 0.8
    min_switch_audio_s: float = 1.5

    def switches(self, current: str, detected: str, probability: float, audio_s: float) -> bool:
        """Whether an utterance detected as `detected` moves a conversation in `current` to it."""
        if not detected or detected == current:
            return False
        if not current:
            return True  # nothing known yet: the first detection is the best there is
        return probability >= self.switch_probability and audio_s >= self.min_switch_audio_s


class SessionLanguage:
    """The language of one conversation: the one asked for, else the one heard (see the module docstring)."""

    def __init__(self, requested: str | None, rule: LanguageRule) -> None:
        self.requested = requested or ""
        self.rule = rule
        self.current = self.requested

    def heard(self, detected: str, probability: float, audio_s: float) -> bool:
        """A final transcript's language; returns whether the conversation's language changed."""
        if self.requested or not self.rule.switches(self.current, detected, probability, audio_s):
            return False
        self.current = detected
        return True


def base_language(code: str) -> str:
    """The ISO 639 part of a tag ("en_US", "pt-BR" -> "en", "pt"), lowercase."""
    return code.strip().replace("-", "_").split("_")[0].lower()


def is_english(code: str) -> bool:
    """Whether rules written for English words apply to text in `code`: English in any tag form ("en",
    "en-US"), or unknown ("", read as English, the default)."""
    return not code.strip() or base_language(code) == "en"


def language_name(code: str) -> str:
    """The English name of an ISO 639 code ("fr" -> "French"); the code itself when it is unknown."""
    code = base_language(code)
    found = pycountry.languages.get(alpha_2=code) if len(code) == 2 else pycountry.languages.get(alpha_3=code)
    if found is None:
        return code
    # ISO 639-3 names some languages with a period ("Modern Greek (1453-)"): the part before it reads better.
    return str(found.name).split(" (")[0]


def answer_instruction(language: str) -> str:
    """The line that tells the LLM which language to answer in; empty for the default language."""
    if not language or base_language(language) == DEFAULT_LANGUAGE:
        return ""
    return f"Answer in {language_name(language)}."
