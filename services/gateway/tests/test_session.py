"""A conversation session on fake model services and a virtual clock: the I/O around the turn logic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from parley.asr.v1 import asr_pb2
from parley.audio.v1.audio_pb2 import AudioChunk
from parley.llm.v1 import llm_pb2
from parley.tts.v1 import tts_pb2
from parley.vad.v1.vad_pb2 import VadEvent
from parley_gateway.config import GatewaySettings
from parley_gateway.conversation.session import ConversationSession
from parley_gateway.conversation.transcription import ASR_CHUNK_SAMPLES
from parley_gateway.protocol import ErrorCode, SessionStart
from parley_gateway.routing.model_services import AudioRequests, Metadata, ServiceError, TextRequests
from parley_gateway.routing.retry import RetryPolicy

ASR_MAX_CHUNK_BYTES = 96000  # the ASR service's default limit: 1 s at 48 kHz


class VirtualClock:
    def __init__(self) -> None:
        self.t = 50.0

    def now(self) -> float:
        return self.t


class FakeServices:
    """Scripted model services. Replies are "Answer to <text>." unless a test blocks them."""

    policy = RetryPolicy()

    def __init__(self) -> None:
        self.vad_events: asyncio.Queue[VadEvent] = asyncio.Queue()  # a test puts them once the audio was read
        self.vad_chunks_read = 0
        self.asr_streams: list[list[AudioChunk]] = []
        self.generated: list[llm_pb2.GenerateRequest] = []
        self.spoken: list[list[str]] = []  # the text pieces of each Speak call
        self.speaker_similarity: float | None = None  # what SpeakDone says (a cloned voice)
        self.hold_generation: asyncio.Event | None = None  # set: generation may go on
        self.slow_cancel: asyncio.Event | None = None  # set: a cancelled generation may finish
        self.transcript: Callable[[float], str] = lambda seconds: f"utterance of {seconds:.1f} s"
        self.asr_reads: asyncio.Event | None = None  # set: the ASR reads on (a slow network, say)
        self.partial: str | None = None  # what the ASR says it heard so far, after an utterance's first chunk

    async def detect(self, audio: AudioRequests, metadata: Metadata) -> AsyncIterator[VadEvent]:
        drain = asyncio.create_task(self._drain(audio()))
        try:
            while True:
                yield await self.vad_events.get()
        finally:
            drain.cancel()

    async def _drain(self, requests: Any) -> None:
        async for _ in requests:
            self.vad_chunks_read += 1

    async def transcribe(
        self, audio: AudioRequests, metadata: Metadata, owed_since: Callable[[], float | None]
    ) -> AsyncIterator[asr_pb2.Transcript]:
        chunks: list[AudioChunk] = []
        self.asr_streams.append(chunks)
        async for chunk in audio():
            chunks.append(chunk)
            if self.partial is not None and len(chunks) == 1:
                yield asr_pb2.Transcript(text=self.partial, is_final=False)
            if chunk.end_of_stream:
                break
            if self.asr_reads is not None:
                await self.asr_reads.wait()
        seconds = sum(len(c.pcm) for c in chunks) / 32000
        yield asr_pb2.Transcript(text=self.transcript(seconds), is_final=True, language="en")

    async def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        self.generated.append(request)
        yield llm_pb2.TextDelta(text="Answer to ")
        try:
            if self.hold_generation is not None:
                await self.hold_generation.wait()
        except asyncio.CancelledError:
            if self.slow_cancel is not None:
                await self.slow_cancel.wait()  # a backend that takes its time to stop
            raise
        yield llm_pb2.TextDelta(text=f"{request.messages[-1].content}.", finish_reason="stop")

    async def synthesize(self, request: tts_pb2.SynthesizeRequest) -> AsyncIterator[AudioChunk]:
        for _ in range(2):
            yield AudioChunk(pcm=bytes(request.sample_rate // 5), sample_rate=request.sample_rate)  # 100 ms

    async def speak(
        self, start: tts_pb2.SpeakStart, pieces: TextRequests, owed_since: Callable[[], float | None]
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        self.spoken.append([])
        piece = 0
        async for text in pieces():
            self.spoken[-1].append(text)
            for _ in range(2):  # 100 ms each
                chunk = AudioChunk(pcm=bytes(start.sample_rate // 5), sample_rate=start.sample_rate)
                yield tts_pb2.SpeakResponse(audio=chunk, piece=piece)
            piece += 1
        yield tts_pb2.SpeakResponse(
            done=tts_pb2.SpeakDone(audio_s=0.2 * piece, speaker_similarity=self.speaker_similarity)
        )

    async def voices(self, fresh: bool = False) -> dict[str, list[str]] | None:
        return {"joe": ["piper"]}


class Client:
    """Collects what the session sends."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.audio: list[bytes] = []

    def __call__(self, message: dict[str, Any] | bytes) -> None:
        if isinstance(message, bytes):
            self.audio.append(message)
        else:
            self.events.append(message)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (polls state the fakes and the session change)
            await asyncio.sleep(0.001)


def open_session(
    services: FakeServices, settings: GatewaySettings | None = None, **options: Any
) -> tuple[ConversationSession, Client]:
    client = Client()
    start = SessionStart.model_validate({"type": "session.start", **options})
    settings = settings or GatewaySettings()
    session = ConversationSession(settings.conversation(), services, client, start, clock=VirtualClock())
    return session, client


def vad(kind: int, timestamp_s: float, decided_at_s: float | None = None) -> VadEvent:
    return VadEvent(kind=kind, timestamp_s=timestamp_s, decided_at_s=decided_at_s or timestamp_s)  # type: ignore[arg-type]


async def test_a_resumed_long_utterance_reaches_asr_in_small_chunks() -> None:
    """3.6 s, a pause, then more: the whole utterance is re-sent, never as one oversized chunk."""
    services = FakeServices()
    session, client = open_session(services)
    for _ in range(36):
        session.on_audio(bytes(3200))  # 100 ms frames
    await until(lambda: services.vad_chunks_read == 36)
    await services.vad_events.put(vad(VadEvent.SPEECH_STARTED, 0.0, 0.2))
    await services.vad_events.put(vad(VadEvent.SPEECH_PAUSED, 3.6, 3.8))
    await until(lambda: len(services.asr_streams) == 1 and bool(services.asr_streams[0]))
    for _ in range(20):
        session.on_audio(bytes(3200))
    await until(lambda: services.vad_chunks_read == 56)
    await services.vad_events.put(vad(VadEvent.SPEECH_RESUMED, 3.9, 4.0))
    await services.vad_events.put(vad(VadEvent.SPEECH_STOPPED, 5.6, 6.1))
    await until(lambda: "response.done" in client.types())
    resumed = services.asr_streams[1]
    sizes = [len(c.pcm) for c in resumed if c.pcm]
    assert max(sizes) <= ASR_CHUNK_SAMPLES * 2 < ASR_MAX_CHUNK_BYTES, max(sizes)
    assert sum(sizes) == 56 * 3200 and resumed[-1].end_of_stream
    assert client.of("transcript.final")[0]["text"] == "utterance of 5.6 s"
    await session.close()


async def test_cancel_while_waiting_for_the_previous_reply_is_not_swallowed() -> None:
    """A reply waiting for the one before it to stop can itself be cancelled (it once ran on regardless)."""
    services = FakeServices()
    services.hold_generation, services.slow_cancel = asyncio.Event(), asyncio.Event()
    session, client = open_session(services)
    session.on_text("First question")
    await until(lambda: len(services.generated) == 1)
    session.on_text("Second question")  # the first is told to stop, and takes its time
    await asyncio.sleep(0.01)
    session.on_cancel()  # the user cancels the second while it waits
    await asyncio.sleep(0.01)
    services.slow_cancel.set()
    await until(lambda: "response.cancelled" in client.types())
    await asyncio.sleep(0.05)
    assert len(services.generated) == 1, "the cancelled second reply went on to the LLM"
    assert len(client.of("response.created")) == 1
    assert [t.role for t in session.history] == ["user", "assistant"]
    await session.close()


async def test_history_keeps_turn_order_when_a_reply_replaces_another() -> None:
    services = FakeServices()
    services.hold_generation, services.slow_cancel = asyncio.Event(), asyncio.Event()
    session, client = open_session(services)
    session.on_text("First")
    await until(lambda: len(services.generated) == 1)
    session.on_text("Second")
    await asyncio.sleep(0.01)
    services.slow_cancel.set()
    services.hold_generation.set()
    await until(lambda: len(client.of("response.done")) == 1)
    assert [(t.role, t.content) for t in session.history] == [
        ("user", "First"),
        ("assistant", ""),  # cut before any of it was heard
        ("user", "Second"),
        ("assistant", "Answer to Second."),
    ]
    # The second request saw the first exchange, in order (the unheard reply left out).
    assert [m.content for m in services.generated[1].messages] == ["First", "Second"]
    await session.close()


async def test_a_typed_turn_after_a_cancel_is_answered_with_audio() -> None:
    services = FakeServices()
    services.hold_generation = asyncio.Event()
    session, client = open_session(services)
    session.on_text("Tell me a story")
    await until(lambda: "response.text.delta" in client.types())
    session.on_cancel()
    await until(lambda: "response.cancelled" in client.types())
    services.hold_generation.set()
    session.on_text("Hello again")
    await until(lambda: "response.done" in client.types())
    [done] = client.of("response.done")
    assert done["status"] == "completed" and done["text"] == "Answer to Hello again."
    assert sum(map(len, client.audio)) > 0
    await session.close()


async def test_a_preemptive_reply_stays_hidden_until_the_turn_ends() -> None:
    services = FakeServices()
    services.transcript = lambda seconds: "What time is it?"
    session, client = open_session(services)
    for _ in range(20):
        session.on_audio(bytes(3200))
    await until(lambda: services.vad_chunks_read == 20)
    await services.vad_events.put(vad(VadEvent.SPEECH_STARTED, 0.0, 0.2))
    await services.vad_events.put(vad(VadEvent.SPEECH_PAUSED, 1.8, 2.0))
    await until(lambda: len(services.generated) == 1)
    await asyncio.sleep(0.05)  # the held reply is fully generated and spoken by now
    assert "response.created" not in client.types() and not client.audio
    await services.vad_events.put(vad(VadEvent.SPEECH_STOPPED, 1.8, 2.3))
    await until(lambda: "response.done" in client.types())
    types = client.types()
    assert types.index("transcript.final") < types.index("response.created") < types.index("response.done")
    assert client.of("response.done")[0]["timings"]["preemptive"] is True
    await session.close()


async def test_a_pause_judged_complete_by_the_vad_is_answered_without_waiting_for_the_stop() -> None:
    """The VAD's end-of-turn verdict follows its SPEECH_PAUSED (PAUSE_JUDGED); the session ends the turn there."""
    services = FakeServices()
    services.transcript = lambda seconds: "What time is it?"
    session, client = open_session(services)
    for _ in range(20):
        session.on_audio(bytes(3200))
    await until(lambda: services.vad_chunks_read == 20)
    await services.vad_events.put(vad(VadEvent.SPEECH_STARTED, 0.0, 0.2))
    await services.vad_events.put(vad(VadEvent.SPEECH_PAUSED, 1.8, 2.0))
    judged = vad(VadEvent.PAUSE_JUDGED, 1.8, 2.0)
    judged.end_of_turn, judged.end_of_turn_ms = 0.92, 65.0
    await services.vad_events.put(judged)
    await until(lambda: "response.done" in client.types())  # no SPEECH_STOPPED ever came
    assert client.of("vad.speech_stopped") == [{"type": "vad.speech_stopped", "audio_end_ms": 1800}]
    timings = client.of("response.done")[0]["timings"]
    assert timings["turn_end"] == "end_of_turn" and timings["vad_silence_ms"] == 200
    assert timings["end_of_turn"] == 0.92 and timings["end_of_turn_ms"] == 65.0
    await session.close()


async def test_push_to_talk_audio_faster_than_real_time_reaches_asr_whole() -> None:
    """The turn ends while the ASR stream is still reading: it reads on to the end before the end marker."""
    services = FakeServices()
    services.asr_reads = asyncio.Event()
    session, client = open_session(services, turn_detection="push_to_talk")
    session.on_audio(bytes(3200))
    await until(lambda: bool(services.asr_streams) and len(services.asr_streams[0]) == 1)
    for _ in range(19):  # the rest of the utterance, at once, while the first chunk is in flight
        session.on_audio(bytes(3200))
    session.on_commit()
    services.asr_reads.set()
    await until(lambda: "transcript.final" in client.types())
    assert client.of("transcript.final")[0]["text"] == "utterance of 2.0 s"
    await session.close()


@pytest.mark.parametrize("turn_detection", ["vad", "push_to_talk"])
async def test_commit_without_audio_is_an_empty_turn(turn_detection: str) -> None:
    from parley_gateway.protocol import ProtocolError

    session, _ = open_session(FakeServices(), turn_detection=turn_detection)
    with pytest.raises(ProtocolError, match="no audio"):
        session.on_commit()
    await session.close()


async def test_a_reply_is_spoken_through_one_tts_stream_in_order() -> None:
    """Every sentence of a reply goes to one TTS call (one instance, one voice context), in order."""
    services = FakeServices()
    session, client = open_session(services)
    session.on_text("Hi there. How are you")  # the fake answers "Answer to Hi there. How are you."
    await until(lambda: "response.done" in client.types())
    assert services.spoken == [["Answer to Hi there.", "How are you."]]
    assert client.of("response.audio.done")[0]["audio_ms"] == 400  # 2 pieces x 2 chunks x 100 ms
    await session.close()


async def test_a_cloned_voice_reply_reports_its_similarity_score() -> None:
    services = FakeServices()
    session, client = open_session(services)
    session.on_text("Hello")
    await until(lambda: len(client.of("response.done")) == 1)
    assert "speaker_similarity" not in client.of("response.done")[0]  # a built-in voice: no score
    services.speaker_similarity = 0.8123
    session.on_text("Again")
    await until(lambda: len(client.of("response.done")) == 2)
    assert client.of("response.done")[1]["speaker_similarity"] == 0.812
    await session.close()


class DyingTts(FakeServices):
    """The first Speak call's instance dies after the first chunk of the second piece."""

    async def speak(
        self, start: tts_pb2.SpeakStart, pieces: TextRequests, owed_since: Callable[[], float | None]
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        dies = not self.spoken
        self.spoken.append([])
        piece = 0
        async for text in pieces():
            self.spoken[-1].append(text)
            for chunk_index in range(2):
                if dies and piece == 1 and chunk_index == 1:
                    raise ServiceError(
                        ErrorCode.SERVICE_CRASHED, "the tts service went away mid-stream", grpc.StatusCode.UNAVAILABLE
                    )
                chunk = AudioChunk(pcm=bytes(start.sample_rate // 5), sample_rate=start.sample_rate)
                yield tts_pb2.SpeakResponse(audio=chunk, piece=piece)
            piece += 1
        yield tts_pb2.SpeakResponse(done=tts_pb2.SpeakDone(audio_s=0.2 * piece))

    async def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        for sentence in ("First sentence of the answer. ", "Second one is here. ", "And the third one."):
            yield llm_pb2.TextDelta(text=sentence)
        yield llm_pb2.TextDelta(text="", finish_reason="stop")


async def test_a_reply_whose_tts_instance_dies_is_finished_by_another_from_the_sentence_cut() -> None:
    services = DyingTts()
    session, client = open_session(services, GatewaySettings(first_piece_max_words=0))  # a piece a sentence
    session.on_text("Tell me three things")
    await until(lambda: "response.done" in client.types())
    first, second = services.spoken
    assert first[:2] == ["First sentence of the answer.", "Second one is here."]
    # The second call starts at the sentence whose audio was cut: it is heard whole, nothing is skipped.
    assert second == ["Second one is here.", "And the third one."]
    done = client.of("response.done")[0]
    assert done["status"] == "completed" and client.of("error") == []
    assert len(client.audio) == 2 + 1 + 2 + 2  # piece 0, the cut start of piece 1, then 1 and 2 again
    await session.close()


class DyingLlm(FakeServices):
    async def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        self.generated.append(request)
        yield llm_pb2.TextDelta(text="The first words of an answer. ")
        raise ServiceError(
            ErrorCode.SERVICE_CRASHED, "the llm service went away mid-stream", grpc.StatusCode.UNAVAILABLE
        )


async def test_a_reply_whose_llm_dies_mid_stream_fails_clearly_and_is_not_reissued() -> None:
    services = DyingLlm()
    session, client = open_session(services)
    session.on_text("Tell me something")
    await until(lambda: "response.done" in client.types())
    assert client.of("response.done")[0]["status"] == "failed"
    assert [e["code"] for e in client.of("error")] == ["service_crashed"]
    assert len(services.generated) == 1  # not re-issued: a second generation would not continue the first
    assert session.history.turns()[0].content == "Tell me something"
    await session.close()


async def test_reply_audio_comes_at_the_rate_the_client_asked_for() -> None:
    """`output_sample_rate` from session.start: the TTS is asked for it, and audio time is counted at it."""
    services = FakeServices()
    asked: list[int] = []
    speak = services.speak

    def speak_at(
        start: tts_pb2.SpeakStart, pieces: TextRequests, owed_since: Callable[[], float | None]
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        asked.append(start.sample_rate)
        return speak(start, pieces, owed_since)

    services.speak = speak_at  # type: ignore[method-assign]
    session, client = open_session(services, output_sample_rate=8000)
    session.on_text("Hello")
    await until(lambda: "response.done" in client.types())
    assert asked == [8000]
    assert client.of("response.audio.started")[0]["sample_rate"] == 8000
    # Two 100 ms chunks at 8 kHz: 200 ms (counted at the gateway's 24 kHz it would be 67 ms).
    assert client.of("response.audio.done")[0]["audio_ms"] == 200
    await session.close()


async def test_without_output_sample_rate_replies_come_at_the_gateway_rate() -> None:
    services = FakeServices()
    session, client = open_session(services)
    session.on_text("Hello")
    await until(lambda: "response.done" in client.types())
    assert client.of("response.audio.started")[0]["sample_rate"] == GatewaySettings().output_sample_rate
    assert client.of("response.audio.done")[0]["audio_ms"] == 200
    await session.close()


def partial_services(services: FakeServices) -> FakeServices:
    """The ASR tells what it heard so far ("What time") before its final ("What time is it?")."""
    services.partial, services.transcript = " What time", lambda seconds: "What time is it?"
    return services


@pytest.mark.parametrize("prefill", [True, False])
async def test_the_words_heard_so_far_are_read_into_the_llm_before_the_turn_ends(prefill: bool) -> None:
    services = partial_services(FakeServices())
    session, client = open_session(services, GatewaySettings(llm_prefill=prefill), system_prompt="Be brief.")
    for _ in range(20):
        session.on_audio(bytes(3200))
    await until(lambda: services.vad_chunks_read == 20)
    await services.vad_events.put(vad(VadEvent.SPEECH_STARTED, 0.0, 0.2))
    await until(lambda: bool(client.of("transcript.partial")))
    await asyncio.sleep(0.01)
    assert len(services.generated) == (1 if prefill else 0)
    await services.vad_events.put(vad(VadEvent.SPEECH_PAUSED, 1.8, 2.0))
    await services.vad_events.put(vad(VadEvent.SPEECH_STOPPED, 1.8, 2.3))
    await until(lambda: "response.done" in client.types())
    *prefills, reply = services.generated
    assert not reply.prefill_only and reply.messages[-1].content == "What time is it?"
    if prefill:
        # The same prompt as the reply's up to the words still to come: the LLM's cache holds it then.
        [read] = prefills
        assert read.prefill_only and read.messages[-1].content == "What time"
        assert list(read.messages)[:-1] == list(reply.messages)[:-1] and read.session_id == reply.session_id
    else:
        assert prefills == []
    await session.close()


class SlowPrefillServices(FakeServices):
    """An LLM that reads a prefill until the test lets it."""

    def __init__(self) -> None:
        super().__init__()
        self.prefill_read = asyncio.Event()

    async def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        if request.prefill_only:
            self.generated.append(request)
            await self.prefill_read.wait()
            yield llm_pb2.TextDelta(finish_reason="prefill")
            return
        async for delta in super().generate(request):
            yield delta


async def test_a_reply_asks_the_llm_once_the_prefill_of_its_words_is_read() -> None:
    """Asked sooner, it would find the KV stream holding its words busy and read its whole prompt elsewhere."""
    services = partial_services(SlowPrefillServices())
    session, client = open_session(services)
    for _ in range(20):
        session.on_audio(bytes(3200))
    await until(lambda: services.vad_chunks_read == 20)
    await services.vad_events.put(vad(VadEvent.SPEECH_STARTED, 0.0, 0.2))
    await until(lambda: len(services.generated) == 1)  # the partial's prefill, being read
    await services.vad_events.put(vad(VadEvent.SPEECH_PAUSED, 1.8, 2.0))
    await services.vad_events.put(vad(VadEvent.SPEECH_STOPPED, 1.8, 2.3))
    await until(lambda: bool(client.of("transcript.final")))
    await asyncio.sleep(0.05)
    assert len(services.generated) == 1 and "response.done" not in client.types()
    services.prefill_read.set()
    await until(lambda: "response.done" in client.types())
    assert [r.prefill_only for r in services.generated] == [True, False]
    await session.close()
