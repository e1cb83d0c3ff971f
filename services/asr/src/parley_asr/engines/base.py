from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

from parley.pcm import Float32Array


@dataclass(frozen=True)
class Recognition:
    text: str
    language: str


class SpeechRecognizer(Protocol):
    """One model copy, used by one worker thread at a time (the service keeps a pool of them)."""

    sample_rate: int
    multilingual: bool

    def transcribe(self, audio: Float32Array, language: str | None, stop: threading.Event | None = None) -> Recognition:
        """Text of `audio` (mono float32 at `sample_rate`); `language` None means detect.

        When `stop` is set the recogniser may give up early (its result is then thrown away).
        """
        ...
