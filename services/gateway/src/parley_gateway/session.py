"""One conversation over one WebSocket: turn-taking and the reply pipeline.

    client audio ─► resample to 16 kHz ─► audio ring ─► VAD stream (whole session)
                                              │
         speech started ──────────────────────┴─► ASR stream (partials while speaking)
         speech paused  ─► end ASR stream ─► transcript ─► reply starts, HELD
         speech resumed ─► drop the held reply, re-transcribe the whole utterance
         speech stopped ─► transcript.final ─► release the held reply (or start one)

    reply: LLM deltas ─► response.text.delta + sentence chunker ─► TTS a sentence
           at a time ─► binary audio ─► response.done (per-stage timings)

Starting the reply at a pause (200 ms) instead of the end of turn (500 ms)
hides transcription and most of the LLM and TTS time inside the silence the
VAD must wait for anyway. A held reply's events and history changes are kept
back until the turn is confirmed, so the client never sees a wrong guess.

Everything a session sends goes through one outbox, so events keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.llm.v1 import llm_pb2
from parley.pcm import BYTES_PER_SAMPLE, StreamResampler, duration_s, float_to_pcm16, pcm16_to_float
from parley.streams import options_metadata
from parley.tts.v1 import tts_pb2
from parley.vad.v1.vad_pb2 import VadEvent
from parley_gateway import clients
from parley_gateway.audio_ring import AudioRing
from parley_gateway.clients import ServiceError
from parley_gateway.config import GatewaySettings
from parley_gateway.discovery import ServiceDirectory
from parley_gateway.metrics import BARGE_INS_TOTAL, PREEMPTIVE_TOTAL, RESPONSES_TOTAL, STAGE_SECONDS
from parley_gateway.protocol import AudioPlayed, ErrorCode, ProtocolError, SessionStart, error_event, event
from parley_gateway.sentences import SentenceChunker

log = logging.getLogger(__name__)

PIPELINE_RATE = 16000  # what VAD and ASR receive
RECENT_REPLIES = 4
# Played positions this close to the end count as the whole reply (rounding, resampling).
PLAYED_TOLERANCE_MS = 60.0
Message = dict[str, Any] | bytes
Send = Callable[[Message], None]


@dataclass
class SpokenPiece:
    text: str
    start_ms: float  # position in the reply audio
    end_ms: float


class ReplyOutput:
    """Where a reply's messages and history changes go.

    Live: straight to the client. Held (a reply started on a guess): kept
    until `release()` (the turn really ended) or dropped by `discard()`.
    """

    def __init__(self, send: Send, held: bool) -> None:
        self._send = send
        self._held: list[Message | Callable[[], None]] | None = [] if held else None
        self.discarded = False

    @property
    def held(self) -> bool:
        return self._held is not None

    def send(self, message: Message) -> None:
        self._queue(message)

    def defer(self, change: Callable[[], None]) -> None:
        """Apply a state change now if live, at release if held, never if discarded."""
        self._queue(change)

    def _queue(self, item: Message | Callable[[], None]) -> None:
        if self.discarded:
            return
        if self._held is not None:
            self._held.append(item)
        elif callable(item):
            item()
        else:
            self._send(item)

    def release(self) -> None:
        held, self._held = self._held or [], None
        for item in held:
            self._queue(item)

    def discard(self) -> None:
        self.discarded = True
        self._held = None


@dataclass
class Reply:
    """One assistant response, its timing marks, and what of it reached the user."""

    id: str
    user_text: str
    output: ReplyOutput
    turn_end: float | None = None  # perf_counter time the user's turn ended (None: not yet)
    timings: dict[str, float] = field(default_factory=dict)  # known before the reply started
    marks: dict[str, float] = field(default_factory=dict)  # perf_counter time of each stage
    text: str = ""
    pieces: list[SpokenPiece] = field(default_factory=list)
    audio_ms: float = 0.0
    first_audio_sent_at: float | None = None
    history_index: int | None = None  # where its assistant turn sits in history
    played_ms: float | None = None  # what the client reported having played
    task: asyncio.Task[None] | None = None

    def mark(self, stage: str) -> None:
        self.marks.setdefault(stage, time.perf_counter())

    def fully_played(self, played_ms: float) -> bool:
        return played_ms + PLAYED_TOLERANCE_MS >= self.audio_ms

    def heard_text(self, played_ms: float) -> str:
        """The part of the reply spoken before `played_ms` (words cut proportionally)."""
        if self.fully_played(played_ms):
            played_ms = self.audio_ms
        heard: list[str] = []
        for piece in self.pieces:
            if played_ms >= piece.end_ms:
                heard.append(piece.text)
            elif played_ms > piece.start_ms:
                words = piece.text.split()
                share = (played_ms - piece.start_ms) / max(1.0, piece.end_ms - piece.start_ms)
                heard.append(" ".join(words[: round(len(words) * share)]))
        return " ".join(h for h in heard if h)

    def playing_until(self, margin_s: float) -> float:
        """When the client will have played everything sent, assuming it plays at once."""
        if self.first_audio_sent_at is None:
            return 0.0
        return self.first_audio_sent_at + self.audio_ms / 1000 + margin_s

    def stage_timings(self) -> dict[str, float]:
        """Milliseconds from the end of the user's turn to each stage (0 if it came before)."""
        assert self.turn_end is not None
        out = dict(self.timings)
        for stage, at in self.marks.items():
            out[f"{stage}_ms"] = round(max(0.0, at - self.turn_end) * 1000, 1)
        return out


class UserTurn:
    """One user utterance, streamed to ASR while it is spoken."""

    def __init__(self, session: ConversationSession, speech_start: int) -> None:
        self.session = session
        self.speech_start = speech_start
        self._audio: asyncio.Queue[AudioChunk] = asyncio.Queue()
        self.final: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.ended = False  # no more audio goes to this ASR stream
        self.stopped = False  # the turn is over (VAD stop or input.commit)
        self.abandoned = False  # speech resumed after a pause: a new ASR stream took over
        self.guess: Reply | None = None  # the reply started on this turn's pause
        self.has_audio = False
        self.language = ""
        self._task = asyncio.create_task(self._run())

    def feed(self, pcm: bytes) -> None:
        if pcm and not self.ended:
            self.has_audio = True
            self._audio.put_nowait(AudioChunk(pcm=pcm, sample_rate=PIPELINE_RATE))

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self._audio.put_nowait(AudioChunk(end_of_stream=True, sample_rate=PIPELINE_RATE))

    def abort(self) -> None:
        self._task.cancel()
        if not self.final.done():
            self.final.set_result(None)

    async def _requests(self) -> AsyncIterator[AudioChunk]:
        while True:
            chunk = await self._audio.get()
            yield chunk
            if chunk.end_of_stream:
                return

    async def _run(self) -> None:
        metadata = options_metadata({"partials": 1, "language": self.session.options.language})
        text: str | None = None
        try:
            async for result in clients.transcribe(self.session.directory, self._requests(), metadata):
                if result.is_final:
                    text = result.text.strip()
                    self.language = result.language
                elif not self.ended:
                    self.session.send(
                        event("transcript.partial", text=result.text.strip(), stable=result.stable_text.strip())
                    )
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
        self.ring = AudioRing(PIPELINE_RATE, settings.audio_buffer_s)
        self._resampler = StreamResampler(options.input_sample_rate, PIPELINE_RATE)
        self._max_frame_bytes = options.input_sample_rate * BYTES_PER_SAMPLE * settings.max_frame_ms // 1000
        self._vad_audio: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._turn: UserTurn | None = None
        self._reply: Reply | None = None  # the latest reply, live or held
        self._recent: dict[str, Reply] = {}  # recent replies by id, for late played reports
        self._tasks: set[asyncio.Task[Any]] = set()
        self._push_to_talk = options.turn_detection == "push_to_talk"
        self._vad_task = None if self._push_to_talk else asyncio.create_task(self._run_vad())

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
        if self._push_to_talk and self._turn is None:
            # The first audio after a commit opens the next turn, and interrupts the
            # assistant: a deliberate press, so no echo guard.
            self._interrupt(barge_in=True, echo_guard=False)
            self._turn = UserTurn(self, position)
        if self._vad_task is not None:
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
            self._start_reply(text, held=False, turn_end=time.perf_counter(), timings={})

    def on_commit(self) -> None:
        turn = self._turn
        if turn is None or not turn.has_audio:
            raise ProtocolError(ErrorCode.EMPTY_TURN, "input.commit: no audio since the last turn")
        self._turn = None
        self._stop_turn(turn, time.perf_counter(), {})

    def on_audio_played(self, report: AudioPlayed) -> None:
        """The client says how much of a reply it played: history keeps only that part."""
        reply = self._recent.get(report.response_id)
        if reply is None:
            return
        reply.played_ms = report.played_ms
        # Reports can arrive while the reply is still being generated (barge-in);
        # then _remember applies it when the assistant turn is stored.
        if reply.history_index is not None:
            self._apply_heard(reply)

    def cancel_reply(self) -> None:
        """response.cancel from the client."""
        self._interrupt(barge_in=False)

    # ---- turn-taking ---------------------------------------------------------

    async def _vad_requests(self, origin: list[int]) -> AsyncIterator[AudioChunk]:
        while True:
            position, pcm = await self._vad_audio.get()
            if not origin:
                origin.append(position)  # this VAD stream's time zero
            yield AudioChunk(pcm=pcm, sample_rate=PIPELINE_RATE)

    async def _run_vad(self) -> None:
        metadata = options_metadata(self.options.vad)
        while True:
            origin: list[int] = []
            try:
                async for vad_event in clients.detect(self.directory, self._vad_requests(origin), metadata):
                    self._on_vad_event(vad_event, origin[0] if origin else self.ring.end)
            except ServiceError as exc:
                self.report(exc.code, f"voice detection interrupted: {exc.message}")
            # The VAD instance went away: start over on another one.
            await asyncio.sleep(1.0)

    def _on_vad_event(self, vad_event: VadEvent, origin: int) -> None:
        position = origin + int(vad_event.timestamp_s * PIPELINE_RATE)
        turn = self._turn
        if vad_event.kind == VadEvent.SPEECH_STARTED:
            if not self._interrupt(barge_in=True):
                return  # within the echo guard: most likely the assistant's own voice
            self.send(event("vad.speech_started", audio_start_ms=round(position * 1000 / PIPELINE_RATE)))
            if turn is not None:
                turn.abort()
            self._turn = UserTurn(self, position)
            self._turn.feed(self.ring.since(position))
        elif turn is None:
            return
        elif vad_event.kind == VadEvent.SPEECH_PAUSED and self.options.preemptive:
            turn.end()
            self._spawn(self._guess_reply(turn))
        elif vad_event.kind == VadEvent.SPEECH_RESUMED and turn.ended:
            # The pause was not the end: drop the guess, transcribe the whole utterance again.
            turn.abandoned = True
            if turn.guess is not None:
                PREEMPTIVE_TOTAL.labels("miss").inc()
                self._drop(turn.guess)
            self._turn = UserTurn(self, turn.speech_start)
            self._turn.feed(self.ring.since(turn.speech_start))
        elif vad_event.kind == VadEvent.SPEECH_STOPPED:
            self.send(event("vad.speech_stopped", audio_end_ms=round(position * 1000 / PIPELINE_RATE)))
            self._turn = None
            silence_ms = round((vad_event.decided_at_s - vad_event.timestamp_s) * 1000)
            self._stop_turn(turn, time.perf_counter(), {"vad_silence_ms": silence_ms})

    def _stop_turn(self, turn: UserTurn, turn_end: float, timings: dict[str, float]) -> None:
        turn.stopped = True
        turn.end()
        self._spawn(self._finish_turn(turn, turn_end, timings))

    async def _guess_reply(self, turn: UserTurn) -> None:
        """At a pause: start the reply on the transcript so far, held back."""
        text = await turn.final
        if text and any(c.isalnum() for c in text) and not turn.abandoned and not turn.stopped:
            turn.guess = self._start_reply(text, held=True, turn_end=None, timings={})

    async def _finish_turn(self, turn: UserTurn, turn_end: float, timings: dict[str, float]) -> None:
        text = await turn.final
        if text is None:
            return  # the ASR stream failed; the error was reported
        if not any(c.isalnum() for c in text):
            # Nothing intelligible (a cough, a tap): tell the client, answer nothing.
            self.send(event("transcript.final", text="", language=turn.language))
            if turn.guess is not None:
                self._drop(turn.guess)
            return
        timings["asr_ms"] = round((time.perf_counter() - turn_end) * 1000, 1)
        STAGE_SECONDS.labels("asr").observe(timings["asr_ms"] / 1000)
        self.send(event("transcript.final", text=text, language=turn.language))
        guess = turn.guess
        if guess is not None and not guess.output.discarded and guess.user_text == text:
            PREEMPTIVE_TOTAL.labels("hit").inc()
            guess.turn_end = turn_end
            guess.timings.update(timings, preemptive=True)
            guess.output.release()
        else:
            if guess is not None:
                PREEMPTIVE_TOTAL.labels("miss").inc()
                self._drop(guess)
            self._start_reply(text, held=False, turn_end=turn_end, timings=timings)

    # ---- the reply -----------------------------------------------------------

    def _interrupt(self, barge_in: bool, echo_guard: bool = True) -> bool:
        """Stop the live reply, and tell the client to flush what it still plays.

        Returns False when user speech came within the echo guard of the reply's
        first audio (then nothing is interrupted).
        """
        reply = self._reply
        if reply is None or reply.output.held:
            return True
        now = time.perf_counter()
        running = reply.task is not None and not reply.task.done()
        playing = now < reply.playing_until(self.settings.playback_margin_ms / 1000)
        if not (running or playing):
            return True
        guard_s = self.settings.echo_guard_ms / 1000 if barge_in and echo_guard else 0.0
        if reply.first_audio_sent_at is not None and now - reply.first_audio_sent_at < guard_s:
            return False
        if barge_in:
            BARGE_INS_TOTAL.inc()
        if running:
            assert reply.task is not None
            reply.task.cancel()  # it sends response.cancelled itself
        else:
            self.send(event("response.cancelled", response_id=reply.id, audio_sent_ms=round(reply.audio_ms)))
        return True

    def _drop(self, reply: Reply) -> None:
        """Throw away a held reply: the client never hears of it."""
        reply.output.discard()
        if reply.task is not None:
            reply.task.cancel()

    def _start_reply(self, user_text: str, held: bool, turn_end: float | None, timings: dict[str, float]) -> Reply:
        previous = self._reply
        reply = Reply(
            id=f"resp_{uuid.uuid4().hex[:12]}",
            user_text=user_text,
            output=ReplyOutput(self.send, held),
            turn_end=turn_end,
            timings=timings,
        )
        self._reply = reply
        self._recent[reply.id] = reply
        for old in list(self._recent)[:-RECENT_REPLIES]:
            del self._recent[old]
        reply.task = asyncio.create_task(self._run_reply(reply, previous))
        return reply

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

    async def _run_reply(self, reply: Reply, previous: Reply | None) -> None:
        if previous is not None and previous.task is not None and not previous.task.done():
            previous.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await previous.task
        out = reply.output
        request = self._llm_request(reply.user_text)
        out.defer(lambda: self.history.append(llm_pb2.Message(role="user", content=reply.user_text)))
        out.send(event("response.created", response_id=reply.id))
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak(reply, sentences))
        chunker = SentenceChunker(self.settings.first_clause_min_chars)
        try:
            async for delta in clients.generate(self.directory, request, self.settings.stream_timeout_s):
                reply.mark("llm_first_token")
                if delta.text:
                    reply.text += delta.text
                    out.send(event("response.text.delta", response_id=reply.id, text=delta.text))
                    for sentence in chunker.push(delta.text):
                        sentences.put_nowait(sentence)
            for sentence in chunker.flush():
                sentences.put_nowait(sentence)
            sentences.put_nowait(None)
            await speaker
        except asyncio.CancelledError:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
            out.defer(lambda: self._remember(reply, reply.heard_text(reply.audio_ms)))
            if not out.discarded:
                RESPONSES_TOTAL.labels("cancelled").inc()
            out.send(event("response.cancelled", response_id=reply.id, audio_sent_ms=round(reply.audio_ms)))
            raise
        except ServiceError as exc:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
            out.defer(lambda: self._remember(reply, reply.heard_text(reply.audio_ms)))
            out.defer(lambda: RESPONSES_TOTAL.labels("failed").inc())
            out.send(error_event(exc.code, exc.message))
            out.defer(lambda: self._finish(reply, "failed"))
            return
        out.defer(lambda: self._remember(reply, reply.text.strip()))
        if reply.audio_ms:
            out.send(event("response.audio.done", response_id=reply.id, audio_ms=round(reply.audio_ms)))
        out.defer(lambda: RESPONSES_TOTAL.labels("completed").inc())
        out.defer(lambda: self._finish(reply, "completed"))

    def _finish(self, reply: Reply, status: str) -> None:
        """response.done, sent once the reply is live (its turn end is known then)."""
        reply.mark("total")
        timings = reply.stage_timings()
        for name, value in timings.items():
            if name.endswith("_ms") and name != "vad_silence_ms" and name != "asr_ms":
                STAGE_SECONDS.labels(name.removesuffix("_ms")).observe(value / 1000)
        self.send(event("response.done", response_id=reply.id, status=status, text=reply.text.strip(), timings=timings))

    def _apply_heard(self, reply: Reply) -> None:
        assert reply.history_index is not None and reply.played_ms is not None
        if not reply.fully_played(reply.played_ms):
            heard = reply.heard_text(reply.played_ms)
            self.history[reply.history_index].content = heard
            self.send(event("response.truncated", response_id=reply.id, played_ms=round(reply.played_ms), text=heard))

    def _remember(self, reply: Reply, text: str) -> None:
        reply.history_index = len(self.history)
        self.history.append(llm_pb2.Message(role="assistant", content=text))
        if reply.played_ms is not None:
            self._apply_heard(reply)

    async def _speak(self, reply: Reply, sentences: asyncio.Queue[str | None]) -> None:
        rate = self.settings.output_sample_rate
        voice = self.options.voice or self.settings.voice
        out = reply.output
        while (sentence := await sentences.get()) is not None:
            # Recorded before its audio, so a cut mid-sentence still counts what was heard of it.
            piece = SpokenPiece(sentence, reply.audio_ms, reply.audio_ms)
            reply.pieces.append(piece)
            request = tts_pb2.SynthesizeRequest(text=sentence, voice=voice, sample_rate=rate)
            async for chunk in clients.synthesize(self.directory, request, self.settings.stream_timeout_s):
                if not chunk.pcm:
                    continue
                if "tts_first_audio" not in reply.marks:
                    reply.mark("tts_first_audio")
                    out.send(event("response.audio.started", response_id=reply.id, sample_rate=rate))
                    out.defer(lambda: self._first_audio_sent(reply))
                out.send(chunk.pcm)
                reply.audio_ms += duration_s(chunk.pcm, rate) * 1000
                piece.end_ms = reply.audio_ms

    @staticmethod
    def _first_audio_sent(reply: Reply) -> None:
        reply.mark("first_audio_sent")
        reply.first_audio_sent_at = reply.marks["first_audio_sent"]

    # ---- life cycle ----------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._turn is not None:
            self._turn.abort()
        tasks = [*self._tasks]
        if self._vad_task is not None:
            tasks.append(self._vad_task)
        if self._reply is not None and self._reply.task is not None:
            tasks.append(self._reply.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
