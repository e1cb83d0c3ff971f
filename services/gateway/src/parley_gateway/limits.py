"""Limits per client and per gateway, as plain objects driven by a clock (tested without a stack).

A **client** is its API key when keys are on (`key:<id>`, a hash: the key itself is never kept
or logged), else its IP address (`ip:<address>`; an IPv6 client is its /64, what one host
usually holds). X-Forwarded-For counts only from a peer in `PARLEY_GATEWAY_TRUSTED_PROXIES`.

- `SessionSlots`: conversation sockets per gateway and per client, held from connect on;
- `SessionTimers`: the deadline for `session.start`, and the idle time of a session;
- `TokenBucket`: audio seconds (and `text.input` events) a session may send, with a burst;
- `ErrorThrottle`: error events per second to one connection, and how many were held back;
- `RequestLimits`: HTTP API requests and uploads per client and minute, in a moving window
  (the `limits` library, in memory), enforced by `RateLimitMiddleware`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from parley_gateway.access import Access
from parley_gateway.metrics import LIMITED_TOTAL
from parley_gateway.protocol import ErrorCode

Clock = Callable[[], float]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Where a request's client id is kept in its ASGI scope, once worked out.
SCOPE_KEY = "parley.client"


class ClientIds:
    """Who a request or socket is: `key:<id>` for a valid key or a token minted from one, else `ip:<address>`."""

    def __init__(self, access: Access, trusted_proxies: Sequence[IPNetwork] = ()) -> None:
        self.access = access
        self.trusted = list(trusted_proxies)

    def of(self, scope: MutableMapping[str, Any]) -> str:
        """The client of an ASGI scope (worked out once, then kept in the scope)."""
        known = scope.get(SCOPE_KEY)
        if isinstance(known, str):
            return known
        headers = _headers(scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        key = self.access.key_id(headers, query)
        client = f"key:{key}" if key else f"ip:{self.address(scope)}"
        scope[SCOPE_KEY] = client
        return client

    def address(self, scope: Mapping[str, Any]) -> str:
        peer = scope.get("client")
        address = _ip(peer[0] if peer else "")
        if address is not None and self._trusted(address):
            hops = [hop.strip() for value in _all(scope, b"x-forwarded-for") for hop in value.split(",")]
            # Right to left: each trusted proxy names the one before it; the first other address is the client.
            for hop in reversed(hops):
                found = _ip(hop)
                if found is None:
                    break
                address = found
                if not self._trusted(found):
                    break
        if address is None:
            return "unknown"
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.trusted)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _all(scope: Mapping[str, Any], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == name]


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


class TokenBucket:
    """`capacity` units at most, refilled at `rate` units a second; starts full.

    A cost above the capacity passes when the bucket is full, and leaves it in debt.
    """

    def __init__(self, capacity: float, rate: float, clock: Clock) -> None:
        self.capacity = capacity
        self.rate = rate
        self.clock = clock
        self.tokens = capacity
        self._at = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, cost: float = 1.0) -> bool:
        self._refill()
        if self.tokens + 1e-9 < min(cost, self.capacity):
            return False
        self.tokens -= cost
        return True

    def wait_s(self, cost: float = 1.0) -> float:
        """Seconds until `cost` would pass."""
        self._refill()
        return max(0.0, (min(cost, self.capacity) - self.tokens) / self.rate)


class ErrorThrottle:
    """At most `per_second` error events a second (a burst of as many), then one summary a second.

    `admit()` says whether an error may go; held-back ones are counted, and `summary()` (due
    `SUMMARY_S` after the first of them) gives their number once.
    """

    SUMMARY_S = 1.0

    def __init__(self, per_second: int, clock: Clock) -> None:
        self.per_second = per_second
        self.clock = clock
        self._bucket = TokenBucket(per_second, per_second, clock)
        self.pending = 0  # held back since the last summary
        self.suppressed = 0  # held back in all
        self._first_pending: float | None = None

    def admit(self) -> bool:
        if self._bucket.take():
            return True
        self.pending += 1
        self.suppressed += 1
        if self._first_pending is None:
            self._first_pending = self.clock()
        return False

    def summary_in(self) -> float | None:
        """Seconds until the summary of held-back errors is due; None when none are held back."""
        if self._first_pending is None:
            return None
        return max(0.0, self._first_pending + self.SUMMARY_S - self.clock())

    def summary(self) -> int:
        """How many errors were held back since the last summary (and start counting again)."""
        count, self.pending, self._first_pending = self.pending, 0, None
        return count


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

    def __init__(self, app: Any, limits: RequestLimits, clients: ClientIds) -> None:
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
