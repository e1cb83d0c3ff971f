"""The live sessions of this gateway: opening, resuming, taking over, ending and draining them.

One record per live session: the conversation, its link to the session store (so any gateway
can resume it), and the connection that carries it. A session lives while its socket does;
its record in the store outlives both.

Resume: a `session.start` with `session_id` and `resume_token` continues a session, from this
gateway's live ones (the client came back before its old socket was noticed gone: that one
ends with `resumed_elsewhere`) or from the store. A session resumed on another gateway is
taken over: the store's revision check tells this copy, which ends with `taken_over`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import WebSocket

from parley_gateway.config import ConversationSettings
from parley_gateway.conversation.history import History
from parley_gateway.conversation.session import ConversationSession, new_session_id
from parley_gateway.metrics import SESSIONS_ACTIVE, SESSIONS_TOTAL
from parley_gateway.protocol import ErrorCode, ProtocolError, SessionStart, event
from parley_gateway.routing.model_services import GrpcServices, ServiceError
from parley_gateway.web.outbox import Outbox
from parley_gateway.web.session_store import SessionRecord, SessionStore, StoredSession, new_resume_token

log = logging.getLogger(__name__)

# "Service restart": the client should reconnect (elsewhere, behind a load balancer).
CLOSE_SERVICE_RESTART = 1012
CLOSE_WAIT_S = 5.0  # longest wait to get the close frame out
RESUME_STORE_WAIT_S = 5.0  # longest wait for the session store before a resume is answered (within the start deadline)


@dataclass(frozen=True)
class Connection:
    websocket: WebSocket
    outbox: Outbox


@dataclass
class LiveSession:
    conversation: ConversationSession
    stored: StoredSession | None  # None once it writes no more (ended, or resumed on another socket here)
    connection: Connection | None  # None once its socket is being closed


class SessionRegistry:
    def __init__(self, settings: ConversationSettings, store: SessionStore, gateway_id: str) -> None:
        self.settings = settings
        self.store = store
        self.gateway_id = gateway_id
        self.services: GrpcServices | None = None  # set once the gateway joined NATS
        self.draining = False
        self._live: dict[ConversationSession, LiveSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, session: ConversationSession) -> bool:
        return session in self._live

    def live(self, session: ConversationSession) -> LiveSession | None:
        return self._live.get(session)

    # ---- opening ------------------------------------------------------------------------

    async def open(self, start: SessionStart, connection: Connection) -> ConversationSession:
        """A new session, or a resumed one, for `connection`; raises ProtocolError when refused."""
        if self.draining:
            raise ProtocolError(ErrorCode.GATEWAY_DRAINING, "this gateway is restarting; reconnect")
        services = self.services
        if services is None:
            raise ProtocolError(ErrorCode.SERVICE_UNAVAILABLE, "the gateway is not connected to NATS yet")
        resumed = await self._resumable(start) if start.session_id else None
        options = start if resumed is None else start.over(resumed[0].options)
        # The reply audio rate is fixed for the session's life (a resume elsewhere keeps it).
        if options.output_sample_rate is None:
            options = options.model_copy(update={"output_sample_rate": self.settings.reply.output_sample_rate})
        await _check_voice(services, options.voice or self.settings.reply.voice)
        if resumed is None:
            session_id, token = new_session_id(), new_resume_token()
            history = History(self.settings.history.max_turns, self.settings.history.max_tokens)
            stored = StoredSession.new(
                self.store, session_id, token, options.conversation_options(), history, owner=self.gateway_id
            )
        else:
            record, revision, history = resumed
            session_id, token = record.id, start.resume_token or ""
            record.owner, record.options = self.gateway_id, options.conversation_options()
            stored = StoredSession(self.store, record, revision, history, on_lost=lambda: None)
        session = ConversationSession(
            self.settings,
            services,
            connection.outbox.send,
            options,
            session_id=session_id,
            history=history,
            on_history_change=stored.changed,
        )
        stored.on_lost = lambda: self._end_soon(session, "taken_over")
        stored.changed()  # a new session is resumable at once; a resumed one now belongs here
        self._live[session] = LiveSession(session, stored, connection)
        SESSIONS_TOTAL.inc()
        SESSIONS_ACTIVE.inc()
        log.info("session %s %s", session.id, "resumed" if resumed else "started")
        extra: dict[str, Any] = {}
        if resumed is not None:
            extra["history"] = [{"role": t.role, "content": t.content} for t in history]
        connection.outbox.send(
            event(
                "session.started",
                session_id=session.id,
                resume_token=token,
                resumed=resumed is not None,
                output_sample_rate=session.output_sample_rate,
                input_sample_rate=options.input_sample_rate,
                **extra,
            )
        )
        return session

    async def _resumable(self, start: SessionStart) -> tuple[SessionRecord, int | None, History]:
        """The session `start` resumes: live here (its socket is closed), or from the store; else refused."""
        assert start.session_id is not None
        token = start.resume_token or ""
        refused = ProtocolError(
            ErrorCode.SESSION_NOT_FOUND,
            f"no session {start.session_id} to resume (unknown, expired, or another resume_token); "
            "send session.start without session_id for a new one",
        )
        live = next(
            (x for x in self._live.values() if x.conversation.id == start.session_id and x.stored is not None), None
        )
        if live is not None:
            stored = live.stored
            assert stored is not None
            if not stored.record.token_matches(token):
                raise refused
            # The client came back before its old socket was noticed gone: that one ends here.
            await self.end_connection(live.conversation, "resumed_elsewhere")
            await stored.flush()
            stored.retire()  # the old copy writes no more
            live.stored = None
            return stored.record, stored.revision, live.conversation.history
        # A client that reconnects to a gateway just restarted may come before its store is bound: it
        # waits for it rather than being told its conversation is gone.
        await self.store.wait_bound(RESUME_STORE_WAIT_S)
        found = await self.store.load(start.session_id)
        if found is None or not found[0].token_matches(token):
            raise refused
        record, revision = found
        history = self.settings.history
        return record, revision, History(history.max_turns, history.max_tokens, record.turns, record.next_seq)

    # ---- ending -------------------------------------------------------------------------

    async def end(self, session: ConversationSession) -> None:
        """session.end from the client: the session is over for good (it cannot be resumed)."""
        live = self._live.get(session)
        if live is not None and live.connection is not None:
            live.connection.outbox.send(event("session.ended", session_id=session.id))
        if live is not None and live.stored is not None:
            live.stored.retire()
            live.stored = None
            with contextlib.suppress(Exception):  # NATS away: it expires on its own
                await self.store.delete(session.id)

    async def closed(self, session: ConversationSession) -> None:
        """The session's socket is gone: stop the conversation; its record stays resumable."""
        live = self._live.pop(session, None)
        await session.close()
        if live is None:
            return
        if live.stored is not None:
            await live.stored.flush()
        SESSIONS_ACTIVE.dec()
        log.info("session %s closed", session.id)

    async def end_connection(self, session: ConversationSession, reason: str, code: int = 1000) -> None:
        """Say `session.ended` with `reason` and close the session's socket (its loop then cleans up)."""
        live = self._live.get(session)
        if live is None or live.connection is None:
            return
        connection, live.connection = live.connection, None
        connection.outbox.send(event("session.ended", session_id=session.id, reason=reason))
        await connection.outbox.close()
        with contextlib.suppress(Exception):  # the client may be gone already
            await asyncio.wait_for(connection.websocket.close(code, reason), timeout=CLOSE_WAIT_S)

    def _end_soon(self, session: ConversationSession, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(self.end_connection(session, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, drain_s: float) -> None:
        """Take no new session; end each live one once it is between turns; give up after `drain_s`."""
        self.draining = True
        started = time.monotonic()
        log.info("draining: %d session(s) live, up to %.0f s to finish their turns", len(self._live), drain_s)
        while self._live and time.monotonic() - started < drain_s:
            for live in [x for x in self._live.values() if not x.conversation.busy and x.connection is not None]:
                await self.end_connection(live.conversation, "gateway_draining", CLOSE_SERVICE_RESTART)
            await asyncio.sleep(0.1)
        if self._live:
            log.warning("drain time over: closing %d session(s) mid-turn", len(self._live))
        else:
            log.info("drained in %.1f s", time.monotonic() - started)

    async def close_all(self) -> None:
        for session in list(self._live):
            await session.close()
        for task in list(self._tasks):
            task.cancel()


async def _check_voice(services: GrpcServices, voice: str) -> None:
    """The voice exists and a TTS instance that can speak it is up (the same check that routes replies)."""
    if not voice:
        return
    known = await services.voices()
    if known is not None and voice not in known:
        known = await services.voices(fresh=True)
    # None: no TTS instance can say right now; the first reply will tell.
    if known is not None and voice not in known:
        raise ProtocolError(
            ErrorCode.UNKNOWN_VOICE, f"unknown voice {voice!r}; the TTS service has: {', '.join(sorted(known))}"
        )
    try:
        await services.tts_engines([voice])
    except ServiceError as exc:
        raise ProtocolError(exc.code, exc.message) from None
