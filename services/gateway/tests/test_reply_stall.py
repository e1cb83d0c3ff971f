"""A reply always ends, whatever goes silent under it (scripted LLM and TTS servers over real gRPC).

A TTS stream that had read every sentence of a reply and answered the first one was never owed
another answer, so a TTS instance that went silent mid-reply (a host lost, a process wedged)
held the reply forever: no more audio, no `response.done`, no `error`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.llm.v1 import llm_pb2, llm_pb2_grpc
from parley.registry import InstanceRecord
from parley.testing import grpc_server
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_gateway.config import DiscoverySettings, GatewaySettings
from parley_gateway.conversation.session import ConversationSession
from parley_gateway.protocol import SessionStart
from parley_gateway.routing.discovery import Instance, ServiceDirectory
from parley_gateway.routing.model_services import GrpcServices
from parley_gateway.routing.retry import RetryPolicy

SENTENCES = ("The first sentence of a long answer. ", "Then a second one follows here. ", "And a third to end.")


class ThreeSentences(llm_pb2_grpc.ConversationServicer):
    async def Generate(  # noqa: N802
        self, request: llm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.TextDelta]:
        for sentence in SENTENCES:
            yield llm_pb2.TextDelta(text=sentence)
        yield llm_pb2.TextDelta(finish_reason="stop")


class GoesSilent(tts_pb2_grpc.TextToSpeechServicer):
    """Reads the whole reply at once, speaks its first sentence, then never answers again (nor ends)."""

    def __init__(self) -> None:
        self.read_all = asyncio.Event()

    async def Speak(  # noqa: N802
        self, requests: AsyncIterator[tts_pb2.SpeakRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        async for request in requests:
            if request.end_of_text:
                self.read_all.set()
                break
        chunk = AudioChunk(pcm=bytes(4800), sample_rate=24000)
        yield tts_pb2.SpeakResponse(audio=chunk, piece=0)
        await asyncio.Event().wait()  # wedged


class SilentAfterFirstToken(llm_pb2_grpc.ConversationServicer):
    async def Generate(  # noqa: N802
        self, request: llm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.TextDelta]:
        yield llm_pb2.TextDelta(text="Well")
        await asyncio.Event().wait()


def directory_of(llm: str, tts: str) -> ServiceDirectory:
    directory = ServiceDirectory(nc=None, settings=DiscoverySettings(1, 0.1, 3, 300))  # type: ignore[arg-type]
    for kind, address in (("llm", llm), ("tts", tts)):
        record = InstanceRecord(id=kind, kind=kind, address=address, version="0", ready=True, active=0, capacity=4)
        directory.instances[kind][kind] = Instance(record, last_seen=time.monotonic(), serving=True)
    return directory


class Client:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.audio = 0

    def __call__(self, message: dict[str, Any] | bytes) -> None:
        if isinstance(message, bytes):
            self.audio += len(message)
        else:
            self.events.append(message)

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]


async def until(condition: Callable[[], bool], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (polls what the session sent)
            await asyncio.sleep(0.02)


async def reply_over(llm: llm_pb2_grpc.ConversationServicer, tts: tts_pb2_grpc.TextToSpeechServicer) -> Client:
    """One typed turn on a push-to-talk session (no VAD stream); what the client got once the reply ended."""
    async with (
        grpc_server(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(llm, s)) as llm_address,
        grpc_server(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(tts, s)) as tts_address,
    ):
        directory = directory_of(llm_address, tts_address)
        settings = GatewaySettings(first_answer_timeout_s=2, idle_timeout_s=1, reply_stall_timeout_s=3)
        services = GrpcServices(directory, settings.model_services())
        client = Client()
        start = SessionStart.model_validate({"type": "session.start", "turn_detection": "push_to_talk"})
        session = ConversationSession(settings.conversation(), services, client, start)
        try:
            session.on_text("Tell me a long story")
            await until(lambda: bool(client.of("response.done")), timeout_s=8)
        finally:
            await session.close()
            await directory.close()
    return client


async def test_a_tts_stream_silent_mid_reply_fails_the_reply_in_bounded_time() -> None:
    started = time.monotonic()
    client = await reply_over(ThreeSentences(), GoesSilent())
    [done] = client.of("response.done")
    assert done["status"] == "failed" and client.audio == 4800
    [error] = client.of("error")
    assert error["code"] == "service_timeout" and "the tts service sent nothing for 1 s" in error["message"], error
    assert time.monotonic() - started < 5, "the TTS idle deadline (1 s) ends it, not a longer wait"


async def test_an_llm_silent_mid_reply_fails_the_reply_in_bounded_time() -> None:
    client = await reply_over(SilentAfterFirstToken(), GoesSilent())
    assert client.of("response.done")[0]["status"] == "failed"
    [error] = client.of("error")
    assert error["code"] == "service_timeout" and "the llm service sent nothing" in error["message"], error


class KeepsWriting(llm_pb2_grpc.ConversationServicer):
    """A long reply written slowly: a sentence every 50 ms for a minute."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def Generate(  # noqa: N802
        self, request: llm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.TextDelta]:
        try:
            yield llm_pb2.TextDelta(text=SENTENCES[0])
            for _ in range(1200):
                await asyncio.sleep(0.05)
                yield llm_pb2.TextDelta(text="And the story goes on. ")
            yield llm_pb2.TextDelta(finish_reason="stop")
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


class WedgesAfterOneSentence(tts_pb2_grpc.TextToSpeechServicer):
    """Speaks the first sentence as soon as it comes, then never answers again (nor ends)."""

    async def Speak(  # noqa: N802
        self, requests: AsyncIterator[tts_pb2.SpeakRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        async for request in requests:
            if request.text:
                break
        yield tts_pb2.SpeakResponse(audio=AudioChunk(pcm=bytes(4800), sample_rate=24000), piece=0)
        await asyncio.Event().wait()  # wedged


async def test_a_failed_speech_ends_the_reply_while_the_llm_still_writes() -> None:
    # Seen with a long reply on a slow LLM: the TTS wedged after one sentence, and the reply went
    # on until the LLM had written all of it, which nobody would hear.
    llm = KeepsWriting()
    started = time.monotonic()
    client = await reply_over(llm, WedgesAfterOneSentence())
    assert client.of("response.done")[0]["status"] == "failed" and client.audio == 4800
    [error] = client.of("error")
    assert error["code"] == "service_timeout" and "the tts service sent nothing for 1 s" in error["message"], error
    assert time.monotonic() - started < 5, "the TTS idle deadline (1 s) ends it, not the LLM's end"
    await until(llm.cancelled.is_set, timeout_s=2)  # and the LLM stops writing it


class WedgedSpeech:
    """Model services where the TTS takes the reply and never answers, and no call deadline applies."""

    policy = RetryPolicy()

    async def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        yield llm_pb2.TextDelta(text="A sentence that is never spoken. ")
        yield llm_pb2.TextDelta(finish_reason="stop")

    async def speak(
        self,
        start: tts_pb2.SpeakStart,
        pieces: Callable[[], AsyncIterator[str]],
        owed_since: Callable[[], float | None],
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        async for _ in pieces():
            pass
        await asyncio.Event().wait()
        yield tts_pb2.SpeakResponse()


async def test_the_watchdog_ends_a_reply_whatever_it_waits_for() -> None:
    settings = GatewaySettings(first_answer_timeout_s=0.2, reply_stall_timeout_s=0.6)
    client = Client()
    start = SessionStart.model_validate({"type": "session.start", "turn_detection": "push_to_talk"})
    session = ConversationSession(settings.conversation(), WedgedSpeech(), client, start)  # type: ignore[arg-type]
    started = time.monotonic()
    try:
        session.on_text("Hello")
        await until(lambda: bool(client.of("response.done")), timeout_s=5)
    finally:
        await session.close()
    assert client.of("response.done")[0]["status"] == "failed"
    assert [e["code"] for e in client.of("error")] == ["service_timeout"]
    assert "no progress for 0.6 s" in client.of("error")[0]["message"]
    assert time.monotonic() - started < 2
    assert not session.busy
