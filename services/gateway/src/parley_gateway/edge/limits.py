"""Limits per client and per gateway, as plain objects driven by a clock (tested without a stack).

A client is who `ClientIdentity` (client_identity.py) says it is.

- `SessionSlots`: conversation sockets per gateway and per client, held from connect on;
- `SessionTimers`: the deadline for `session.start`, and the idle time of a session;
- the counting itself (`TokenBucket`, `ErrorThrottle`) is in rate_limits.py;
- `RequestLimits`: HTTP API requests and uploads per client and minute, in a moving window
  (the `limits` library, in memory), enforced by `RateLimitMiddleware`.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from parley_gateway.edge.client_identity import ClientIdentity
from parley_gateway.metrics import LIMITED_TOTAL
from parley_gateway.protocol import ErrorCode
from parley_gateway.rate_limits import Clock


class SessionSlots:
    """Conversation sockets open per gateway and per client; a slot is held from connect to close."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self._held: Counter[str] = Counter()

    @property
    def in_use(self) -> int:
        return sum(self._held.values())

    def held(self, client: str) -> int:
        return self._held[client]

    def acquire(self, client: str) -> ErrorCode | None:
        """Take a slot for `client`; the refusal's code when the gateway or the client has none left."""
        if self.in_use >= self.total:
            return ErrorCode.TOO_MANY_SESSIONS
        if self._held[client] >= self.per_client:
            return ErrorCode.TOO_MANY_CLIENT_SESSIONS
        self._held[client] += 1
        return None

    def release(self, client: str) -> None:
        self._held[client] -= 1
        if self._held[client] <= 0:
            del self._held[client]


class SessionTimers:
    """A socket's two deadlines: `session.start` within `start_timeout_s`; then no idle stretch of `idle_s`.

    Idle means no client activity and nothing under way (`busy`: a turn, a reply being made or played).
    """

    def __init__(self, clock: Clock, start_timeout_s: float, idle_s: float) -> None:
        self.clock = clock
        self.start_timeout_s = start_timeout_s
        self.idle_s = idle_s
        self.opened = clock()
        self.started: float | None = None
        self.last_activity = self.opened

    def activity(self) -> None:
        self.last_activity = self.clock()

    def session_started(self) -> None:
        if self.started is None:
            self.started = self.clock()
            self.last_activity = self.started

    def expired(self, busy: bool = False) -> Literal["start_timeout", "idle"] | None:
        now = self.clock()
        if self.started is None:
            return "start_timeout" if now - self.opened >= self.start_timeout_s else None
        if busy:
            self.last_activity = now
            return None
        return "idle" if now - self.last_activity >= self.idle_s else None

    def due_in(self) -> float:
        """Seconds until the next deadline could pass (busy time pushes the idle one on)."""
        if self.started is None:
            return max(0.0, self.opened + self.start_timeout_s - self.clock())
        return max(0.0, self.last_activity + self.idle_s - self.clock())


@dataclass(frozen=True)
class Refusal:
    what: Literal["requests", "uploads"]
    per_minute: int
    retry_after_s: int

    def message(self) -> str:
        noun = "API requests" if self.what == "requests" else "uploads (transcriptions, voices)"
        return f"rate limit: at most {self.per_minute} {noun} a minute per client; try again in {self.retry_after_s} s"


class RequestLimits:
    """HTTP API requests (`/v1/...`) and uploads per client and minute, each a moving window."""

    UPLOADS = frozenset({("POST", "/v1/audio/transcriptions"), ("POST", "/v1/voices")})

    def __init__(self, requests_per_minute: int, uploads_per_minute: int) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._requests = RateLimitItemPerMinute(requests_per_minute)
        self._uploads = RateLimitItemPerMinute(uploads_per_minute)

    def check(self, client: str, method: str, path: str) -> Refusal | None:
        """Count one request; the refusal when it is over a limit (it is then not served)."""
        if not path.startswith("/v1/"):
            return None
        if not self._limiter.hit(self._requests, "requests", client):
            return self._refusal("requests", self._requests, client)
        if (method.upper(), path.rstrip("/")) in self.UPLOADS and not self._limiter.hit(
            self._uploads, "uploads", client
        ):
            return self._refusal("uploads", self._uploads, client)
        return None

    def _refusal(self, what: Literal["requests", "uploads"], item: RateLimitItem, client: str) -> Refusal:
        reset = self._limiter.get_window_stats(item, what, client).reset_time
        return Refusal(what, item.amount, max(1, math.ceil(reset - time.time())))


class RateLimitMiddleware:
    """ASGI middleware: 429 (OpenAI's error shape, with Retry-After) for a client over `RequestLimits`."""

    def __init__(self, app: Any, limits: RequestLimits, clients: ClientIdentity) -> None:
        self.app = app
        self.limits = limits
        self.clients = clients

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.limits.check(self.clients.of(scope), scope["method"], scope["path"])
        if refusal is None:
            await self.app(scope, receive, send)
            return
        LIMITED_TOTAL.labels(f"http_{refusal.what}").inc()
        body = json.dumps(
            {
                "error": {
                    "message": refusal.message(),
                    "type": "rate_limit_error",
                    "param": None,
                    "code": ErrorCode.RATE_LIMITED.value,
                }
            }
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", str(refusal.retry_after_s).encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
