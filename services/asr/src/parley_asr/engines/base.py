from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from parley.pcm import Float32Array


@dataclass(frozen=True)
class Recognition:
    text: str
    language: str


class SpeechRecognizer(Protocol):
    """A blocking recogniser of one utterance; called from worker threads."""

    sample_rate: int
    multilingual: bool

    def transcribe(self, audio: Float32Array, language: str | None) -> Recognition:
        """Text of `audio` (mono float32 at `sample_rate`); `language` None means detect."""
        ...
