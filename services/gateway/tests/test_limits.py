"""Limits per client and per gateway: the rules on a fake clock, and the gateway app enforcing them (no services)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from parley_gateway.app import create_app
from parley_gateway.config import GatewaySettings
from parley_gateway.edge.access import Access, key_id
from parley_gateway.edge.client_identity import ClientIdentity
from parley_gateway.edge.limits import RequestLimits, SessionSlots, SessionTimers
from parley_gateway.protocol import ErrorCode, ProtocolError, parse_client_event
from parley_gateway.rate_limits import ErrorThrottle, TokenBucket
from parley_gateway.web.outbox import Outbox

KEY, OTHER_KEY = "k" * 24, "o" * 24
TEST_CLIENT_HOST = "testserver"  # the name Starlette's test client sends as Host
pytestmark = pytest.mark.timeout(30)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# ---- the rules --------------------------------------------------------------------------


def test_a_token_bucket_allows_its_burst_then_its_rate() -> None:
    clock = FakeClock()
    audio = TokenBucket(capacity=2.0, rate=1.5, clock=clock)  # 2 s ahead, then 1.5x real time
    assert all(audio.take(0.1) for _ in range(20))
    assert not audio.take(0.1) and audio.wait_s(0.1) == pytest.approx(0.1 / 1.5)
    clock.advance(1.0)
    assert sum(audio.take(0.1) for _ in range(30)) == 15
    clock.advance(60)  # refills only up to the burst
    assert sum(audio.take(0.1) for _ in range(30)) == 20


def test_a_token_bucket_lets_a_cost_above_its_capacity_through_when_full() -> None:
    clock = FakeClock()
    bucket = TokenBucket(capacity=0.5, rate=1.0, clock=clock)
    assert bucket.take(1.0) and not bucket.take(0.1)  # in debt now
    clock.advance(0.55)
    assert not bucket.take(0.1)
    clock.advance(0.1)
    assert bucket.take(0.1)


def test_a_real_time_stream_is_never_refused() -> None:
    clock = FakeClock()
    audio = TokenBucket(capacity=2.0, rate=1.5, clock=clock)
    for _ in range(6000):  # 10 min of 100 ms frames, on time
        assert audio.take(0.1)
        clock.advance(0.1)


def test_errors_past_the_rate_are_counted_and_summed_up_once_a_second() -> None:
    clock = FakeClock()
    errors = ErrorThrottle(per_second=5, clock=clock)
    admitted = sum(errors.admit() for _ in range(200))
    assert admitted == 5 and errors.pending == 195
    assert errors.summary_in() == pytest.approx(1.0)
    clock.advance(1.0)
    assert errors.summary_in() == 0 and errors.summary() == 195
    assert errors.summary_in() is None and errors.summary() == 0
    assert sum(errors.admit() for _ in range(10)) == 5  # refilled over that second
    assert errors.suppressed == 200


def test_session_slots_cap_each_client_and_the_gateway() -> None:
    slots = SessionSlots(total=5, per_client=2)
    assert slots.acquire("ip:1.1.1.1") is None and slots.acquire("ip:1.1.1.1") is None
    assert slots.acquire("ip:1.1.1.1") == ErrorCode.TOO_MANY_CLIENT_SESSIONS
    assert slots.acquire("ip:2.2.2.2") is None and slots.acquire("ip:2.2.2.2") is None
    assert slots.acquire("key:abc") is None
    assert slots.acquire("key:def") == ErrorCode.TOO_MANY_SESSIONS
    slots.release("ip:1.1.1.1")
    assert slots.held("ip:1.1.1.1") == 1 and slots.in_use == 4
    assert slots.acquire("ip:1.1.1.1") is None


def test_a_socket_must_start_a_session_in_time_and_a_session_ends_when_idle() -> None:
    clock = FakeClock()
    timers = SessionTimers(clock, start_timeout_s=10, idle_s=300)
    clock.advance(9.9)
    timers.activity()  # frames that do not start a session do not count
    assert timers.expired() is None and timers.due_in() == pytest.approx(0.1)
    clock.advance(0.1)
    assert timers.expired() == "start_timeout"

    timers = SessionTimers(clock, start_timeout_s=10, idle_s=300)
    clock.advance(5)
    timers.session_started()
    clock.advance(299)
    assert timers.expired() is None
    timers.activity()
    clock.advance(299)
    assert timers.expired() is None
    clock.advance(200)
    assert timers.expired(busy=True) is None  # a reply in progress (or playing) is not idle
    clock.advance(299)
    assert timers.expired() is None and timers.due_in() == pytest.approx(1)
    clock.advance(1)
    assert timers.expired() == "idle"


# ---- who a client is -----------------------------------------------------------------------


def scope(peer: str, headers: dict[str, str] | None = None, query: str = "") -> dict[str, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "client": (peer, 50000), "headers": raw, "query_string": query.encode()}


def test_a_client_is_its_ip_address_and_an_ipv6_client_its_64() -> None:
    ids = ClientIdentity(Access([], [], 60))
    assert ids.of(scope("203.0.113.7")) == "ip:203.0.113.7"
    assert ids.of(scope("2001:db8:1:2:aaaa::1")) == ids.of(scope("2001:db8:1:2:bbbb::9")) == "ip:2001:db8:1:2::/64"
    assert ids.of(scope("::ffff:198.51.100.4")) == "ip:198.51.100.4"
    # Without keys, whatever a client presents as one is nobody's: it stays its address.
    assert ids.of(scope("203.0.113.7", {"authorization": f"Bearer {KEY}"})) == "ip:203.0.113.7"


def test_x_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    proxies = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.1/32")]
    ids = ClientIdentity(Access([], [], 60), proxies)
    forged = {"x-forwarded-for": "198.51.100.1"}
    assert ids.of(scope("203.0.113.7", forged)) == "ip:203.0.113.7"  # not a proxy: the header is ignored
    assert ids.of(scope("10.1.2.3", forged)) == "ip:198.51.100.1"
    # Right to left through the trusted hops; what the client itself wrote (leftmost) is not believed.
    chain = {"x-forwarded-for": "6.6.6.6, 198.51.100.1, 192.0.2.1"}
    assert ids.of(scope("10.1.2.3", chain)) == "ip:198.51.100.1"
    assert ids.of(scope("10.1.2.3", {"x-forwarded-for": "garbage"})) == "ip:10.1.2.3"
    assert ids.of(scope("10.1.2.3")) == "ip:10.1.2.3"


def test_with_keys_a_client_is_its_key_by_a_hash_also_through_a_token() -> None:
    access = Access([KEY, OTHER_KEY], [], 60)
    ids = ClientIdentity(access)
    by_key = ids.of(scope("203.0.113.7", {"authorization": f"Bearer {KEY}"}))
    assert by_key == f"key:{key_id(KEY)}" and KEY not in by_key and len(by_key) == 16
    token, _ = access.mint(KEY)
    assert access.valid_token(token)
    assert ids.of(scope("198.51.100.1", query=f"token={token}")) == by_key  # another address, the same client
    assert ids.of(scope("198.51.100.1", {"x-api-key": OTHER_KEY})) == f"key:{key_id(OTHER_KEY)}" != by_key
    # A token whose key id was changed is not one; a wrong key is no key: both are their address.
    expires, _, signature = token.split(".")
    assert not access.valid_token(f"{expires}.{key_id(OTHER_KEY)}.{signature}")
    assert ids.of(scope("198.51.100.1", {"authorization": "Bearer " + "x" * 24})) == "ip:198.51.100.1"
    # Tokens minted before tokens named their key (expiry.signature) still work, by address.
    legacy = f"{expires}.{access._sign(expires)}"
    assert access.valid_token(legacy) and access.key_id({}, {"token": legacy}) is None


# ---- HTTP API rates ---------------------------------------------------------------------------


def test_api_requests_and_uploads_have_their_own_windows_per_client() -> None:
    limits = RequestLimits(requests_per_minute=4, uploads_per_minute=2)
    assert limits.check("ip:a", "POST", "/v1/audio/transcriptions") is None
    assert limits.check("ip:a", "POST", "/v1/voices") is None
    refused = limits.check("ip:a", "POST", "/v1/audio/transcriptions")
    assert refused is not None and refused.what == "uploads" and 1 <= refused.retry_after_s <= 60
    assert "2 uploads" in refused.message()
    assert limits.check("ip:a", "GET", "/v1/voices") is None  # 4 requests so far
    refused = limits.check("ip:a", "GET", "/v1/voices")
    assert refused is not None and refused.what == "requests"
    assert limits.check("ip:b", "POST", "/v1/voices") is None  # another client
    assert all(limits.check("ip:a", "GET", path) is None for path in ("/", "/healthz", "/static/x.js"))


def test_the_api_answers_429_with_retry_after_in_openais_shape() -> None:
    http = TestClient(create_app(GatewaySettings(api_requests_per_minute=2, allowed_hosts=TEST_CLIENT_HOST)))  # type: ignore[arg-type]
    assert http.get("/v1/nowhere").status_code == 404
    assert http.get("/v1/nowhere").status_code == 404
    refused = http.get("/v1/nowhere")
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["code"] == "rate_limited" and "2 API requests" in refused.json()["error"]["message"]
    assert refused.headers["x-content-type-options"] == "nosniff"
    assert http.get("/healthz").status_code == 200 and http.get("/").status_code == 200  # not counted


def test_with_keys_the_key_check_comes_before_the_rate() -> None:
    http = TestClient(
        create_app(GatewaySettings(api_keys=KEY, api_requests_per_minute=1, allowed_hosts=TEST_CLIENT_HOST))
    )  # type: ignore[arg-type]
    for _ in range(3):
        assert http.get("/v1/voices").status_code == 401  # no key: refused before it is counted
    mine = {"authorization": f"Bearer {KEY}"}
    assert http.post("/v1/auth/token", headers=mine).status_code == 200
    assert http.post("/v1/auth/token", headers=mine).status_code == 429


# ---- what a client is told --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"type": "session.start", "input_sample_rate": 1000}, "bad session.start: input_sample_rate: must be ≥ 8000"),
        ({"type": "text.input"}, "bad text.input: text: is required"),
        ({"type": "text.input", "text": ""}, "bad text.input: text: must not be empty"),
        ({"type": "session.start", "turn_detection": "x"}, "bad session.start: turn_detection: must be 'vad' or"),
        ({"type": "session.start", "vad": {"threshold": "high"}}, "bad session.start: vad.threshold: must be a number"),
        ({"type": "session.start", "zz": 1}, "bad session.start: zz: is not a field of this event"),
    ],
)
def test_validation_errors_name_the_field_and_the_rule(event: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        parse_client_event(json.dumps(event))
    assert refused.value.code == ErrorCode.INVALID_EVENT
    assert refused.value.message.startswith(message)
    assert "pydantic" not in refused.value.message and "http" not in refused.value.message


def test_client_input_is_never_echoed_at_length() -> None:
    for event in (
        {"type": "x" * 1_000_000},
        {"type": "session.start", "y" * 100_000: 1},
        {"type": "session.start", "voice": "../" * 30_000},
    ):
        with pytest.raises(ProtocolError) as refused:
            parse_client_event(json.dumps(event), max_bytes=2_000_000)
        assert len(refused.value.message) < 300, refused.value.message


# ---- the outbox ---------------------------------------------------------------------------------


class StuckSocket:
    """A WebSocket whose client reads nothing: the first send never returns."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.never = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)
        await self.never.wait()

    async def send_text(self, data: str) -> None:
        self.sent.append(data)
        await self.never.wait()


async def test_a_client_that_does_not_read_is_cut_off_not_buffered() -> None:
    socket, cut = StuckSocket(), []
    outbox = Outbox(socket, max_bytes=100_000, on_overflow=lambda: cut.append(True))  # type: ignore[arg-type]
    for _ in range(10):
        outbox.send(bytes(9600))  # 200 ms of 24 kHz audio each
    await asyncio.sleep(0)
    assert not cut and len(socket.sent) == 1
    for _ in range(2):
        outbox.send(bytes(9600))
    assert cut == [True] and outbox.overflowed and outbox.queue.empty() and outbox.queued_bytes == 0
    outbox.send(bytes(9600))  # nothing more is kept
    assert outbox.queue.empty()
    await asyncio.wait_for(outbox.close(), 1)  # returns at once


class ReadingSocket:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def send_text(self, data: str) -> None:
        self.events.append(json.loads(data))

    async def send_bytes(self, data: bytes) -> None:
        pass


async def test_one_message_bigger_than_the_bound_is_not_a_client_that_does_not_read() -> None:
    socket, cut = ReadingSocket(), []
    outbox = Outbox(socket, max_bytes=20_000, on_overflow=lambda: cut.append(True))  # type: ignore[arg-type]
    for _ in range(3):
        outbox.send(bytes(48_000))  # 1 s of 24 kHz audio in one frame
        await asyncio.sleep(0)
    await outbox.close()
    assert not cut and not outbox.overflowed


async def test_an_error_flood_gets_a_few_errors_and_one_summary() -> None:
    socket, clock = ReadingSocket(), FakeClock()
    outbox = Outbox(socket, errors=ErrorThrottle(5, clock))  # type: ignore[arg-type]
    for index in range(200):
        outbox.send({"type": "error", "code": "invalid_json", "message": f"bad {index}"})
    outbox.send({"type": "ping"})  # other events pass
    await outbox.close()  # delivers the summary of what was held back
    errors = [e for e in socket.events if e["type"] == "error"]
    assert [e["message"] for e in errors[:5]] == [f"bad {i}" for i in range(5)]
    assert errors[5]["code"] == "errors_suppressed" and errors[5]["count"] == 195 and len(errors) == 6
    assert {"type": "ping"} in socket.events


# ---- the gateway app: connection limits (no services needed) ------------------------------


def gateway(**settings: Any) -> TestClient:
    return TestClient(create_app(GatewaySettings(allowed_hosts=TEST_CLIENT_HOST, **settings)))  # type: ignore[arg-type]


def receive_until_closed(ws: Any) -> tuple[list[dict[str, Any]], int]:
    events = []
    with pytest.raises(WebSocketDisconnect) as closed:
        while True:
            events.append(ws.receive_json())
    return events, closed.value.code


def first_event_once_a_slot_frees(http: TestClient, within_s: float = 5.0) -> str:
    """The answer to a bad event on a new socket, once the gateway has let go of a closed one.

    A closed test socket frees its slot when the gateway's handler has finished, a moment
    after `close()` returns, so a socket opened at once may still be refused."""
    deadline = time.monotonic() + within_s
    while True:
        with http.websocket_connect("/v1/conversation") as again:
            again.send_text("{}")
            code = str(again.receive_json()["code"])
        if code != "too_many_client_sessions" or time.monotonic() > deadline:
            return code
        time.sleep(0.05)


def test_a_socket_without_session_start_is_closed_after_the_timeout() -> None:
    http = gateway(session_start_timeout_s=0.3)
    started = time.monotonic()
    with http.websocket_connect("/v1/conversation") as ws:
        ws.send_text('{"type": "text.input", "text": "hi"}')  # activity, but no session
        events, code = receive_until_closed(ws)
    assert 0.3 <= time.monotonic() - started < 3
    assert [e["code"] for e in events] == ["session_not_started", "session_start_timeout"] and code == 1008


def test_a_client_gets_a_few_sockets_and_the_gateway_caps_them_all() -> None:
    http = gateway(max_sessions_per_client=2, max_sessions=3)
    with http.websocket_connect("/v1/conversation") as first, http.websocket_connect("/v1/conversation"):
        with http.websocket_connect("/v1/conversation") as third:
            events, code = receive_until_closed(third)
        assert [e["code"] for e in events] == ["too_many_client_sessions"] and code == 1013
        first.close()
        assert first_event_once_a_slot_frees(http) == "invalid_event"  # a slot came free
    other = {"authorization": "Bearer x"}  # no keys: still the same client (its address)
    with (
        http.websocket_connect("/v1/conversation"),
        http.websocket_connect("/v1/conversation"),
        http.websocket_connect("/v1/conversation", headers=other) as third,
    ):
        assert receive_until_closed(third)[0][0]["code"] == "too_many_client_sessions"


def test_with_keys_each_key_is_its_own_client() -> None:
    http = gateway(api_keys=f"{KEY},{OTHER_KEY}", max_sessions_per_client=1)
    token = http.post("/v1/auth/token", headers={"authorization": f"Bearer {KEY}"}).json()["token"]
    with http.websocket_connect("/v1/conversation", headers={"authorization": f"Bearer {KEY}"}):
        with http.websocket_connect(f"/v1/conversation?token={token}") as same_key:
            assert receive_until_closed(same_key)[0][0]["code"] == "too_many_client_sessions"
        with http.websocket_connect("/v1/conversation", headers={"x-api-key": OTHER_KEY}) as other:
            other.send_text("{}")
            assert other.receive_json()["code"] == "invalid_event"


def test_two_hundred_bad_frames_get_a_handful_of_errors() -> None:
    http = gateway(session_start_timeout_s=1.5, max_errors_per_second=5)
    started = time.monotonic()
    with http.websocket_connect("/v1/conversation") as ws:
        for _ in range(200):
            ws.send_text("{not json")
        events, code = receive_until_closed(ws)
    open_s = time.monotonic() - started
    codes = [e["code"] for e in events]
    passed = codes.count("invalid_json")
    # A burst of five, then five a second: a busy machine that reads the frames slowly lets a few more
    # through as the bucket refills, never more than that.
    assert 5 <= passed <= 5 + 5 * open_s and len(events) <= 20, (codes, open_s)
    summaries = [e["count"] for e in events if e["code"] == "errors_suppressed"]
    assert passed + sum(summaries) == 200 and codes[-1] == "session_start_timeout" and code == 1008


def test_the_audit_log_says_who_did_what_without_keys_or_content(caplog: pytest.LogCaptureFixture) -> None:
    http = gateway(api_keys=KEY, session_start_timeout_s=0.2)
    with caplog.at_level(logging.INFO, logger="parley.audit"):
        http.get("/v1/voices")  # no key: 401
        with http.websocket_connect("/v1/conversation", headers={"authorization": f"Bearer {KEY}"}) as ws:
            receive_until_closed(ws)
        http.get("/healthz")  # probes are not audited
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "parley.audit"]
    assert [(line["event"], line.get("status") or line.get("code") or line.get("outcome")) for line in lines] == [
        ("http", 401),
        ("ws.connect", "accepted"),
        ("session.refused", "session_start_timeout"),
        ("ws.close", 1008),
    ]
    assert lines[0]["client"].startswith("ip:") and lines[1]["client"] == f"key:{key_id(KEY)}"
    assert all(KEY not in json.dumps(line) for line in lines)
    assert all(line["ts"].endswith("Z") for line in lines) and lines[0]["path"] == "/v1/voices"
