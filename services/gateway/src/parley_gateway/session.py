"""One conversation over one WebSocket: turn-taking and the reply pipeline.

    client audio ─► resample to 16 kHz ─► ring buffer ─► VAD stream (whole session)
                                              │
                      speech started ─────────┴─► ASR stream (one per user turn)
                      speech stopped ─► end of ASR stream ─► transcript.final
                                                              │
        LLM deltas ─► response.text.delta + sentence chunker ─► TTS, a sentence
        at a time ─► binary reply audio ─► response.done (timings)

Everything a session sends goes through one outbox, so events keep their
order whatever task produced them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.llm.v1 import llm_pb2
from parley.pcm import BYTES_PER_SAMPLE, StreamResampler, float_to_pcm16, pcm16_to_float
from parley.tts.v1 import tts_pb2
from parley_gateway import clients
from parley_gateway.audio_ring import AudioRing
from parley_gateway.clients import ServiceError
from parley_gateway.config import GatewaySettings
from parley_gateway.discovery import ServiceDirectory
from parley_gateway.metrics import RESPONSES_TOTAL, STAGE_SECONDS
from parley_gateway.protocol import AudioPlayed, ErrorCode, ProtocolError, SessionStart, error_event, event
from parley_gateway.sentences import SentenceChunker

log = logging.getLogger(__name__)

PIPELINE_RATE = 16000  # what VAD and ASR receive
Send = Callable[[dict[str, Any] | bytes], None]


@dataclass
class SpokenPiece:
    text: str
    start_ms: float  # position in the reply audio
    end_ms: float


@dataclass
class Reply:
    """One assistant response and what of it reached the user."""

    id: str
    text: str = ""
    pieces: list[SpokenPiece] = field(default_factory=list)
    audio_ms: float = 0.0
    history_index: int | None = None  # where its assistant turn sits in history
    played_ms: float | None = None  # what the client reported having played

    def heard_text(self, played_ms: float) -> str:
        """The part of the reply spoken before `played_ms` (words cut proportionally)."""
        heard: list[str] = []
        for piece in self.pieces:
            if played_ms >= piece.end_ms:
                heard.append(piece.text)
            elif played_ms > piece.start_ms:
                words = piece.text.split()
                share = (played_ms - piece.start_ms) / max(1.0, piece.end_ms - piece.start_ms)
                heard.append(" ".join(words[: int(len(words) * share)]))
        return " ".join(h for h in heard if h)


class UserTurn:
    """One user utterance streamed to ASR while it is spoken."""

    def __init__(self, session: ConversationSession, speech_start: int) -> None:
        self.session = session
        self.speech_start = speech_start
        self._audio: asyncio.Queue[AudioChunk] = asyncio.Queue()
        self.final: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run())

    def feed(self, pcm: bytes) -> None:
        self._audio.put_nowait(AudioChunk(pcm=pcm, sample_rate=PIPELINE_RATE))

    def end(self) -> None:
        self._audio.put_nowait(AudioChunk(end_of_stream=True, sample_rate=PIPELINE_RATE))

    def abort(self) -> None:
        self._task.cancel()

    async def _requests(self) -> AsyncIterator[AudioChunk]:
        while True:
            chunk = await self._audio.get()
            yield chunk
            if chunk.end_of_stream:
                return

    async def _run(self) -> None:
        metadata = [("parley-partials", "1")]
        if self.session.options.language:
            metadata.append(("parley-language", self.session.options.language))
        text: str | None = None
        try:
            async for result in clients.transcribe(self.session.directory, self._requests(), tuple(metadata)):
                if result.is_final:
                    text = result.text.strip()
                else:
                    self.session.send(event("transcript.partial", text=result.text.strip()))
        except ServiceError as exc:
            self.session.report(exc.code, exc.message)
        finally:
            if not self.final.done():
                self.final.set_result(text)


class ConversationSession:
    def __init__(
        self, settings: GatewaySettings, directory: ServiceDirectory, send: Send, options: SessionStart
    ) -> None:
        self.id = f"sess_{uuid.uuid4().hex[:16]}"
        self.settings = settings
        self.directory = directory
        self.send = send
        self.options = options
        self.history: list[llm_pb2.Message] = []
        self.ring = AudioRing(PIPELINE_RATE, settings.preroll_s)
        self._resampler = StreamResampler(options.input_sample_rate, PIPELINE_RATE)
        self._max_frame_bytes = options.input_sample_rate * BYTES_PER_SAMPLE * settings.max_frame_ms // 1000
        self._vad_audio: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._turn: UserTurn | None = None
        self._reply_task: asyncio.Task[None] | None = None
        self._replies: dict[str, Reply] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._vad_task = asyncio.create_task(self._run_vad())

    # ---- input ---------------------------------------------------------------

    def report(self, code: ErrorCode, message: str) -> None:
        self.send(error_event(code, message))

    def on_audio(self, frame: bytes) -> None:
        if len(frame) % BYTES_PER_SAMPLE:
            raise ProtocolError(
                ErrorCode.BAD_AUDIO, f"audio frames are PCM16: {len(frame)} bytes is not a whole sample count"
            )
        if len(frame) > self._max_frame_bytes:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"audio frame of {len(frame)} bytes is over {self.settings.max_frame_ms} ms "
                f"({self._max_frame_bytes} bytes at {self.options.input_sample_rate} Hz)",
            )
        pcm = float_to_pcm16(self._resampler.push(pcm16_to_float(frame)))
        if not pcm:
            return
        position = self.ring.append(pcm)
        self._vad_audio.put_nowait((position, pcm))
        if self._turn is not None:
            self._turn.feed(pcm)

    def on_text(self, text: str) -> None:
        text = text.strip()
        if len(text) > self.settings.max_text_chars:
            raise ProtocolError(
                ErrorCode.TEXT_TOO_LONG, f"text.input is limited to {self.settings.max_text_chars} characters"
            )
        if text:
            self._start_reply(text, turn_end=time.perf_counter(), timings={})

    def on_audio_played(self, report: AudioPlayed) -> None:
        """The client says how much of a reply it played: history keeps only that part."""
        reply = self._replies.get(report.response_id)
        if reply is None:
            return
        reply.played_ms = report.played_ms
        # Reports can arrive while the reply is still being generated (barge-in);
        # then _remember applies it when the assistant turn is stored.
        if reply.history_index is not None:
            self.history[reply.history_index].content = self._heard(reply, reply.text.strip())

    async def cancel_reply(self) -> None:
        task = self._reply_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ---- turn-taking ---------------------------------------------------------

    async def _vad_requests(self, origin: list[int]) -> AsyncIterator[AudioChunk]:
        while True:
            position, pcm = await self._vad_audio.get()
            if not origin:
                origin.append(position)  # this VAD stream's time zero
            yield AudioChunk(pcm=pcm, sample_rate=PIPELINE_RATE)

    async def _run_vad(self) -> None:
        vad = self.options.vad
        metadata = tuple(
            (f"parley-{name.replace('_', '-')}", str(value))
            for name, value in vad.model_dump(exclude_none=True).items()
        )
        while True:
            origin: list[int] = []
            try:
                async for vad_event in clients.detect(self.directory, self._vad_requests(origin), metadata):
                    self._on_vad_event(vad_event, origin[0] if origin else self.ring.end)
            except ServiceError as exc:
                self.report(exc.code, f"voice detection interrupted: {exc.message}")
            # The VAD instance went away: start over on another one.
            await asyncio.sleep(1.0)

    def _on_vad_event(self, vad_event: Any, origin: int) -> None:
        from parley.vad.v1.vad_pb2 import VadEvent

        position = origin + int(vad_event.timestamp_s * PIPELINE_RATE)
        if vad_event.kind == VadEvent.SPEECH_STARTED:
            self.send(event("vad.speech_started", audio_start_ms=round(position * 1000 / PIPELINE_RATE)))
            if self._turn is not None:
                self._turn.abort()
            self._turn = UserTurn(self, position)
            self._turn.feed(self.ring.since(position))
        elif vad_event.kind == VadEvent.SPEECH_STOPPED and self._turn is not None:
            turn_end = time.perf_counter()
            silence_ms = (vad_event.decided_at_s - vad_event.timestamp_s) * 1000
            self.send(event("vad.speech_stopped", audio_end_ms=round(position * 1000 / PIPELINE_RATE)))
            turn, self._turn = self._turn, None
            turn.end()
            self._spawn(self._finish_turn(turn, turn_end, {"vad_silence_ms": round(silence_ms)}))

    async def _finish_turn(self, turn: UserTurn, turn_end: float, timings: dict[str, float]) -> None:
        text = await turn.final
        if text is None:
            return
        timings["asr_ms"] = self._stage("asr", turn_end)
        self.send(event("transcript.final", text=text))
        if text:
            self._start_reply(text, turn_end, timings)

    # ---- the reply -----------------------------------------------------------

    def _start_reply(self, user_text: str, turn_end: float, timings: dict[str, float]) -> None:
        previous = self._reply_task
        self._reply_task = asyncio.create_task(self._reply(user_text, turn_end, timings, previous))

    def _stage(self, name: str, turn_end: float) -> float:
        seconds = time.perf_counter() - turn_end
        STAGE_SECONDS.labels(name).observe(seconds)
        return round(seconds * 1000, 1)

    def _llm_request(self, user_text: str) -> llm_pb2.GenerateRequest:
        messages = []
        if self.options.system_prompt:
            messages.append(llm_pb2.Message(role="system", content=self.options.system_prompt))
        limit = self.settings.history_turns * 2
        messages += self.history[-limit:] if limit else []
        messages.append(llm_pb2.Message(role="user", content=user_text))
        return llm_pb2.GenerateRequest(
            messages=messages, max_tokens=self.settings.llm_max_tokens, temperature=-1.0, session_id=self.id
        )

    async def _reply(
        self, user_text: str, turn_end: float, timings: dict[str, float], previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None and not previous.done():
            previous.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        reply = Reply(id=f"resp_{uuid.uuid4().hex[:12]}")
        self._replies = {reply.id: reply}  # only the latest reply can still be reported on
        request = self._llm_request(user_text)
        self.history.append(llm_pb2.Message(role="user", content=user_text))
        self.send(event("response.created", response_id=reply.id))
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak(reply, sentences, turn_end, timings))
        chunker = SentenceChunker(self.settings.first_clause_min_chars)
        try:
            async for delta in clients.generate(self.directory, request, self.settings.stream_timeout_s):
                if "llm_first_token_ms" not in timings:
                    timings["llm_first_token_ms"] = self._stage("llm_first_token", turn_end)
                if delta.text:
                    reply.text += delta.text
                    self.send(event("response.text.delta", response_id=reply.id, text=delta.text))
                    for sentence in chunker.push(delta.text):
                        sentences.put_nowait(sentence)
            for sentence in chunker.flush():
                sentences.put_nowait(sentence)
            sentences.put_nowait(None)
            await speaker
        except asyncio.CancelledError:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
            self._remember(reply, reply.heard_text(reply.audio_ms))
            RESPONSES_TOTAL.labels("cancelled").inc()
            self.send(event("response.cancelled", response_id=reply.id, audio_sent_ms=round(reply.audio_ms)))
            raise
        except ServiceError as exc:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
            self._remember(reply, reply.heard_text(reply.audio_ms))
            RESPONSES_TOTAL.labels("failed").inc()
            self.report(exc.code, exc.message)
            self.send(event("response.done", response_id=reply.id, status="failed", timings=timings))
            return
        self._remember(reply, reply.text.strip())
        if reply.audio_ms:
            self.send(event("response.audio.done", response_id=reply.id, audio_ms=round(reply.audio_ms)))
        timings["total_ms"] = self._stage("total", turn_end)
        RESPONSES_TOTAL.labels("completed").inc()
        self.send(
            event("response.done", response_id=reply.id, status="completed", text=reply.text.strip(), timings=timings)
        )

    @staticmethod
    def _heard(reply: Reply, text: str) -> str:
        if reply.played_ms is None or reply.played_ms >= reply.audio_ms:
            return text
        return reply.heard_text(reply.played_ms)

    def _remember(self, reply: Reply, text: str) -> None:
        reply.history_index = len(self.history)
        self.history.append(llm_pb2.Message(role="assistant", content=self._heard(reply, text)))

    async def _speak(
        self, reply: Reply, sentences: asyncio.Queue[str | None], turn_end: float, timings: dict[str, float]
    ) -> None:
        rate = self.settings.output_sample_rate
        voice = self.options.voice or self.settings.voice
        while (sentence := await sentences.get()) is not None:
            start_ms = reply.audio_ms
            request = tts_pb2.SynthesizeRequest(text=sentence, voice=voice, sample_rate=rate)
            async for chunk in clients.synthesize(self.directory, request, self.settings.stream_timeout_s):
                if not chunk.pcm:
                    continue
                if "tts_first_audio_ms" not in timings:
                    timings["tts_first_audio_ms"] = self._stage("tts_first_audio", turn_end)
                    self.send(event("response.audio.started", response_id=reply.id, sample_rate=rate))
                self.send(chunk.pcm)
                if "first_audio_sent_ms" not in timings:
                    timings["first_audio_sent_ms"] = self._stage("first_audio_sent", turn_end)
                reply.audio_ms += len(chunk.pcm) / BYTES_PER_SAMPLE / rate * 1000
            reply.pieces.append(SpokenPiece(sentence, start_ms, reply.audio_ms))

    # ---- life cycle ----------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._turn is not None:
            self._turn.abort()
        await self.cancel_reply()
        for task in [self._vad_task, *self._tasks]:
            task.cancel()
        await asyncio.gather(self._vad_task, *self._tasks, return_exceptions=True)
