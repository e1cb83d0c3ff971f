from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from parley.pcm import Float32Array


@dataclass(frozen=True)
class VoiceInfo:
    id: str
    name: str
    language: str
    sample_rate: int


class UnknownVoice(KeyError):
    pass


class UnspeakableText(ValueError):
    """The voice cannot read this text (it would spell out symbols or a script it does not know)."""


class SpeechSynthesizer(Protocol):
    """One model copy, used by one worker thread at a time (the service keeps a pool of them)."""

    engine: str

    def voices(self) -> list[VoiceInfo]: ...

    def synthesize(self, text: str, voice_id: str, speed: float) -> Iterator[Float32Array]:
        """Mono float32 audio at the voice's sample rate, as early and as often as the model can."""
        ...
