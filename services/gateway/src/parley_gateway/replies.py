"""One assistant reply: where its output goes, and what of it the user heard."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Played positions this close to the end count as the whole reply (rounding, resampling).
PLAYED_TOLERANCE_MS = 60.0
Message = dict[str, Any] | bytes
Send = Callable[[Message], None]


@dataclass
class SpokenPiece:
    text: str
    start_ms: float  # position in the reply audio
    end_ms: float


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


@dataclass
class Reply:
    """One assistant response, its timing marks, and what of it reached the user."""

    id: str
    user_text: str
    output: ReplyOutput
    turn_end: float | None = None  # when the user's turn ended, on the session's clock (None: not yet)
    timings: dict[str, Any] = field(default_factory=dict)  # known before the reply started
    marks: dict[str, float] = field(default_factory=dict)  # when each stage was reached
    text: str = ""
    pieces: list[SpokenPiece] = field(default_factory=list)
    audio_ms: float = 0.0
    history_index: int | None = None  # where its assistant turn sits in history
    played_ms: float | None = None  # what the client reported having played
    speaker_similarity: float | None = None  # a cloned voice: how much the reply sounded like it
    task: asyncio.Task[None] | None = None

    def mark(self, stage: str, at: float) -> None:
        self.marks.setdefault(stage, at)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def fully_played(self, played_ms: float) -> bool:
        return played_ms + PLAYED_TOLERANCE_MS >= self.audio_ms

    def heard_text(self, played_ms: float) -> str:
        """The part of the reply spoken before `played_ms` (words cut proportionally)."""
        if self.fully_played(played_ms):
            played_ms = self.audio_ms
        heard: list[str] = []
        for piece in self.pieces:
            if played_ms >= piece.end_ms:
                heard.append(piece.text)
            elif played_ms > piece.start_ms:
                words = piece.text.split()
                share = (played_ms - piece.start_ms) / max(1.0, piece.end_ms - piece.start_ms)
                heard.append(" ".join(words[: round(len(words) * share)]))
        return " ".join(h for h in heard if h)

    def stage_timings(self) -> dict[str, Any]:
        """Milliseconds from the end of the user's turn to each stage (0 if it came before)."""
        assert self.turn_end is not None
        out = dict(self.timings)
        for stage, at in self.marks.items():
            out[f"{stage}_ms"] = round(max(0.0, at - self.turn_end) * 1000, 1)
        return out
