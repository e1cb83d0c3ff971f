"""A spoken question through the real stack, as the browser would send it."""

from __future__ import annotations

import json
import urllib.request

import pytest

from parley_gateway.client import ConversationClient
from tests.speech import rms, silence, speak
from tests.stack import Stack

pytestmark = pytest.mark.integration

ORDER = [
    "session.started",
    "vad.speech_started",
    "vad.speech_stopped",
    "transcript.final",
    "response.created",
    "response.text.delta",
    "response.audio.started",
    "response.audio.done",
    "response.done",
]


def first_index(types: list[str], wanted: str) -> int:
    assert wanted in types, f"no {wanted} in {types}"
    return types.index(wanted)


async def test_spoken_question_gets_a_spoken_answer(stack: Stack) -> None:
    question = speak("What is the capital city of France?")
    async with ConversationClient(stack.ws_url, input_sample_rate=16000) as conv:
        assert conv.session["session_id"].startswith("sess_")
        rate = conv.session["output_sample_rate"]
        await conv.stream_audio(silence(0.5) + question + silence(1.5), realtime=True)
        done = await conv.wait_for("response.done", timeout_s=60)

    types = conv.received.types()
    indices = [first_index(types, t) for t in ORDER]
    assert indices == sorted(indices), f"events out of order: {types}"
    final = conv.received.of_type("transcript.final")[0]["text"].lower()
    assert "capital" in final and "france" in final, final
    reply_text = "".join(e["text"] for e in conv.received.of_type("response.text.delta"))
    assert reply_text.strip(), "the LLM said nothing"
    audio = conv.received.audio_bytes()
    assert len(audio) / 2 / rate >= 0.5, f"reply audio is only {len(audio) / 2 / rate:.2f} s"
    assert rms(audio) > 0.01, "reply audio is silence"
    # Binary audio arrives between audio.started and audio.done.
    started, finished = conv.arrival("response.audio.started"), conv.arrival("response.audio.done")
    assert all(started <= t <= finished for t, _ in conv.received.audio)
    assert done["status"] == "completed"
    timings = done["timings"]
    # The VAD waited its end-of-turn silence (500 ms by default, in 32 ms frames).
    assert 480 <= timings["vad_silence_ms"] <= 600, timings
    # No audio leaves before the transcript and the first token; the reply ends after its first audio.
    assert max(timings["asr_ms"], timings["llm_first_token_ms"]) <= timings["first_audio_sent_ms"], timings
    assert timings["first_audio_sent_ms"] <= timings["total_ms"], timings
    # The gateway's clock agrees with what the client saw: from the end of the turn (when
    # vad.speech_stopped left) to the first audio byte, give or take the socket's delivery.
    client_ms = (conv.received.audio[0][0] - conv.arrival("vad.speech_stopped")) * 1000
    assert abs(client_ms - timings["first_audio_sent_ms"]) < 100, (client_ms, timings)


async def test_typed_turn_and_history(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url) as conv:
        await conv.send_event({"type": "text.input", "text": "Hello, who are you?"})
        first = await conv.wait_for("response.done", timeout_s=60)
        seen = len(conv.received.events)
        await conv.send_event({"type": "text.input", "text": "Say that again please."})
        second = await conv.wait_for("response.done", timeout_s=60, after=seen)
    assert first["response_id"] != second["response_id"]
    assert conv.received.of_type("response.text.delta")
    assert len(conv.received.audio_bytes()) > 0


def test_health_readiness_and_metrics(stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.url}/healthz") as response:
        assert json.load(response) == {"status": "ok"}
    with urllib.request.urlopen(f"{stack.url}/readyz") as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{stack.url}/metrics") as response:
        text = response.read().decode()
    assert "parley_gateway_stage_seconds_bucket" in text
    with urllib.request.urlopen(f"{stack.url}/v1/services") as response:
        services = json.load(response)
    for kind in ("vad", "asr", "llm", "tts"):
        assert services[kind] and services[kind][0]["ready"], services
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['tts_metrics']}/metrics") as response:
        assert "parley_ready" in response.read().decode()


def test_web_page_is_served(stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.url}/") as response:
        page = response.read().decode()
    assert 'src="static/js/main.js"' in page  # relative: the page works under any proxy path
    with urllib.request.urlopen(f"{stack.url}/static/js/conversation.js") as response:
        assert "/v1/conversation" in response.read().decode()
