"""A reply runs itself: released, dropped or cancelled from outside, it always ends exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.llm.v1 import llm_pb2
from parley.tts.v1 import tts_pb2
from parley_gateway.config import GatewaySettings
from parley_gateway.conversation.history import History, RecordedHistory
from parley_gateway.conversation.reply import Reply, ReplyContext
from parley_gateway.routing.model_services import TextRequests
from parley_gateway.routing.retry import RetryPolicy


class Scripted:
    policy = RetryPolicy()

    def __init__(self) -> None:
        self.go_on = asyncio.Event()  # the LLM holds after its first sentence until set

    async def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        yield llm_pb2.TextDelta(text="First sentence of it. And then ")
        await self.go_on.wait()
        yield llm_pb2.TextDelta(text="the second.", finish_reason="stop")

    async def speak(
        self, start: tts_pb2.SpeakStart, pieces: TextRequests, owed_since: Callable[[], float | None]
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        index = 0
        async for _ in pieces():
            chunk = AudioChunk(pcm=bytes(start.sample_rate * 2), sample_rate=start.sample_rate)  # 1 s
            yield tts_pb2.SpeakResponse(audio=chunk, piece=index)
            index += 1


class Recorder:
    """The client and the turn machine, as a reply sees them."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any] | bytes] = []
        self.finished: list[str] = []

    def __call__(self, message: dict[str, Any] | bytes) -> None:
        self.sent.append(message)

    def types(self) -> list[str]:
        return [m["type"] for m in self.sent if isinstance(m, dict)]

    def reply_text(self, reply_id: str, text: str) -> None:
        pass

    def reply_audio_sent(self, reply_id: str, seconds: float) -> None:
        pass

    def reply_finished(self, reply_id: str) -> None:
        self.finished.append(reply_id)


class Clock:
    def now(self) -> float:
        return 100.0


def context(services: Scripted, recorder: Recorder, history: History) -> ReplyContext:
    return ReplyContext(
        services=services,  # type: ignore[arg-type]
        # A piece a sentence, as these tests count audio by sentence (test_sentences.py cuts pieces).
        settings=GatewaySettings(first_piece_max_words=0).conversation().reply,
        clock=Clock(),
        send=recorder,
        watcher=recorder,
        history=RecordedHistory(history),
        llm_request=lambda text: llm_pb2.GenerateRequest(messages=[llm_pb2.Message(role="user", content=text)]),
        speak_start=tts_pb2.SpeakStart(sample_rate=16000),
        name="test",
    )


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(2):
        while not condition():  # noqa: ASYNC110 (polls what the reply did)
            await asyncio.sleep(0.001)


async def test_a_held_reply_shows_nothing_until_released_then_everything_in_order() -> None:
    services, recorder, history = Scripted(), Recorder(), History(10, 1000)
    services.go_on.set()
    reply = Reply(context(services, recorder, history), "Hi", held=True, turn_end=None, timings={})
    await reply.wait()
    assert reply.done and recorder.sent == [] and len(history) == 0
    reply.release(turn_end=99.5, timings={"asr_ms": 10})
    types = recorder.types()
    assert types[0] == "response.created" and types[-2:] == ["response.audio.done", "response.done"]
    assert types.count("response.text.delta") == 2 and types.count("response.audio.started") == 1
    assert sum(len(m) for m in recorder.sent if isinstance(m, bytes)) == 2 * 32000  # 1 s a sentence
    assert [(t.role, t.content) for t in history] == [
        ("user", "Hi"),
        ("assistant", "First sentence of it. And then the second."),
    ]
    assert recorder.finished == [reply.id]


async def test_a_dropped_reply_stops_and_the_client_never_hears_of_it() -> None:
    services, recorder, history = Scripted(), Recorder(), History(10, 1000)
    reply = Reply(context(services, recorder, history), "Hi", held=True, turn_end=None, timings={})
    await until(lambda: reply.audio_ms > 0)
    reply.drop()
    await reply.wait()
    reply.release(turn_end=99.5, timings={})  # too late: what it held is gone
    assert reply.done and recorder.sent == [] and len(history) == 0
    assert recorder.finished == [reply.id]


async def test_a_cancelled_reply_keeps_what_was_heard_and_says_so_once() -> None:
    services, recorder, history = Scripted(), Recorder(), History(10, 1000)
    reply = Reply(context(services, recorder, history), "Hi", held=False, turn_end=99.0, timings={})
    await until(lambda: reply.audio_ms > 0)
    reply.played(500)  # the client played half of the first sentence
    reply.cancel()
    await reply.wait()
    assert recorder.types()[-2:] == ["response.truncated", "response.cancelled"]
    assert "response.done" not in recorder.types()
    assert [(t.role, t.content) for t in history] == [("user", "Hi"), ("assistant", "First sentence")]
    reply.cancel()  # cancelling an ended reply tells the client to flush its playback again, nothing more
    assert recorder.types()[-1] == "response.cancelled" and len(history) == 2
