"""Limits per client and per gateway, as a client sees them: a gateway with small limits on the stack's services.

With API keys on, a client is its key (a browser's `?token=` counts as the key it was minted
from); `tests/stack.py` lifts the per-client limits of the shared gateway, so they are tested here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.conversation_client import ConversationClient
from tests.speech import silence, speak, wav_bytes
from tests.stack import Stack, free_port

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "limits-test-key-aaaaaaaa", "limits-test-key-bbbbbbbb"
STORYTELLER = (
    "The following is a conversation between a User and a storyteller Assistant who always answers "
    "with long, detailed stories of many sentences."
)
LIMITS = {
    "MAX_SESSIONS_PER_CLIENT": "2",
    "SESSION_START_TIMEOUT_S": "1",
    "SESSION_IDLE_S": "2",
    "AUDIO_RATE_BURST_S": "1",
    "MAX_OUTBOUND_BYTES": "65536",
    "OUTPUT_SAMPLE_RATE": "48000",  # more reply bytes a second: a client that does not read fills up sooner
    "TEXT_INPUTS_PER_MINUTE": "6",
    "TEXT_INPUTS_BURST": "2",
    "MAX_ERRORS_PER_SECOND": "5",
    "PUSH_TO_TALK_MAX_S": "1.5",
    "API_REQUESTS_PER_MINUTE": "6",
    "API_UPLOADS_PER_MINUTE": "1",
    "MAX_EVENT_BYTES": "2000000",  # so that a 1 MB event reaches the type check
}


@dataclass
class Gateway:
    url: str
    ws_url: str
    tokens: dict[str, str]  # key -> a browser token minted from it
    audit_path: Path

    def ws(self, key: str) -> str:
        return f"{self.ws_url}?token={self.tokens[key]}"


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port, state = free_port(), tmp_path_factory.mktemp("limited-gateway")
    env = {
        **os.environ,
        "PARLEY_NATS_URL": stack.nats_url,
        "PARLEY_GATEWAY_PORT": str(port),
        "PARLEY_STATE_DIR": str(state),
        "PARLEY_GATEWAY_API_KEYS": f"{KEY_A},{KEY_B}",
        "PARLEY_GATEWAY_AUDIT_LOG_PATH": str(state / "audit.jsonl"),
        **{f"PARLEY_GATEWAY_{name}": value for name, value in LIMITS.items()},
    }
    log = (state / "gateway.log").open("wb")  # kept for a failure's post-mortem
    process = subprocess.Popen([sys.executable, "-m", "parley_gateway"], env=env, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(f"{url}/readyz", headers={"authorization": f"Bearer {KEY_A}"})
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "the limited gateway never got ready"
            time.sleep(0.1)
        tokens = {}
        for key in (KEY_A, KEY_B):  # one API request of each key's budget
            request = urllib.request.Request(
                f"{url}/v1/auth/token", method="POST", headers={"authorization": f"Bearer {key}"}
            )
            with urllib.request.urlopen(request) as response:
                tokens[key] = json.loads(response.read())["token"]
        yield Gateway(url, f"ws://127.0.0.1:{port}/v1/conversation", tokens, state / "audit.jsonl")
    finally:
        process.kill()
        process.wait()
        log.close()


async def closed(ws: websockets.ClientConnection, timeout_s: float = 10) -> list[dict[str, Any]]:
    """Every event until the server closes the socket."""
    events = []
    async with asyncio.timeout(timeout_s):
        with contextlib.suppress(websockets.ConnectionClosed):  # a close code other than 1000 raises
            async for message in ws:
                if isinstance(message, str):
                    events.append(json.loads(message))
    return events


async def test_a_client_gets_its_share_of_sessions_and_others_still_get_in(gateway: Gateway) -> None:
    async with (
        ConversationClient(gateway.ws(KEY_A)),
        ConversationClient(gateway.ws(KEY_A)),
        websockets.connect(gateway.ws(KEY_A)) as third,
    ):
        events = await closed(third)
        assert [e["code"] for e in events] == ["too_many_client_sessions"], events
        assert third.close_code == 1013
        async with ConversationClient(gateway.ws(KEY_B)) as other:  # another key is another client
            assert other.session["session_id"]


async def test_a_socket_that_never_starts_a_session_is_closed(gateway: Gateway) -> None:
    started = time.monotonic()
    async with websockets.connect(gateway.ws(KEY_A)) as ws:
        events = await closed(ws)
    assert [e["code"] for e in events] == ["session_start_timeout"] and ws.close_code == 1008
    assert 1.0 <= time.monotonic() - started < 4


async def test_an_idle_session_is_ended(gateway: Gateway) -> None:
    async with ConversationClient(gateway.ws(KEY_A)) as conv:
        ended = await conv.wait_for("session.ended", timeout_s=6)
        await asyncio.wait_for(conv.ws.wait_closed(), 5)
    assert ended["reason"] == "idle" and ended["session_id"] == conv.session["session_id"]
    assert conv.ws.close_code == 1000


async def test_audio_faster_than_real_time_is_dropped_with_one_error(gateway: Gateway) -> None:
    async with ConversationClient(gateway.ws(KEY_A)) as conv:
        await conv.stream_audio(silence(3.0), realtime=False)  # 3 s at once; 1 s of burst allowed
        error = await conv.wait_for("error", timeout_s=5)
        assert error["code"] == "audio_too_fast" and "real time" in error["message"]
        await asyncio.sleep(1.0)
        await conv.stream_audio(silence(1.5), realtime=True)  # at the pace of a microphone: all taken
        await asyncio.sleep(0.3)
        assert [e["code"] for e in conv.received.of_type("error")] == ["audio_too_fast"]


async def test_a_client_that_does_not_read_is_disconnected(gateway: Gateway) -> None:
    # A small receive window (and segment size), so that the kernel holds little of what the gateway writes.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 88)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(gateway.url.rpartition(":")[2])))
    before = await limited(gateway, "not_reading")
    async with websockets.connect(gateway.ws(KEY_B), sock=sock, max_queue=1) as ws:
        await ws.send(json.dumps({"type": "session.start", "system_prompt": STORYTELLER}))
        await ws.send(json.dumps({"type": "text.input", "text": "Tell me a long story about a dragon and a castle."}))
        # The kernel's send buffer on loopback swallows a short reply whole: ask for more (within the
        # text rate, one every 10 s) until the gateway's own queue has to hold it.
        deadline, asked = time.monotonic() + 90, time.monotonic()
        with contextlib.suppress(websockets.ConnectionClosed):  # it may hang up while we ask
            while await limited(gateway, "not_reading") == before:  # reading nothing meanwhile
                assert time.monotonic() < deadline, "the gateway kept buffering for a client that does not read"
                if time.monotonic() - asked > 10:
                    await ws.send(json.dumps({"type": "text.input", "text": "Go on with the story, please."}))
                    asked = time.monotonic()
                await asyncio.sleep(0.2)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)  # now it reads: what was in flight, then the close
    # The close frame says why, when it gets through the full buffers (else the connection is cut).
    # Disconnected, not buffered forever: by its outbound bound (1008 "not reading", when the close frame
    # gets through the full buffers), or, when the kernel's buffers swallowed the replies, by the
    # keep-alive ping it never answered. The bound itself is unit-tested (test_limits.py).
    received = ws.protocol.close_rcvd
    if await limited(gateway, "not_reading") > before and received is not None:
        assert received.code == 1008 and received.reason == "not reading", received


async def limited(gateway: Gateway, limit: str) -> float:
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {KEY_A}"})).text
    line = f'parley_gateway_limited_total{{limit="{limit}"}} '
    return sum(float(row.removeprefix(line)) for row in metrics.splitlines() if row.startswith(line))


async def test_typed_turns_are_rate_limited(gateway: Gateway) -> None:
    async with ConversationClient(gateway.ws(KEY_A)) as conv:
        for index in range(4):
            await conv.send_event({"type": "text.input", "text": f"Hello number {index}."})
        await conv.wait_for("response.created", timeout_s=30)
        await asyncio.sleep(0.3)
    errors = conv.received.of_type("error")
    assert [e["code"] for e in errors] == ["rate_limited", "rate_limited"], errors
    assert "at most 6 a minute" in errors[0]["message"]


async def test_the_http_api_answers_429_per_client(gateway: Gateway) -> None:
    mine = {"authorization": f"Bearer {KEY_B}"}  # this key spent 1 request on its token
    upload = {"file": ("s.wav", wav_bytes(silence(0.5)), "audio/wav")}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        first = await http.post("/v1/audio/transcriptions", headers=mine, files=upload, data={"model": "whisper-1"})
        assert first.status_code == 200, first.text
        second = await http.post("/v1/audio/transcriptions", headers=mine, files=upload, data={"model": "whisper-1"})
        assert second.status_code == 429 and 1 <= int(second.headers["retry-after"]) <= 60
        assert second.json()["error"]["code"] == "rate_limited" and "uploads" in second.json()["error"]["message"]
        # 6 a minute: however many of this key's requests are still in the window, the 7th at most is refused.
        statuses = []
        while 429 not in statuses and len(statuses) < 7:
            statuses.append((await http.get("/v1/voices", headers=mine)).status_code)
        assert statuses[-1] == 429 and set(statuses[:-1]) <= {200}, statuses
        # Another client is not held back; a probe is never counted.
        assert (await http.get("/v1/voices", headers={"authorization": f"Bearer {KEY_A}"})).status_code == 200
        assert (await http.get("/readyz", headers=mine)).status_code == 200


async def test_bad_input_gets_short_clear_errors_and_a_flood_gets_a_summary(gateway: Gateway) -> None:
    async with ConversationClient(gateway.ws(KEY_A), start_session=False) as conv:
        await conv.send_raw(json.dumps({"type": "x" * 1_000_000}))  # 1 MB of unknown type
        unknown = await conv.wait_for("error", timeout_s=5)
        assert unknown["code"] == "unknown_event" and len(unknown["message"]) < 300
        await conv.send_event({"type": "session.start", "input_sample_rate": 1000})
        invalid = await conv.wait_for("error", timeout_s=5, after=1)
        assert invalid["message"] == "bad session.start: input_sample_rate: must be ≥ 8000"
        await conv.send_event({"type": "session.start"})
        await conv.wait_for("session.started")
        await asyncio.sleep(1.0)  # the error budget refills
        seen = len(conv.received.events)
        for _ in range(200):
            await conv.send_raw("{not json")
        async with asyncio.timeout(5):
            while not any(e["code"] == "errors_suppressed" for e in conv.received.of_type("error")):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # nothing else follows
        errors = [e for _, e in conv.received.events[seen:] if e["type"] == "error"]
        summary = errors[-1]
    codes = [e["code"] for e in errors]
    # 5 at once, then 5 a second: one more may pass while the 200 arrive.
    assert codes[-1] == "errors_suppressed" and 5 <= codes.count("invalid_json") <= 6, codes
    assert codes.count("invalid_json") + summary["count"] == 200


async def test_a_push_to_talk_turn_is_committed_at_its_length_limit(gateway: Gateway) -> None:
    async with ConversationClient(gateway.ws(KEY_A), turn_detection="push_to_talk") as conv:
        await conv.stream_audio(speak("What is the capital city of France? Tell me please."), realtime=True)
        too_long = await conv.wait_for("error", timeout_s=5)
        final = await conv.wait_for("transcript.final", timeout_s=30)
        await conv.wait_for("response.created", timeout_s=30)
        await conv.send_event({"type": "input.commit"})  # the release: nothing is left to commit, and that is fine
        await asyncio.sleep(0.5)
    assert too_long["code"] == "turn_too_long" and "1.5 s" in too_long["message"]
    assert final["text"] and "please" not in final["text"].lower()  # only the first 1.5 s
    assert [e["code"] for e in conv.received.of_type("error")] == ["turn_too_long"]


async def test_after_all_that_a_normal_turn_works_and_the_audit_log_tells_it(gateway: Gateway) -> None:
    async with ConversationClient(gateway.ws(KEY_B)) as conv:
        await conv.send_event({"type": "text.input", "text": "Hello there!"})
        done = await conv.wait_for("response.done", timeout_s=60)
    assert done["status"] == "completed" and conv.received.audio and conv.received.of_type("error") == []
    text = gateway.audit_path.read_text()
    assert KEY_A not in text and KEY_B not in text and "Hello there" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    seen = {(line["event"], line.get("code") or line.get("reason") or line.get("status")) for line in lines}
    for expected in [
        ("session.refused", "too_many_client_sessions"),
        ("session.refused", "session_start_timeout"),
        ("session.end", "idle"),
        ("http", 429),
        ("ws.close", 1008),
    ]:
        assert expected in seen, (expected, sorted(seen, key=str))
    assert {line["client"][:4] for line in lines} == {"key:"}
