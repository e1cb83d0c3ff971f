"""Where a reply's messages and history changes go: live, held back, or dropped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Message = dict[str, Any] | bytes
Send = Callable[[Message], None]


class ReplyOutput:
    """Where a reply's messages and history changes go.

    Live: straight to the client. Held (a reply started on a guess): kept
    until `release()` (the turn really ended) or dropped by `discard()`.
    """

    def __init__(self, send: Send, held: bool) -> None:
        self._send = send
        self._held: list[Message | Callable[[], None]] | None = [] if held else None
        self.discarded = False

    @property
    def held(self) -> bool:
        return self._held is not None

    def send(self, message: Message) -> None:
        self._queue(message)

    def defer(self, change: Callable[[], None]) -> None:
        """Apply a state change now if live, at release if held, never if discarded."""
        self._queue(change)

    def _queue(self, item: Message | Callable[[], None]) -> None:
        if self.discarded:
            return
        if self._held is not None:
            self._held.append(item)
        elif callable(item):
            item()
        else:
            self._send(item)

    def release(self) -> None:
        held, self._held = self._held or [], None
        for item in held:
            self._queue(item)

    def discard(self) -> None:
        self.discarded = True
        self._held = None
