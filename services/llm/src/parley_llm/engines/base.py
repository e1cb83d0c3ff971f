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
    """A model instance; each `stream` runs on a worker thread of the pool, one at a time per
    pool entry (a batched engine is entered once per sequence it decodes at once)."""

    def stream(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Delta]:
        """Deltas of the assistant's reply; closing the iterator stops generation."""
        ...
