"""`/v1/conversation`: one WebSocket's read loop, from connect to close.

Each frame passes the connection guard (slots, deadlines, audio speed), then goes to its
session: audio to `on_audio`, events by type. `session.start` opens (or resumes) the session
through the registry. Everything the client is sent goes through the socket's one outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from parley_gateway.config import ConnectionSettings
from parley_gateway.conversation.session import ConversationSession
from parley_gateway.edge.audit import AuditLog
from parley_gateway.edge.client_identity import ClientIdentity
from parley_gateway.edge.connection_guard import ConnectionGuard
from parley_gateway.edge.limits import SessionSlots
from parley_gateway.protocol import (
    AudioPlayed,
    AudioPlaying,
    ErrorCode,
    InputCommit,
    ProtocolError,
    ResponseCancel,
    SessionEnd,
    SessionStart,
    TextInput,
    error_event,
    event,
    parse_client_event,
)
from parley_gateway.web.outbox import Outbox
from parley_gateway.web.session_registry import CLOSE_SERVICE_RESTART, CLOSE_WAIT_S, Connection, SessionRegistry

log = logging.getLogger(__name__)


class _EndSession(Exception):
    """session.end: close the connection after the goodbye."""


class ConversationSocket:
    def __init__(
        self,
        settings: ConnectionSettings,
        registry: SessionRegistry,
        clients: ClientIdentity,
        slots: SessionSlots,
        audit: AuditLog,
        observer: Callable[[dict[str, Any]], None],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.clients = clients
        self.slots = slots
        self.audit = audit
        self.observer = observer  # sees every event sent (the monitor)

    async def serve(self, websocket: WebSocket) -> None:
        await websocket.accept()
        if self.registry.draining:
            await websocket.send_json(error_event(ErrorCode.GATEWAY_DRAINING, "this gateway is restarting; reconnect"))
            await websocket.close(CLOSE_SERVICE_RESTART, "gateway restarting; reconnect")
            return
        client = self.clients.of(websocket.scope)
        guard = ConnectionGuard(websocket, client, self.settings, self.slots, self.audit, self.observer)
        if not await guard.open():
            return
        outbox = Outbox(websocket, guard.observe, self.settings.max_outbound_bytes, guard.errors, guard.not_reading)
        guard.watch(outbox.send_now)
        connection = Connection(websocket, outbox)
        session: ConversationSession | None = None
        pinger = asyncio.create_task(self._ping(outbox))
        try:
            while True:
                message = await guard.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    if not guard.admit(message, session):
                        continue
                    session = guard.session = await self._handle(message, session, connection)
                except ProtocolError as exc:
                    outbox.send(error_event(exc.code, exc.message))
                    if exc.code in (ErrorCode.TOO_MANY_SESSIONS, ErrorCode.GATEWAY_DRAINING):
                        break
                except _EndSession:
                    break
                except Exception:
                    # A bug must not end the conversation: say so, keep the session.
                    log.exception("error handling a client message")
                    outbox.send(
                        error_event(ErrorCode.INTERNAL_ERROR, "the server failed on that event; it was dropped")
                    )
        except WebSocketDisconnect:
            pass
        finally:
            pinger.cancel()
            guard.close()
            if session is not None:
                await self.registry.closed(session)
            await outbox.close()
            if websocket.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):
                    # Bounded: a client that does not read never lets the close frame out.
                    await asyncio.wait_for(websocket.close(guard.close_code, guard.close_reason), CLOSE_WAIT_S)

    async def _handle(
        self, message: MutableMapping[str, Any], session: ConversationSession | None, connection: Connection
    ) -> ConversationSession | None:
        """One client frame; returns the session (opened by this frame if it was session.start)."""
        if message.get("bytes") is not None:
            if session is None:
                raise ProtocolError(ErrorCode.SESSION_NOT_STARTED, "send session.start before audio")
            session.on_audio(message["bytes"])
            return session
        s = self.settings
        client_event = parse_client_event(message.get("text") or "", s.max_event_bytes, s.max_event_depth)
        if isinstance(client_event, SessionStart):
            if session is not None:
                raise ProtocolError(ErrorCode.SESSION_ALREADY_STARTED, "this connection already has a session")
            return await self.registry.open(client_event, connection)
        if session is None:
            raise ProtocolError(ErrorCode.SESSION_NOT_STARTED, "send session.start first")
        if isinstance(client_event, TextInput):
            session.on_text(client_event.text)
        elif isinstance(client_event, InputCommit):
            session.on_commit()
        elif isinstance(client_event, ResponseCancel):
            session.on_cancel()
        elif isinstance(client_event, AudioPlaying):
            session.on_audio_playing(client_event.response_id)
        elif isinstance(client_event, AudioPlayed):
            session.on_audio_played(client_event)
        elif isinstance(client_event, SessionEnd):
            await self.registry.end(session)
            raise _EndSession
        return session

    async def _ping(self, outbox: Outbox) -> None:
        # Proxies (RunPod's Cloudflare) drop sockets idle for ~100 s.
        while True:
            await asyncio.sleep(self.settings.ping_interval_s)
            outbox.send(event("ping"))
