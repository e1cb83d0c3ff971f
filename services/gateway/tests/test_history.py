from __future__ import annotations

import asyncio

from parley_gateway.conversation.history import History
from parley_gateway.web.session_store import SessionLost, SessionRecord, SessionStore, StoredSession


def test_history_is_bounded_by_count_and_by_size() -> None:
    history = History(max_turns=3, max_tokens=1000)
    for n in range(5):
        history.append("user", f"turn {n}")
    assert [t.content for t in history] == ["turn 2", "turn 3", "turn 4"]
    sized = History(max_turns=100, max_tokens=30)  # ~120 characters
    for n in range(10):
        sized.append("user", f"{n}" * 40)
    assert len(sized) == 2 and sized.turns()[-1].content == "9" * 40
    huge = History(max_turns=100, max_tokens=10)
    huge.append("assistant", "x" * 1000)
    assert len(huge) == 1  # the newest turn stays, however long


def test_a_reply_fixes_its_own_turn_even_after_older_ones_were_trimmed() -> None:
    history = History(max_turns=2, max_tokens=1000)
    history.append("user", "hello")
    seq = history.append("assistant", "a long reply the user cut short")
    history.append("user", "stop")
    assert history.replace(seq, "a long reply") and [t.content for t in history] == ["a long reply", "stop"]
    history.append("assistant", "ok")
    assert not history.replace(seq, "gone")  # trimmed: nothing to fix


def test_a_history_read_back_continues_its_numbering() -> None:
    history = History(max_turns=10, max_tokens=1000)
    history.append("user", "a")
    history.append("assistant", "b")
    again = History(10, 1000, history.turns(), history.next_seq)
    assert again.append("user", "c") == 2


class FakeStore(SessionStore):
    """In memory, with the KV's compare-and-set."""

    def __init__(self) -> None:
        super().__init__(ttl_s=60)
        self.saved: dict[str, tuple[SessionRecord, int]] = {}
        self._kv = object()  # type: ignore[assignment]  # bound

    async def save(self, record: SessionRecord, revision: int | None) -> int:
        current = self.saved.get(record.id)
        if (current[1] if current else None) != revision:
            raise SessionLost(record.id)
        new = (current[1] if current else 0) + 1
        self.saved[record.id] = (record.model_copy(deep=True), new)
        await asyncio.sleep(0)
        return new


async def test_a_stored_session_saves_every_change_and_notices_a_takeover() -> None:
    store, history = FakeStore(), History(10, 1000)
    stored = StoredSession.new(store, "sess_0123456789abcdef", "t" * 24, {"voice": "joe"}, history, owner="gw_a")
    lost: list[bool] = []
    stored.on_lost = lambda: lost.append(True)
    stored.changed()
    history.append("user", "hi")
    stored.changed()
    history.append("assistant", "hello")
    stored.changed()
    await stored.flush()
    record, revision = store.saved["sess_0123456789abcdef"]
    assert [t.content for t in record.turns] == ["hi", "hello"] and revision == stored.revision
    assert record.token_matches("t" * 24) and not record.token_matches("u" * 24)
    # Another gateway resumed it and wrote since.
    store.saved["sess_0123456789abcdef"] = (record, revision + 1)
    history.append("user", "still here?")
    stored.changed()
    await stored.flush()
    assert lost == [True] and stored.lost
