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


# The finish reason of a prefill (GenerateRequest.prefill_only): the prompt was read, nothing generated.
PREFILL = "prefill"


class TextGenerator(Protocol):
    """A model instance; each `stream` runs on a worker thread of the pool, one at a time per
    pool entry (a batched engine is entered once per sequence it decodes at once)."""

    def stream(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Delta]:
        """Deltas of the assistant's reply; closing the iterator stops generation."""
        ...

    def prefill(self, messages: list[ChatMessage], max_tokens: int) -> Iterator[Delta]:
        """Read the conversation into the model's cache, so that a later `stream` (with the same `max_tokens`)
        whose prompt starts the same way reads only the rest; the user's last message may be unfinished (only
        the part of the prompt more words cannot change is read). One Delta, finish_reason PREFILL."""
        ...


def nothing_prefilled() -> Iterator[Delta]:
    """`prefill` of an engine that keeps no cache between replies: done at once."""
    yield Delta("", 0, PREFILL)
