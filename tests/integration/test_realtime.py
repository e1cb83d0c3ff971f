"""Real-time behaviour over the real stack: partials, barge-in, push-to-talk, cancel."""

from __future__ import annotations

import asyncio
import re
import urllib.request

import pytest

from tests.conversation_client import ConversationClient
from tests.speech import silence, speak
from tests.stack import Stack

pytestmark = pytest.mark.integration


async def services_idle(stack: Stack, kinds: tuple[str, ...], within_s: float) -> bool:
    """Whether each service's own metrics show no stream and no busy model within `within_s`."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        idle = True
        for kind in kinds:
            text = await asyncio.to_thread(metrics_text, stack.ports[f"{kind}_metrics"])
            idle &= gauge(text, "parley_streams_active", kind) == 0 and gauge(text, "parley_models_busy", kind) == 0
        if idle or asyncio.get_running_loop().time() > deadline:
            return idle
        await asyncio.sleep(0.05)


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        return str(response.read().decode())


def gauge(text: str, name: str, kind: str) -> float:
    """The gauge for `kind`, summed over its engines' pools (the TTS pools are "tts-<engine>")."""
    values = re.findall(rf'^{name}{{kind="{kind}(?:-[a-z0-9]+)?"}} ([0-9.e+-]+)$', text, re.MULTILINE)
    assert values, f"no {name} for {kind}"
    return sum(float(value) for value in values)


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
    # The stable part is the start of its partial, word for word, and it does appear.
    assert all(p["text"].startswith(p["stable"]) for p in partials), partials
    assert any(p["stable"] for p in partials), partials
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
        # The services themselves stopped: no stream open and every model copy back in its pool,
        # well before the interruption's own turn (still being spoken) starts the next reply.
        stopped_in_time = await services_idle(stack, ("llm", "tts"), within_s=1.0)
        # The client flushed its playback and says what the user heard: 900 ms, or half of what had
        # arrived if the reply was shorter (a base model sometimes tells a three-word story).
        rate = (await conv.wait_for("session.started"))["output_sample_rate"]
        arrived_ms = len(conv.received.audio_bytes()) / 2 / rate * 1000
        played_ms = round(min(900, arrived_ms / 2))
        await conv.send_event({"type": "response.audio.played", "response_id": response_id, "played_ms": played_ms})
        truncated = await conv.wait_for("response.truncated", timeout_s=10)
        await interruption
        # The interruption is a user turn of its own, answered in turn.
        final = await conv.wait_for("transcript.final", timeout_s=30)
        index = len(conv.received.events)
        second = await conv.wait_for("response.done", timeout_s=60, after=index - 5)
    assert truncated["response_id"] == response_id and truncated["played_ms"] == played_ms
    full = "".join(e["text"] for e in conv.received.of_type("response.text.delta") if e["response_id"] == response_id)
    heard, said = truncated["text"].split(), full.split()
    assert heard == said[: len(heard)] and len(heard) < len(said), (heard, said)
    assert "stop" in final["text"].lower()
    assert second["response_id"] != response_id
    types = conv.received.types()
    assert types.index("response.cancelled") < types.index("transcript.final")
    assert stopped_in_time, "the LLM and TTS services still worked on the cancelled reply"


async def test_push_to_talk_turns_end_on_commit(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url, turn_detection="push_to_talk") as conv:
        await conv.send_event({"type": "input.commit"})
        empty = await conv.wait_for("error")
        assert empty["code"] == "empty_turn"
        # No trailing silence: in push-to-talk the client, not the VAD, ends the turn.
        # Paced like a microphone: audio much faster than real time is refused (audio_too_fast).
        await conv.stream_audio(speak("What is the capital city of France?"), realtime=True)
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


async def test_cancel_before_any_audio_then_the_next_turn_is_answered(stack: Stack) -> None:
    """Interrupting once used to leave the assistant mute: the next reply came back empty."""
    async with ConversationClient(stack.ws_url, system_prompt=STORYTELLER) as conv:
        for attempt in range(5):
            seen = len(conv.received.events)
            await conv.send_event({"type": "text.input", "text": f"Tell me story number {attempt + 1}."})
            await conv.wait_for("response.text.delta", timeout_s=30, after=seen)
            await conv.send_event({"type": "response.cancel"})
            await conv.wait_for("response.cancelled", timeout_s=10, after=seen)
            seen = len(conv.received.events)
            audio_before = len(conv.received.audio)
            await conv.send_event({"type": "text.input", "text": "What is two plus two?"})
            done = await conv.wait_for("response.done", timeout_s=60, after=seen)
            assert done["status"] == "completed" and done["text"].strip(), done
            assert len(conv.received.audio) > audio_before, f"no audio for the reply after cancel {attempt + 1}"


@pytest.mark.parametrize(
    "parts",
    [
        # 3.6 s, a hesitation, then more: the whole utterance is re-sent to ASR (once over its chunk limit).
        # The first part ends on an open word, so the end-of-turn model's verdict cannot end the turn there.
        ("I would like to know what the weather will be like tomorrow morning in", "the city of Paris please"),
        # A long question in one go (~9 s).
        (
            "Could you please explain to me in simple words why the sky looks blue during the day "
            "and why it turns red and orange when the sun goes down in the evening",
        ),
    ],
)
async def test_long_and_hesitant_utterances_get_a_reply(stack: Stack, parts: tuple[str, ...]) -> None:
    speech = [speak(part) for part in parts]
    audio = silence(0.3)
    for index, piece in enumerate(speech):
        audio += piece + (silence(0.35) if index < len(speech) - 1 else silence(1.5))
    async with ConversationClient(stack.ws_url) as conv:
        await conv.stream_audio(audio, realtime=True)
        done = await conv.wait_for("response.done", timeout_s=60)
        final = conv.received.of_type("transcript.final")[-1]["text"].lower()
    assert not conv.received.of_type("error"), conv.received.of_type("error")
    assert done["status"] == "completed" and conv.received.audio
    assert ("paris" in final and "weather" in final) or ("sky" in final and "sun" in final), final
