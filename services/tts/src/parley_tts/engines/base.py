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


class SpeechSynthesizer(Protocol):
    """A blocking synthesiser; `synthesize` runs in a worker thread."""

    engine: str

    def voices(self) -> list[VoiceInfo]: ...

    def synthesize(self, text: str, voice_id: str, speed: float) -> Iterator[Float32Array]:
        """Mono float32 audio at the voice's sample rate, as early and as often as the model can."""
        ...
