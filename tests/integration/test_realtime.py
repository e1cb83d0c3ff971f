"""Real-time behaviour over the real stack: partials, barge-in, push-to-talk, cancel."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from parley_gateway.client import ConversationClient
from tests.speech import silence, speak
from tests.stack import Stack

pytestmark = pytest.mark.integration

STORYTELLER = (
    "The following is a conversation between a User and a storyteller Assistant who always answers "
    "with long, detailed stories of many sentences."
)


async def test_partial_transcripts_arrive_before_the_final(stack: Stack) -> None:
    question = speak("Could you please tell me what the weather will be like tomorrow in London?")
    async with ConversationClient(stack.ws_url) as conv:
        await conv.stream_audio(silence(0.3) + question + silence(1.0), realtime=True)
        final = await conv.wait_for("transcript.final", timeout_s=30)
    types = conv.received.types()
    partials = conv.received.of_type("transcript.partial")
    assert partials, types
    assert types.index("transcript.partial") < types.index("transcript.final")
    assert all(p["text"].lower().startswith(p["stable"].lower()[:1]) for p in partials if p["stable"])
    assert "weather" in final["text"].lower()


async def test_barge_in_cancels_the_reply_and_history_keeps_what_was_heard(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url, system_prompt=STORYTELLER) as conv:
        await conv.send_event({"type": "text.input", "text": "Tell me a long story about a brave knight."})
        started = await conv.wait_for("response.audio.started", timeout_s=60)
        response_id = started["response_id"]
        await asyncio.sleep(0.4)  # past the echo guard, as a listener would be
        interruption = asyncio.create_task(
            conv.stream_audio(speak("Wait, stop please, I have a question.") + silence(1.5), realtime=True)
        )
        cancelled = await conv.wait_for("response.cancelled", timeout_s=15)
        assert cancelled["response_id"] == response_id
        # The client flushed its playback and says what the user heard.
        await conv.send_event({"type": "response.audio.played", "response_id": response_id, "played_ms": 900})
        truncated = await conv.wait_for("response.truncated", timeout_s=10)
        await interruption
        # The interruption is a user turn of its own, answered in turn.
        final = await conv.wait_for("transcript.final", timeout_s=30)
        index = len(conv.received.events)
        second = await conv.wait_for("response.done", timeout_s=60, after=index - 5)
    assert truncated["response_id"] == response_id and truncated["played_ms"] == 900
    full = "".join(e["text"] for e in conv.received.of_type("response.text.delta") if e["response_id"] == response_id)
    heard, said = truncated["text"].split(), full.split()
    assert heard == said[: len(heard)] and len(heard) < len(said), (heard, said)
    assert "stop" in final["text"].lower()
    assert second["response_id"] != response_id
    types = conv.received.types()
    assert types.index("response.cancelled") < types.index("transcript.final")
    # The cancelled LLM/TTS streams really ended: the services hold no stream now.
    with urllib.request.urlopen(f"{stack.url}/v1/services") as response:  # noqa: ASYNC210 (instant, loopback)
        services = json.load(response)
    assert all(instance["held_by_gateway"] == 0 for kind in ("llm", "tts") for instance in services[kind])


async def test_push_to_talk_turns_end_on_commit(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url, turn_detection="push_to_talk") as conv:
        await conv.send_event({"type": "input.commit"})
        empty = await conv.wait_for("error")
        assert empty["code"] == "empty_turn"
        # No trailing silence: in push-to-talk the client, not the VAD, ends the turn.
        await conv.stream_audio(speak("What is the capital city of France?"), realtime=False)
        await conv.send_event({"type": "input.commit"})
        final = await conv.wait_for("transcript.final", timeout_s=30)
        done = await conv.wait_for("response.done", timeout_s=60)
    assert "france" in final["text"].lower()
    assert done["status"] == "completed"
    assert not [t for t in conv.received.types() if t.startswith("vad.")]


async def test_response_cancel_and_typed_turns_while_audio_flows(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url, system_prompt=STORYTELLER) as conv:
        # The microphone is open (silence flows) while the user types.
        mic = asyncio.create_task(conv.stream_audio(silence(8.0), realtime=True))
        await conv.send_event({"type": "text.input", "text": "Tell me a story about the sea."})
        created = await conv.wait_for("response.created", timeout_s=30)
        await conv.wait_for("response.text.delta", timeout_s=30)
        await conv.send_event({"type": "response.cancel"})
        cancelled = await conv.wait_for("response.cancelled", timeout_s=10)
        assert cancelled["response_id"] == created["response_id"]
        seen = len(conv.received.events)
        await conv.send_event({"type": "text.input", "text": "Hello again!"})
        done = await conv.wait_for("response.done", timeout_s=60, after=seen)
        mic.cancel()
    assert done["status"] == "completed"
    assert not conv.received.of_type("vad.speech_started"), "silence must not start a turn"
