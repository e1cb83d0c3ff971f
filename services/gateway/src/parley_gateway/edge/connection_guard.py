"""One conversation socket's limits, enforced (the rules themselves are in limits.py).

The guard holds the socket's slot (per gateway and per client) from connect to close, runs
a watchdog for the `session.start` deadline and the idle time, and lets the watchdog or the
outbox (a client that does not read) end the connection from outside its read loop:
`receive()` then answers a disconnect, and the loop cleans up as for any other.
It also writes the session's audit lines, from the events the client is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from fastapi import WebSocket

from parley_gateway.config import ConnectionSettings
from parley_gateway.conversation.input_limits import frame_problem
from parley_gateway.conversation.session import ConversationSession
from parley_gateway.edge.audit import AuditLog
from parley_gateway.edge.limits import SessionSlots, SessionTimers
from parley_gateway.metrics import ERRORS_TOTAL, LIMITED_TOTAL
from parley_gateway.protocol import ErrorCode, ProtocolError, error_event, event
from parley_gateway.rate_limits import Clock, ErrorThrottle, TokenBucket

log = logging.getLogger(__name__)

CLOSE_POLICY = 1008  # "policy violation": a limit was broken
CLOSE_TRY_AGAIN_LATER = 1013
MAX_TICK_S = 1.0  # the watchdog looks at least this often (a busy session's idle time restarts)
# Errors that refuse a session (audited as session.refused when no session is open yet).
REFUSALS = {
    ErrorCode.TOO_MANY_SESSIONS,
    ErrorCode.GATEWAY_DRAINING,
    ErrorCode.UNKNOWN_VOICE,
    ErrorCode.VOICE_UNAVAILABLE,
    ErrorCode.SERVICE_UNAVAILABLE,
    ErrorCode.INVALID_EVENT,
    ErrorCode.SESSION_NOT_FOUND,
}

Message = MutableMapping[str, Any]


class ConnectionGuard:
    def __init__(
        self,
        websocket: WebSocket,
        client: str,
        settings: ConnectionSettings,
        slots: SessionSlots,
        audit: AuditLog,
        observer: Callable[[dict[str, Any]], None] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.websocket = websocket
        self.client = client
        self.slots = slots
        self.audit = audit
        self.timers = SessionTimers(clock, settings.start_timeout_s, settings.idle_s)
        self.errors = ErrorThrottle(settings.max_errors_per_second, clock)
        # Seconds of audio: a burst ahead, then at most `audio_rate_factor` times real time.
        self.audio = TokenBucket(settings.audio_rate_burst_s, settings.audio_rate_factor, clock)
        self._audio_dropping = False
        self._input_limits = settings.input
        self.session: ConversationSession | None = None  # set by the read loop once one is open
        self.observer = observer  # also sees every event sent (the monitor)
        self.close_code = 1000
        self.close_reason = ""
        self._clock = clock
        self._slot = False
        self._stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._receiving: asyncio.Future[Message] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        # For the audit log.
        self._session_id: str | None = None
        self._started_at = 0.0
        self._end_reason = "disconnected"
        self._error_count = 0

    async def open(self) -> bool:
        """Take a slot; without one the client is told why and the socket closes (1013: try again later)."""
        code = self.slots.acquire(self.client)
        if code is None:
            self._slot = True
            return True
        if code == ErrorCode.TOO_MANY_SESSIONS:
            message = f"the gateway is at its limit of {self.slots.total} sessions; try again later"
        else:
            message = f"this client already has {self.slots.per_client} conversations open, the most it may"
        LIMITED_TOTAL.labels(code.value).inc()
        ERRORS_TOTAL.labels(code.value).inc()
        self.audit.record("session.refused", self.client, code=code.value)
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.websocket.send_json(error_event(code, message))
            await self.websocket.close(CLOSE_TRY_AGAIN_LATER, "too many sessions")
        return False

    def admit(self, message: Message, session: ConversationSession | None) -> bool:
        """Whether a client frame may go on: False drops audio that comes faster than real time.

        The first frame of a run of dropped ones raises the `audio_too_fast` error instead.
        """
        frame = message.get("bytes")
        if frame is None or session is None:
            return True
        rate = session.options.input_sample_rate
        if frame_problem(self._input_limits, frame, rate) is not None:
            return True  # malformed: the session says what is wrong with it
        if self.audio.take(len(frame) / 2 / rate):
            self._audio_dropping = False
            return True
        LIMITED_TOTAL.labels(ErrorCode.AUDIO_TOO_FAST.value).inc()
        if self._audio_dropping:
            return False
        self._audio_dropping = True
        raise ProtocolError(
            ErrorCode.AUDIO_TOO_FAST,
            f"audio arrives faster than real time (more than {self.audio.capacity:g} s ahead, or over "
            f"{self.audio.rate:g}x): frames are dropped until it slows down",
        )

    def watch(self, send: Callable[[dict[str, Any]], None]) -> None:
        """Start the watchdog; `send` queues an event for the client."""
        self._watchdog = asyncio.create_task(self._watch(send))

    def not_reading(self) -> None:
        """The outbox overflowed: the client does not read what it is sent."""
        self.stop(CLOSE_POLICY, "not reading")

    def stop(self, code: int, reason: str) -> None:
        """End the connection: `receive()` answers a disconnect from now on; the socket closes with `code`."""
        if not self._stopped.done():
            self.close_code, self.close_reason = code, reason
            self._stopped.set_result(None)

    @property
    def stopped(self) -> bool:
        return self._stopped.done()

    async def receive(self) -> Message:
        """The client's next message, or a disconnect once the connection was stopped."""
        if self._receiving is None:
            self._receiving = asyncio.ensure_future(self.websocket.receive())
        waiting: list[asyncio.Future[Any]] = [self._receiving, self._stopped]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if self._stopped.done():
            return {"type": "websocket.disconnect", "code": self.close_code}
        message, self._receiving = self._receiving.result(), None
        self.timers.activity()
        if self.audit.content and message.get("text"):
            self._audit_text(message["text"])
        return message

    def observe(self, message: dict[str, Any]) -> None:
        """Every event the client is sent: the session's start and end, and errors, for the audit log."""
        if self.observer is not None:
            self.observer(message)
        kind = message.get("type")
        if kind == "session.started":
            self.timers.session_started()
            self._session_id = message.get("session_id")
            self._started_at = self._clock()
            self.audit.record(
                "session.start", self.client, session_id=self._session_id, resumed=message.get("resumed") or None
            )
        elif kind == "session.ended":
            self._end_reason = message.get("reason") or "client_ended"
        elif kind == "error":
            self._error_count += 1
            if self._session_id is None and message.get("code") in REFUSALS:
                self.audit.record("session.refused", self.client, code=message.get("code"))
        elif self.audit.content and kind == "transcript.final" and message.get("text"):
            self.audit.said("transcript", self.client, session_id=self._session_id, text=message["text"])
        elif self.audit.content and kind == "response.done":
            self.audit.said(
                "response",
                self.client,
                session_id=self._session_id,
                response_id=message.get("response_id"),
                status=message.get("status"),
                text=message.get("text"),
            )

    def _audit_text(self, raw: str) -> None:
        if len(raw) > 65536 or '"text.input"' not in raw:
            return
        with contextlib.suppress(ValueError):
            data = json.loads(raw)
            if isinstance(data, dict) and data.get("type") == "text.input" and isinstance(data.get("text"), str):
                self.audit.said("text.input", self.client, session_id=self._session_id, text=data["text"])

    async def _watch(self, send: Callable[[dict[str, Any]], None]) -> None:
        while not self.stopped:
            await asyncio.sleep(min(MAX_TICK_S, self.timers.due_in() + 0.01))
            session = self.session
            expired = self.timers.expired(busy=session is not None and session.busy)
            if expired == "start_timeout":
                LIMITED_TOTAL.labels("session_start_timeout").inc()
                send(
                    error_event(
                        ErrorCode.SESSION_START_TIMEOUT,
                        f"no session.start within {self.timers.start_timeout_s:g} s; closing",
                    )
                )
                self.audit.record("session.refused", self.client, code=ErrorCode.SESSION_START_TIMEOUT.value)
                self.stop(CLOSE_POLICY, "no session.start")
            elif expired == "idle":
                LIMITED_TOTAL.labels("session_idle").inc()
                send(event("session.ended", session_id=self._session_id, reason="idle"))
                self.stop(1000, "idle")

    def close(self) -> None:
        """The connection is over: stop the watchdog, give the slot back, write the session's last audit line."""
        for task in (self._watchdog, self._receiving):
            if task is not None:
                task.cancel()
        if self._slot:
            self._slot = False
            self.slots.release(self.client)
        if self._session_id is not None:
            if self.close_reason == "not reading":
                self._end_reason = "not_reading"
            self.audit.record(
                "session.end",
                self.client,
                session_id=self._session_id,
                reason=self._end_reason,
                duration_ms=round((self._clock() - self._started_at) * 1000),
                errors=self._error_count,
                errors_suppressed=self.errors.suppressed or None,
            )
