"""Malformed client input gets an `error` event; the session and services survive."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
import websockets

from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from tests.conversation_client import ConversationClient
from tests.speech import speak, wav_bytes
from tests.stack import Stack

pytestmark = pytest.mark.integration


async def next_error(conv: ConversationClient, after: int) -> dict[str, str]:
    return await conv.wait_for("error", timeout_s=10, after=after)


async def test_audio_before_session_start(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url, start_session=False) as conv:
        await conv.send_raw(bytes(3200))
        error = await next_error(conv, 0)
        assert error["code"] == "session_not_started"
        # The connection is still usable: a session can start now.
        await conv.send_event({"type": "session.start"})
        await conv.wait_for("session.started")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (bytes(32000 * 2), "frame_too_large"),  # 2 s in one frame; the limit is 1 s
        (bytes(10 * 1024 * 1024), "frame_too_large"),  # 10 MB: refused with an error, not a closed socket
        (bytes(3201), "bad_audio"),  # half a sample
        ("{not json", "invalid_json"),
        ('{"type": "session.teleport"}', "unknown_event"),
        ('{"type": "text.input"}', "invalid_event"),
        ('["session.start"]', "invalid_event"),
        ('{"type": "session.start"}', "session_already_started"),
        # Nested 50,000 deep (~200 kB) once raised a RecursionError that killed the session.
        ('{"a": ' * 50_000 + "1" + "}" * 50_000, "event_too_large"),
        ("[" * 20_000 + "]" * 20_000, "invalid_json"),  # under the size limit: refused for its depth
        ('{"type": "text.input", "text": "' + "a" * 70_000 + '"}', "event_too_large"),
    ],
)
async def test_bad_frames_get_errors_and_the_session_survives(stack: Stack, payload: str | bytes, code: str) -> None:
    async with ConversationClient(stack.ws_url) as conv:
        seen = len(conv.received.events)
        await conv.send_raw(payload)
        error = await next_error(conv, seen)
        assert error["code"] == code, error
        assert error["message"]
        # Still alive: a typed turn is answered.
        await conv.send_event({"type": "text.input", "text": "Are you still there?"})
        await conv.wait_for("response.done", timeout_s=60, after=seen)
    ready = await asyncio.to_thread(urllib.request.urlopen, f"{stack.url}/readyz")
    assert ready.status == 200


async def test_wrong_input_sample_rate_is_refused(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url, input_sample_rate=16000) as conv:
        seen = len(conv.received.events)
        await conv.send_event({"type": "session.end"})
        await conv.wait_for("session.ended", after=seen)
    async with ConversationClient(stack.ws_url, start_session=False) as bad:
        await bad.send_event({"type": "session.start", "input_sample_rate": 1000})
        error = await next_error(bad, 0)
        assert error["code"] == "invalid_event" and "input_sample_rate" in error["message"]


@pytest.mark.parametrize(("voice", "code"), [("../../../etc/passwd", "invalid_event"), ("nobody", "unknown_voice")])
async def test_a_voice_is_checked_when_the_session_starts(stack: Stack, voice: str, code: str) -> None:
    async with ConversationClient(stack.ws_url, start_session=False) as conv:
        await conv.send_event({"type": "session.start", "voice": voice})
        error = await next_error(conv, 0)
        assert error["code"] == code, error
        assert "session.started" not in conv.received.types()
        # The connection is still usable: a session with a real voice starts and speaks.
        await conv.send_event({"type": "session.start", "voice": "joe"})
        await conv.wait_for("session.started")
        await conv.send_event({"type": "text.input", "text": "Hello!"})
        done = await conv.wait_for("response.done", timeout_s=60)
    assert done["status"] == "completed" and conv.received.audio


async def test_a_cloned_voice_on_a_piper_only_stack_is_stored_but_not_spoken(stack: Stack) -> None:
    """The CPU default stores voices for every instance, and says plainly that none here can clone."""
    reference = wav_bytes(speak("The quick brown fox jumps over the lazy dog, then runs into the forest."), 16000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['tts']}") as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        request = tts_pb2.CreateVoiceRequest(
            name="Reader",
            transcript="The quick brown fox jumps over the lazy dog, then runs into the forest.",
            audio=reference,
        )
        voice = await stub.CreateVoice(request)
        try:
            async with ConversationClient(stack.ws_url, start_session=False) as conv:
                await conv.send_event({"type": "session.start", "voice": voice.id})
                error = await next_error(conv, 0)
                assert error["code"] == "voice_unavailable" and "fireredtts2" in error["message"], error
        finally:
            await stub.DeleteVoice(tts_pb2.DeleteVoiceRequest(id=voice.id))


async def test_a_websocket_from_another_site_is_refused(stack: Stack) -> None:
    """Cross-site WebSocket hijacking: a page elsewhere cannot open a conversation through a visitor's browser."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(stack.ws_url, origin=websockets.Origin("http://evil.example")):
            pass
    assert refused.value.response.status_code == 403
    own = f"http://127.0.0.1:{stack.ports['gateway']}"
    async with websockets.connect(stack.ws_url, origin=websockets.Origin(own)) as ws:
        await ws.send('{"type": "session.start"}')
        assert "session.started" in str(await ws.recv())


def test_pages_carry_security_headers(stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.url}/") as response:
        headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
