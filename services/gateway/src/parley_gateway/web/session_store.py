"""Sessions in NATS JetStream KV, so that any gateway can resume one.

A session's record (its options and its history of turns) lives in the KV bucket
`parley_sessions` under its id. The bucket's TTL is `session_ttl_s`: a session
nobody changed for that long expires. Every write is a compare-and-set on the
revision this gateway last saw, so two gateways never overwrite each other: the
one that finds a newer revision than its own has lost the session to another
(the client resumed it there) and ends its copy.

Resuming needs the id and the resume token given at `session.start`; only the
token's SHA-256 is stored. A wrong token and an unknown id get the same answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from parley_gateway.conversation.history import History, Turn

log = logging.getLogger(__name__)

BUCKET = "parley_sessions"


def new_resume_token() -> str:
    return secrets.token_urlsafe(24)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionRecord(BaseModel):
    id: str
    token_sha256: str
    options: dict[str, Any]  # the session.start fields that shape the conversation
    turns: list[Turn]
    next_seq: int
    owner: str  # the gateway that holds it now
    updated_at: float

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.token_sha256, _digest(token))


class SessionLost(Exception):
    """Another gateway wrote the session since this one last did: the client resumed it there."""


class SessionStore:
    """The KV bucket; `bound` is False until NATS with JetStream answered (sessions then live in memory only)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._kv: KeyValue | None = None
        self._bound = asyncio.Event()

    @property
    def bound(self) -> bool:
        return self._kv is not None

    async def bind(self, nc: NatsClient) -> None:
        js = nc.jetstream()
        try:
            self._kv = await js.key_value(BUCKET)
        except (BucketNotFoundError, NotFoundError):
            self._kv = await js.create_key_value(
                bucket=BUCKET, history=1, ttl=self.ttl_s, description="Parley conversation sessions"
            )
        self._bound.set()
        log.info("sessions are kept in JetStream KV %s (expire after %.0f s idle)", BUCKET, self.ttl_s)

    async def wait_bound(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for the bucket (a gateway that just started binds it within moments of
        joining NATS); whether it is bound. Without JetStream it never is: sessions live in memory only."""
        if self._kv is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bound.wait(), timeout_s)
        return self._kv is not None

    async def load(self, session_id: str) -> tuple[SessionRecord, int] | None:
        if self._kv is None:
            return None
        try:
            entry = await self._kv.get(session_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        try:
            return SessionRecord.model_validate_json(entry.value), entry.revision
        except ValidationError:
            log.warning("session %s: unreadable record in %s; ignored", session_id, BUCKET)
            return None

    async def save(self, record: SessionRecord, revision: int | None) -> int:
        """Write `record` over `revision` (None: a new key); the new revision. Raises SessionLost."""
        assert self._kv is not None
        data = record.model_dump_json().encode()
        try:
            if revision is None:
                return await self._kv.create(record.id, data)
            return await self._kv.update(record.id, data, last=revision)
        except KeyWrongLastSequenceError:
            raise SessionLost(record.id) from None

    async def delete(self, session_id: str) -> None:
        if self._kv is not None:
            await self._kv.delete(session_id)


class StoredSession:
    """One live session's link to its record: saves after each change, one write at a time.

    Changes that arrive during a write are folded into the next one. `on_lost` is
    called once if another gateway took the session over.
    """

    def __init__(
        self,
        store: SessionStore,
        record: SessionRecord,
        revision: int | None,
        history: History,
        on_lost: Callable[[], None],
    ) -> None:
        self.store = store
        self.record = record
        self.revision = revision
        self.history = history
        self.on_lost = on_lost
        self._dirty = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self.lost = False  # another gateway took it over
        self.retired = False  # this copy writes no more (ended, or resumed on another socket here)

    @classmethod
    def new(
        cls, store: SessionStore, session_id: str, token: str, options: dict[str, Any], history: History, owner: str
    ) -> StoredSession:
        record = SessionRecord(
            id=session_id,
            token_sha256=_digest(token),
            options=options,
            turns=[],
            next_seq=0,
            owner=owner,
            updated_at=time.time(),
        )
        return cls(store, record, None, history, lambda: None)

    def changed(self) -> None:
        """The history changed: save it soon."""
        self._dirty.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def _write(self) -> None:
        while self._dirty.is_set() and not (self.lost or self.retired):
            self._dirty.clear()
            if not self.store.bound:
                return  # NATS is away: the session lives in memory; the next change tries again
            self.record.turns = self.history.turns()
            self.record.next_seq = self.history.next_seq
            self.record.updated_at = time.time()
            try:
                self.revision = await self.store.save(self.record, self.revision)
            except SessionLost:
                self.lost = True
                log.info("session %s was resumed on another gateway; ending it here", self.record.id)
                self.on_lost()
            except Exception as exc:  # NATS trouble: keep serving from memory
                log.warning("session %s not saved: %s: %s", self.record.id, type(exc).__name__, exc)

    def retire(self) -> None:
        """No write after this one: the session ended, or another socket on this gateway resumed it."""
        self.retired = True

    async def flush(self) -> None:
        """Wait for the write under way (before the session is handed over or the gateway stops)."""
        if self._writer is not None:
            await asyncio.wait({self._writer}, timeout=2.0)
