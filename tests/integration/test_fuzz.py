"""Fuzzing what clients send: WebSocket frames and uploads. Nothing may take anything down.

Hypothesis makes the inputs: events of every known type with fields of any JSON
shape, random text and binary frames, text frames that are not UTF-8, deep
nesting, floods; upload bodies that are noise, truncated or lying WAV headers,
with any file name and content type. The invariant: every answer is a well-formed
event or a 4xx (never a 5xx, never an echo of a big input), and afterwards the
gateway and every service are up and a normal turn still works.
"""

from __future__ import annotations

import asyncio
import json
import struct
from contextlib import suppress
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from parley_gateway.client import ConversationClient
from parley_gateway.protocol import CLIENT_EVENT_TYPES
from tests.stack import Stack

pytestmark = pytest.mark.integration

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
FIELDS = ["input_sample_rate", "voice", "text", "vad", "turn_detection", "response_id", "played_ms", "session_id"]
LONGEST_ERROR = 600  # characters: an error names the problem, it never echoes the input back

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
events = st.builds(
    lambda type_, fields: json.dumps({"type": type_, **fields}),
    st.sampled_from([*sorted(CLIENT_EVENT_TYPES), "", "x" * 5000, "session.start "]),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=4),
)
frames = st.one_of(
    events.map(lambda text: ("text", text)),
    st.text(max_size=300).map(lambda text: ("text", text)),
    st.binary(max_size=6000).map(lambda data: ("binary", data)),
    st.binary(min_size=1, max_size=40).map(lambda data: ("not-utf8", b"\xff\xfe" + data)),
    st.sampled_from([("text", ""), ("binary", b""), ("text", "[" * 4000), ("text", '{"type":' * 2000)]),
)


def wav_header(rate: int, channels: int, bits: int, declared: int) -> bytes:
    """A WAV header that may lie about everything (sizes wrap as a 32-bit field would)."""
    u32 = 0xFFFFFFFF
    return b"RIFF" + struct.pack(
        "<I4s4sIHHIIHH4sI",
        (36 + declared) & u32,
        b"WAVE",
        b"fmt ",
        16,
        1,
        channels,
        rate,
        (rate * channels * bits // 8) & u32,
        (channels * bits // 8) & 0xFFFF,
        bits,
        b"data",
        declared,
    )


uploads = st.one_of(
    st.binary(max_size=20_000),
    st.builds(
        lambda header, body: header + body,
        st.builds(
            wav_header,
            st.sampled_from([0, 1, 8000, 16000, 44100, 2**31 - 1]),
            st.sampled_from([0, 1, 2, 255]),
            st.sampled_from([0, 8, 16, 24, 32, 7]),
            st.sampled_from([0, 10, 2**31 - 1, 2**32 - 1]),
        ),
        st.binary(max_size=8000),
    ),
)


def check_event(raw: str | bytes) -> None:
    """What the gateway sends back is audio or a JSON event; an error is short."""
    if isinstance(raw, bytes):
        return
    message = json.loads(raw)
    assert isinstance(message, dict) and isinstance(message.get("type"), str), raw[:200]
    if message["type"] == "error":
        assert len(message.get("message", "")) < LONGEST_ERROR, raw[:200]


# The corpus: inputs that broke (or would break) a gateway, tried before the generated ones.
CORPUS: list[list[tuple[str, str | bytes]]] = [
    [("text", json.dumps({"type": "x" * 30_000}))],  # an unknown type is never echoed whole
    [("text", json.dumps({"type": "session.start", "input_sample_rate": "fast", "vad": [1] * 5000}))],
    [("not-utf8", b"\xff\xfe\xfd")],
    [("text", "[" * 4000)],
    [("binary", b"\x00" * 3)],
    [("text", json.dumps({"type": "text.input", "text": "y" * 50_000}))],
]


@FUZZ
@given(start=st.booleans(), sent=st.lists(frames, max_size=10))
@example(start=True, sent=CORPUS[0])
@example(start=False, sent=CORPUS[1])
@example(start=True, sent=CORPUS[2])
@example(start=False, sent=CORPUS[3])
@example(start=False, sent=CORPUS[4])
@example(start=True, sent=CORPUS[5])
async def test_any_websocket_frames_get_answers_not_crashes(stack: Stack, start: bool, sent: list[Any]) -> None:
    async with websockets.connect(stack.ws_url, max_size=None) as ws:
        if start:
            await ws.send(json.dumps({"type": "session.start", "turn_detection": "push_to_talk"}))
        for kind, payload in sent:
            try:
                # A text frame that is not UTF-8 is a protocol violation the server must survive (1007).
                await ws.send(payload, text=True) if kind == "not-utf8" else await ws.send(payload)
            except websockets.ConnectionClosed:
                break
        with suppress(TimeoutError, websockets.ConnectionClosed):
            async with asyncio.timeout(0.3):
                async for message in ws:
                    check_event(message)


@FUZZ
@given(
    body=uploads,
    filename=st.text(max_size=40),
    content_type=st.sampled_from(["audio/wav", "audio/mpeg", "application/octet-stream", "text/plain", "", "x/y"]),
    where=st.sampled_from(["/v1/audio/transcriptions", "/v1/voices"]),
)
async def test_any_upload_gets_a_clear_4xx_or_an_answer(
    stack: Stack, body: bytes, filename: str, content_type: str, where: str
) -> None:
    form = {"model": "whisper-1"} if where.endswith("transcriptions") else {"name": "fuzz", "transcript": "Hello."}
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        response = await http.post(where, files={"file": (filename or "f", body, content_type)}, data=form)
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["message"] and len(error["message"]) < LONGEST_ERROR, error


async def test_a_flood_of_bad_frames_is_survived(stack: Stack) -> None:
    async with websockets.connect(stack.ws_url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.start"}))
        with suppress(websockets.ConnectionClosed):
            for n in range(2000):
                await ws.send(b"\x01" if n % 2 else "{not json")
        with suppress(TimeoutError, websockets.ConnectionClosed):
            async with asyncio.timeout(1.0):
                async for message in ws:
                    check_event(message)


async def test_after_all_that_everything_is_up_and_a_turn_works(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and "crashing" not in ready.json(), ready.json()
    async with ConversationClient(stack.ws_url) as conv:
        await conv.send_event({"type": "text.input", "text": "Are you all right?"})
        done = await conv.wait_for("response.done", timeout_s=60)
        assert done["status"] == "completed" and conv.received.audio
