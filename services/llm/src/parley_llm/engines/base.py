from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Delta:
    text: str
    completion_tokens: int
    finish_reason: str = ""  # set on the last delta
    prompt_tokens: int = 0  # set on the last delta


class TextGenerator(Protocol):
    """One model instance; serves one stream at a time from a worker thread."""

    def stream(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Delta]:
        """Deltas of the assistant's reply; closing the iterator stops generation."""
        ...
