"""The single writer of one WebSocket, so a session's events keep their order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import WebSocket

from parley_gateway.metrics import ERRORS_TOTAL, LIMITED_TOTAL
from parley_gateway.protocol import ErrorCode, error_event
from parley_gateway.rate_limits import ErrorThrottle

log = logging.getLogger(__name__)


class Outbox:
    """The single writer of one WebSocket, so events keep the order they were queued in.

    Bounded: past `max_bytes` waiting to be sent the client is taken as not reading; what waits
    is dropped and `on_overflow` ends the connection. Error events pass `errors` (at most so
    many a second, then one `errors_suppressed` summary a second).
    """

    def __init__(
        self,
        websocket: WebSocket,
        observer: Callable[[dict[str, Any]], None] | None = None,
        max_bytes: int = 0,
        errors: ErrorThrottle | None = None,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self.websocket = websocket
        self.observer = observer  # sees every event (the monitor keeps turns' timings and errors)
        self.max_bytes = max_bytes  # 0: unbounded
        self.errors = errors
        self.on_overflow = on_overflow
        self.queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.queued_bytes = 0
        self.overflowed = False
        self._summary: asyncio.TimerHandle | None = None
        self.task = asyncio.create_task(self._run())

    def send(self, message: dict[str, Any] | bytes) -> None:
        errors = self.errors
        if isinstance(message, dict) and message.get("type") == "error" and errors and not errors.admit():
            if self._summary is None:  # one summary a second says how many were held back
                delay = errors.summary_in() or 0.0
                self._summary = asyncio.get_running_loop().call_later(delay, self._send_summary)
            return
        self.send_now(message)

    def send_now(self, message: dict[str, Any] | bytes) -> None:
        """Queue `message` past the error throttle (a limit's own last word before it closes the socket)."""
        if self.overflowed:
            return
        if isinstance(message, dict):
            if message.get("type") == "error":
                ERRORS_TOTAL.labels(message.get("code", "")).inc()
            if self.observer is not None:
                self.observer(message)
            data: str | bytes = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
        else:
            data = message
        self.queued_bytes += len(data)
        # Past the bound with more than this message waiting: the writer is behind (one big message is not).
        if self.max_bytes and self.queued_bytes > max(self.max_bytes, len(data)):
            self._overflow()
            return
        self.queue.put_nowait(data)

    def _send_summary(self) -> None:
        self._summary = None
        assert self.errors is not None
        count = self.errors.summary()
        if count:
            LIMITED_TOTAL.labels(ErrorCode.ERRORS_SUPPRESSED.value).inc(count)
            message = f"{count} more error(s) were not sent: at most {self.errors.per_second} a second"
            self.send_now({**error_event(ErrorCode.ERRORS_SUPPRESSED, message), "count": count})

    def _overflow(self) -> None:
        """The client does not read: drop what waits, stop writing, and have the connection ended."""
        self.overflowed = True
        LIMITED_TOTAL.labels("not_reading").inc()
        log.warning("a client does not read: over %d bytes wait to be sent to it; disconnecting", self.max_bytes)
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queued_bytes = 0
        self.task.cancel()
        if self.on_overflow is not None:
            self.on_overflow()

    async def _run(self) -> None:
        while (message := await self.queue.get()) is not None:
            self.queued_bytes -= len(message)
            if isinstance(message, bytes):
                await self.websocket.send_bytes(message)
            else:
                await self.websocket.send_text(message)

    async def close(self) -> None:
        """Deliver what is queued (errors held back included in a last summary), then stop."""
        if self._summary is not None:
            self._summary.cancel()
            self._send_summary()
        if self.overflowed or self.task.done():
            return
        self.queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, timeout=5)
        self.task.cancel()
