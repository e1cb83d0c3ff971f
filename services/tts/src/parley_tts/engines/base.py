"""Speech synthesisers. A new TTS model is one new module here.

An engine speaks `Utterance`s: text, a voice (one of its built-in voices, or a
stored voice cloned from a recording, which it gets as the prompt codes it
computed once for that voice), a dialogue speaker and a speed. What an engine
remembers between utterances of one conversation or dialogue (FireRedTTS2 keeps
earlier turns as context; Piper keeps nothing) lives in a `Context` the engine
makes and the service keeps, so any copy of the model can go on with it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from parley.pcm import Float32Array

SPEAKERS = 4  # [S1]..[S4]


@dataclass(frozen=True)
class VoiceInfo:
    """A built-in voice of an engine."""

    id: str
    name: str
    language: str  # ISO 639-1; several separated by commas for a voice that speaks many ("en,zh")
    sample_rate: int

    @property
    def languages(self) -> frozenset[str]:
        return frozenset(code.strip() for code in self.language.split(",") if code.strip())


@dataclass(frozen=True)
class StoredVoice:
    """A cloned voice as an engine gets it: the reference's transcript and this engine's prompt codes for it."""

    id: str
    transcript: str
    codes: bytes


@dataclass(frozen=True)
class Utterance:
    text: str
    voice: str | StoredVoice  # a built-in voice id, or a stored voice
    speaker: int = 1  # 1..4: who says it in a dialogue
    speed: float = 1.0


class UnknownVoice(KeyError):
    pass


class UnspeakableText(ValueError):
    """The voice cannot read this text (it would spell out symbols or a script it does not know)."""


class CannotClone(ValueError):
    """This engine cannot speak stored (cloned) voices."""


class Context(Protocol):
    """What an engine remembers of earlier utterances; opaque to the service, but for one call."""

    def cast(self, voices: Mapping[int, str | StoredVoice]) -> None:
        """A dialogue's whole cast (speaker 1..4 -> voice) before its first line: engines that prompt with the
        speakers' voices put them all in first. Must not touch the model (it runs on the event loop)."""
        ...


class SpeechSynthesizer(Protocol):
    """One model copy, used by one worker thread at a time (the service keeps a pool of them)."""

    engine: str
    cloning: bool  # can speak stored voices (and encode references)
    # Languages whose digits the service writes out in words before the engine gets the text; in
    # any other language the engine reads them itself (Piper's espeak-ng does, in every language).
    numbers_written_out: frozenset[str]
    # True: a piece of a streamed reply that breaks off mid-phrase ("The capital") is spoken as it
    # comes. False: it waits to be spoken with the next piece, for a model whose authors speak whole
    # sentences or clauses (parley.text.breaks_off).
    speaks_phrases: bool
    sample_rate: int  # of stored voices' audio; built-in voices say their own

    def voices(self) -> list[VoiceInfo]:
        """Its built-in voices."""
        ...

    def new_context(self) -> Context:
        """Memory for one conversation or dialogue. Must not touch the model: it is called on the event loop."""
        ...

    def synthesize(self, utterance: Utterance, context: Context) -> Iterator[Float32Array]:
        """Mono float32 audio at the voice's rate, as early and as often as the model can.

        Speaking it appends it to `context` (for engines that use context).
        """
        ...

    def encode_reference(self, audio_16k: Float32Array, transcript: str) -> bytes:
        """Prompt codes for a new stored voice, computed once (cloning engines; others raise CannotClone)."""
        ...
