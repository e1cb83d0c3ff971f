"""A conversation's history: an append-only log of turns, bounded in count and size.

Turns have stable sequence numbers, so a reply can fix up "its" assistant turn
(to what the user actually heard) after older turns were trimmed away. Trimming
drops the oldest turns once the log holds more than `max_turns` or more than
`max_tokens` (estimated at ~4 characters a token: the budget only has to keep
memory and the LLM prompt bounded, not be exact).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from pydantic import BaseModel

CHARS_PER_TOKEN = 4


class Turn(BaseModel):
    seq: int
    role: str  # "user" | "assistant"
    content: str

    @property
    def tokens(self) -> int:
        return len(self.content) // CHARS_PER_TOKEN + 1


class History:
    def __init__(self, max_turns: int, max_tokens: int, turns: list[Turn] | None = None, next_seq: int = 0) -> None:
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self._turns: deque[Turn] = deque(turns or [])
        self._tokens = sum(turn.tokens for turn in self._turns)
        self.next_seq = max(next_seq, self._turns[-1].seq + 1 if self._turns else 0)
        self._trim()

    def __iter__(self) -> Iterator[Turn]:
        return iter(self._turns)

    def __len__(self) -> int:
        return len(self._turns)

    def append(self, role: str, content: str) -> int:
        """Add a turn; returns its sequence number."""
        turn = Turn(seq=self.next_seq, role=role, content=content)
        self.next_seq += 1
        self._turns.append(turn)
        self._tokens += turn.tokens
        self._trim()
        return turn.seq

    def replace(self, seq: int, content: str) -> bool:
        """Change a turn's text (what was heard of a reply); False if it was trimmed already."""
        for turn in reversed(self._turns):
            if turn.seq == seq:
                self._tokens += len(content) // CHARS_PER_TOKEN - len(turn.content) // CHARS_PER_TOKEN
                turn.content = content
                return True
        return False

    def recent(self, count: int) -> list[Turn]:
        """The last `count` turns, oldest first."""
        return list(self._turns)[-count:] if count > 0 else []

    def turns(self) -> list[Turn]:
        return list(self._turns)

    def _trim(self) -> None:
        # The newest turn always stays, however long it is.
        while len(self._turns) > 1 and (len(self._turns) > self.max_turns or self._tokens > self.max_tokens):
            self._tokens -= self._turns.popleft().tokens


class RecordedHistory:
    """A session's history as its replies write it: every change is reported (the session store saves it)."""

    def __init__(self, history: History, on_change: Callable[[], None] | None = None) -> None:
        self.history = history
        self._on_change = on_change

    def add(self, role: str, content: str) -> int:
        """Append a turn; its sequence number."""
        seq = self.history.append(role, content)
        self._changed()
        return seq

    def replace(self, seq: int, content: str) -> None:
        self.history.replace(seq, content)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()
