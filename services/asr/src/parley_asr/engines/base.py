from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from parley.pcm import Float32Array


@dataclass(frozen=True)
class Recognition:
    text: str
    language: str
    # How sure the detection of `language` was; 1.0 when it was asked for or the model knows one language.
    language_probability: float = 1.0
    # How sure the recogniser was of the words: exp(mean token log-probability), 0..1; 0 when it cannot tell.
    confidence: float = 0.0


class SpeechRecognizer(Protocol):
    """One model copy, used by one worker thread at a time (the service keeps a pool of them)."""

    sample_rate: int
    multilingual: bool
    # The ISO 639-1 codes it can transcribe (only "en" for an English-only model).
    languages: frozenset[str]

    def transcribe(
        self, audio: Float32Array, language: str | None, stop: threading.Event | None = None, final: bool = True
    ) -> Recognition:
        """Text of `audio` (mono float32 at `sample_rate`); `language` None means detect.

        A partial (`final` False) may be decoded more cheaply than a final.

        When `stop` is set the recogniser may give up early (its result is then thrown away).
        """
        ...
