"""One conversation over one WebSocket: the I/O around the turn-taking state machine.

    client audio ─► resample to 16 kHz ─► audio ring ─► VAD stream (whole session)
                                              │             │ speech events
                                              │             ▼
                                              │        TurnTaker (turns.py: decides)
                                              │             │ ports
                                              └─► ASR stream per utterance (Transcription)
                                                            reply pipeline (below)

    reply: LLM deltas ─► response.text.delta + sentence chunker ─► TTS a sentence
           at a time ─► binary audio ─► response.done (per-stage timings)

The `TurnTaker` decides who speaks when; this module does what it decides:
it opens and ends ASR streams, runs replies (held back while they are a
guess, see `ReplyOutput`), and tells the state machine what reached the
client. The model services come in as a `ModelServices` (gRPC in the gateway,
fakes in tests) and time comes from a `Clock`.

Everything a session sends goes through one outbox, so events keep their order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.llm.v1 import llm_pb2
from parley.pcm import BYTES_PER_SAMPLE, StreamResampler, duration_s, float_to_pcm16, pcm16_to_float
from parley.streams import options_metadata
from parley.tts.v1 import tts_pb2
from parley.vad.v1.vad_pb2 import VadEvent
from parley_gateway.audio_ring import AudioRing
from parley_gateway.clients import ModelServices, ServiceError
from parley_gateway.config import GatewaySettings
from parley_gateway.history import History
from parley_gateway.limits import TokenBucket
from parley_gateway.metrics import LIMITED_TOTAL, RESPONSES_TOTAL, STAGE_SECONDS
from parley_gateway.protocol import AudioPlayed, ErrorCode, ProtocolError, SessionStart, error_event, event
from parley_gateway.replies import Message, Reply, ReplyOutput, Send, SpokenPiece
from parley_gateway.sentences import SentenceChunker
from parley_gateway.session_store import new_session_id
from parley_gateway.turns import Clock, TurnSettings, TurnTaker

# How often a reply's TTS stream moves to another instance when its own dies mid-reply.
TTS_MIDSTREAM_RETRIES = 2

log = logging.getLogger(__name__)

PIPELINE_RATE = 16000  # what VAD and ASR receive
# Audio goes to ASR in pieces of this length, however much is sent at once (a
# resumed utterance is re-sent from its start): far below the ASR's chunk limit.
ASR_CHUNK_SAMPLES = PIPELINE_RATE // 5
RECENT_REPLIES = 4
VAD_RETRY_S = 1.0


class MonotonicClock:
    def now(self) -> float:
        return time.perf_counter()


class Transcription:
    """One ASR stream of one utterance, read from the session's audio ring.

    It starts at the utterance's (padded) start and follows the ring as audio
    arrives, in small chunks; `end()` fixes its last sample and sends the end
    marker. Its requests can be replayed from the start, so the gateway may
    move it to another ASR instance until the final transcript has come.
    """

    def __init__(self, session: ConversationSession, turn_id: int, start: int) -> None:
        self.session = session
        self.turn_id = turn_id
        self.start = start
        self.end_at: int | None = None  # ring position of its last sample, once ended
        self.end_sent_at: float | None = None  # time.monotonic() when the end marker left
        self._more = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    def wake(self) -> None:
        self._more.set()

    def end(self) -> None:
        if self.end_at is None:
            self.end_at = self.session.ring.end
            self._more.set()

    async def _requests(self) -> AsyncIterator[AudioChunk]:
        ring, cursor = self.session.ring, self.start
        while True:
            # Re-read the limit after every chunk: the end may be fixed while a chunk is in flight.
            limit = ring.end if self.end_at is None else self.end_at
            if cursor < limit:
                upto = min(limit, cursor + ASR_CHUNK_SAMPLES)
                pcm = ring.read(cursor, upto)
                cursor = upto
                if pcm:
                    yield AudioChunk(pcm=pcm, sample_rate=PIPELINE_RATE)
            elif self.end_at is not None:
                self.end_sent_at = time.monotonic()
                yield AudioChunk(end_of_stream=True, sample_rate=PIPELINE_RATE)
                return
            else:
                self._more.clear()
                if ring.end <= cursor:
                    await self._more.wait()

    async def _run(self) -> None:
        session = self.session
        metadata = options_metadata({"partials": 1, "language": session.options.language})
        text: str | None = None
        language = ""
        try:
            async for result in session.services.transcribe(self._requests, metadata, lambda: self.end_sent_at):
                if result.is_final:
                    text, language = result.text.strip(), result.language
                elif self.end_at is None:
                    session.send(
                        event("transcript.partial", text=result.text.strip(), stable=result.stable_text.strip())
                    )
        except ServiceError as exc:
            session.report(exc.code, exc.message)
        session.turns.transcribed(self.turn_id, text, language)


class TextFeed:
    """A reply's sentences for its TTS stream, as the LLM writes them.

    Replayable from the start (the gateway may move the stream to another TTS
    instance until audio flows), and it knows when an answer is owed: from the
    moment a piece went out until the first audio of it came back.
    """

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.ended = False
        self._more = asyncio.Event()
        self._owed_since: float | None = None  # time.monotonic() the oldest unanswered piece left
        self._answered = -1  # the last piece audio came back for

    def add(self, text: str) -> None:
        self.pieces.append(text)
        self._more.set()

    def end(self) -> None:
        self.ended = True
        self._more.set()

    def answered(self, piece: int) -> None:
        if piece > self._answered:
            self._answered = piece
            self._owed_since = None

    def owed_since(self) -> float | None:
        return self._owed_since

    def restart(self, first: int) -> None:
        """The stream moves to another instance, which gets the pieces from `first` on."""
        self._answered = first - 1
        self._owed_since = None

    async def read(self, first: int = 0) -> AsyncIterator[str]:
        sent = first
        while True:
            if sent < len(self.pieces):
                if self._owed_since is None and sent > self._answered:
                    self._owed_since = time.monotonic()
                sent += 1
                yield self.pieces[sent - 1]
            elif self.ended:
                if self._owed_since is None:
                    self._owed_since = time.monotonic()  # the end of the stream is owed now
                return
            else:
                self._more.clear()
                await self._more.wait()


class ConversationSession:
    def __init__(
        self,
        settings: GatewaySettings,
        services: ModelServices,
        send: Send,
        options: SessionStart,
        clock: Clock | None = None,
        session_id: str = "",
        history: History | None = None,
        on_history_change: Callable[[], None] | None = None,
    ) -> None:
        self.id = session_id or new_session_id()
        self.settings = settings
        self.services = services
        self.send = send
        self.options = options
        self.clock = clock or MonotonicClock()
        self.history = (
            history if history is not None else History(settings.history_max_turns, settings.history_max_tokens)
        )
        # Called after every change of the history (the session store saves it).
        self._on_history_change = on_history_change
        self.ring = AudioRing(PIPELINE_RATE, settings.audio_buffer_s)
        self.turns = TurnTaker(
            TurnSettings(
                preemptive=options.preemptive,
                echo_guard_s=settings.echo_guard_ms / 1000,
                playback_margin_s=settings.playback_margin_ms / 1000,
            ),
            ports=self,
            clock=self.clock,
        )
        self._resampler = StreamResampler(options.input_sample_rate, PIPELINE_RATE)
        self._max_frame_bytes = options.input_sample_rate * BYTES_PER_SAMPLE * settings.max_frame_ms // 1000
        self._vad_audio: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self._transcriptions: dict[int, Transcription] = {}
        self._replies: dict[str, Reply] = {}  # running and recent replies, by id
        self._latest: Reply | None = None  # the newest reply, live or held
        self._push_to_talk = options.turn_detection == "push_to_talk"
        # Limits on what the client sends (limits.py); audio speed is held at the connection (guard.py).
        self._text_inputs = TokenBucket(
            settings.text_inputs_burst, settings.text_inputs_per_minute / 60, self.clock.now
        )
        self._max_turn_samples = int(settings.push_to_talk_max_s * PIPELINE_RATE)
        self._turn_cut = False  # a push-to-talk turn hit its limit: audio is ignored until input.commit
        self._vad_task = None if self._push_to_talk else asyncio.create_task(self._run_vad())

    # ---- client input --------------------------------------------------------

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
        if not pcm or (self._push_to_talk and self._push_to_talk_too_long(len(pcm) // BYTES_PER_SAMPLE)):
            return
        position = self.ring.append(pcm)
        if self._push_to_talk:
            self.turns.push_to_talk_audio(position)
        else:
            self._vad_audio.put_nowait((position, pcm))
        for transcription in self._transcriptions.values():
            transcription.wake()

    def _push_to_talk_too_long(self, samples: int) -> bool:
        """Whether audio must be dropped: the turn would pass `push_to_talk_max_s` (it is committed then)."""
        if self._turn_cut:
            return True
        turn = self.turns.turn
        if turn is None or self.ring.end + samples - turn.speech_start <= self._max_turn_samples:
            return False
        self._turn_cut = True
        LIMITED_TOTAL.labels(ErrorCode.TURN_TOO_LONG.value).inc()
        self.turns.commit()  # what came so far is the turn, and is answered
        limit = self.settings.push_to_talk_max_s
        self.report(
            ErrorCode.TURN_TOO_LONG,
            f"a push-to-talk turn is at most {limit:g} s: the first {limit:g} s were committed and are answered; "
            "audio until the next input.commit is ignored",
        )
        return True

    def on_text(self, text: str) -> None:
        text = text.strip()
        if len(text) > self.settings.max_text_chars:
            raise ProtocolError(
                ErrorCode.TEXT_TOO_LONG, f"text.input is limited to {self.settings.max_text_chars} characters"
            )
        if not self._text_inputs.take():
            LIMITED_TOTAL.labels(ErrorCode.RATE_LIMITED.value).inc()
            s = self.settings
            raise ProtocolError(
                ErrorCode.RATE_LIMITED,
                f"text.input: at most {s.text_inputs_per_minute} a minute ({s.text_inputs_burst} at once); "
                f"this one was dropped, the next is accepted in {self._text_inputs.wait_s():.1f} s",
            )
        if text:
            self.turns.typed(text)

    def on_commit(self) -> None:
        if self._turn_cut:  # the turn was committed at its length limit already
            self._turn_cut = False
            return
        if not self.turns.commit():
            raise ProtocolError(ErrorCode.EMPTY_TURN, "input.commit: no audio since the last turn")

    def on_audio_playing(self, response_id: str) -> None:
        self.turns.playback_started(response_id)

    def on_audio_played(self, report: AudioPlayed) -> None:
        """The client says how much of a reply it played: history keeps only that part."""
        reply = self._replies.get(report.response_id)
        if reply is None:
            return
        reply.played_ms = report.played_ms
        # Reports can arrive while the reply is still being generated (barge-in);
        # then _remember applies it when the assistant turn is stored.
        if reply.history_index is not None:
            self._apply_heard(reply)

    def on_cancel(self) -> None:
        """response.cancel from the client."""
        self.turns.cancel()

    # ---- voice activity ------------------------------------------------------

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

            def requests(origin: list[int] = origin) -> AsyncIterator[AudioChunk]:
                origin.clear()
                return self._vad_requests(origin)

            try:
                async for vad_event in self.services.detect(requests, metadata):
                    self._on_vad_event(vad_event, origin[0] if origin else self.ring.end)
            except ServiceError as exc:
                self.report(exc.code, f"voice detection interrupted: {exc.message}")
            # The VAD instance went away: start over on another one.
            await asyncio.sleep(VAD_RETRY_S)

    def _on_vad_event(self, vad_event: VadEvent, origin: int) -> None:
        position = origin + int(vad_event.timestamp_s * PIPELINE_RATE)
        at_ms = round(position * 1000 / PIPELINE_RATE)
        if vad_event.kind == VadEvent.SPEECH_STARTED:
            self.turns.speech_started(position, at_ms)
        elif vad_event.kind == VadEvent.SPEECH_PAUSED:
            self.turns.speech_paused()
        elif vad_event.kind == VadEvent.SPEECH_RESUMED:
            self.turns.speech_resumed()
        elif vad_event.kind == VadEvent.SPEECH_STOPPED:
            silence_ms = round((vad_event.decided_at_s - vad_event.timestamp_s) * 1000)
            self.turns.speech_stopped(at_ms, silence_ms)

    # ---- TurnPorts: what the state machine makes happen -----------------------

    def open_transcription(self, turn: int, start: int) -> None:
        transcription = Transcription(self, turn, start)
        self._transcriptions[turn] = transcription
        transcription.task.add_done_callback(lambda _: self._transcriptions.pop(turn, None))

    def end_transcription(self, turn: int) -> None:
        if turn in self._transcriptions:
            self._transcriptions[turn].end()

    def abort_transcription(self, turn: int) -> None:
        transcription = self._transcriptions.pop(turn, None)
        if transcription is not None:
            transcription.task.cancel()

    def start_reply(self, user_text: str, held: bool, turn_end: float | None, timings: dict[str, Any]) -> str:
        previous = self._latest
        reply_id = f"resp_{uuid.uuid4().hex[:12]}"
        output = ReplyOutput(self._delivery(reply_id), held)
        reply = Reply(reply_id, user_text, output, turn_end=turn_end, timings=dict(timings))
        self._latest = reply
        self._replies[reply.id] = reply
        for old in [r for r in self._replies.values() if not r.running and r is not reply][:-RECENT_REPLIES]:
            del self._replies[old.id]
        reply.task = asyncio.create_task(self._run_reply(reply, previous.task if previous else None))
        return reply.id

    def release_reply(self, reply_id: str, turn_end: float, timings: dict[str, Any]) -> None:
        reply = self._replies[reply_id]
        reply.turn_end = turn_end
        reply.timings.update(timings)
        reply.output.release()

    def drop_reply(self, reply_id: str) -> None:
        reply = self._replies.get(reply_id)
        if reply is not None:
            reply.output.discard()
            if reply.task is not None:
                reply.task.cancel()

    def cancel_reply(self, reply_id: str) -> None:
        reply = self._replies.get(reply_id)
        if reply is None:
            return
        if reply.running:
            assert reply.task is not None
            reply.task.cancel()  # it sends response.cancelled itself
        else:
            self.send(event("response.cancelled", response_id=reply.id, audio_sent_ms=round(reply.audio_ms)))

    # ---- the reply -----------------------------------------------------------

    def _delivery(self, reply_id: str) -> Send:
        """Where a reply's live output goes: the client, and the state machine learns what reached it."""

        def deliver(message: Message) -> None:
            self.send(message)
            if isinstance(message, bytes):
                self.turns.reply_audio_sent(reply_id, duration_s(message, self.settings.output_sample_rate))
            elif message.get("type") == "response.text.delta":
                self.turns.reply_text(reply_id, message["text"])

        return deliver

    def _llm_request(self, user_text: str) -> llm_pb2.GenerateRequest:
        messages = []
        if self.options.system_prompt:
            messages.append(llm_pb2.Message(role="system", content=self.options.system_prompt))
        limit = self.settings.history_turns * 2
        # A reply cut before a word was heard has an empty turn: the model need not see it.
        messages += [
            llm_pb2.Message(role=turn.role, content=turn.content) for turn in self.history.recent(limit) if turn.content
        ]
        messages.append(llm_pb2.Message(role="user", content=user_text))
        return llm_pb2.GenerateRequest(
            messages=messages, max_tokens=self.settings.llm_max_tokens, temperature=-1.0, session_id=self.id
        )

    async def _run_reply(self, reply: Reply, previous: asyncio.Task[None] | None) -> None:
        out = reply.output
        created = False
        speaker: asyncio.Task[None] | None = None
        try:
            if previous is not None and not previous.done():
                # The previous reply must be over (its history written) before this one
                # reads the history. asyncio.wait, unlike awaiting the task, lets our own
                # cancellation (a barge-in right now) through.
                previous.cancel()
                await asyncio.wait({previous})
            request = self._llm_request(reply.user_text)
            out.defer(lambda: self._add_user_turn(reply.user_text))
            out.send(event("response.created", response_id=reply.id))
            created = True
            feed = TextFeed()
            speaker = asyncio.create_task(self._speak(reply, feed))
            chunker = SentenceChunker(self.settings.first_clause_min_chars)
            async for delta in self.services.generate(request):
                reply.mark("llm_first_token", self.clock.now())
                if delta.text:
                    reply.text += delta.text
                    out.send(event("response.text.delta", response_id=reply.id, text=delta.text))
                    for sentence in chunker.push(delta.text):
                        self._say(reply, feed, sentence)
            for sentence in chunker.flush():
                self._say(reply, feed, sentence)
            feed.end()
            await speaker
        except asyncio.CancelledError:
            await _stop(speaker)
            if created:
                out.defer(lambda: self._remember(reply, reply.heard_text(reply.audio_ms)))
                if not out.discarded:
                    RESPONSES_TOTAL.labels("cancelled").inc()
                out.send(event("response.cancelled", response_id=reply.id, audio_sent_ms=round(reply.audio_ms)))
            raise
        except ServiceError as exc:
            await _stop(speaker)
            out.defer(lambda: self._remember(reply, reply.heard_text(reply.audio_ms)))
            out.defer(lambda: RESPONSES_TOTAL.labels("failed").inc())
            out.send(error_event(exc.code, exc.message))
            out.defer(lambda: self._finish(reply, "failed"))
            return
        finally:
            self.turns.reply_finished(reply.id)
        out.defer(lambda: self._remember(reply, reply.text.strip()))
        if reply.audio_ms:
            out.send(event("response.audio.done", response_id=reply.id, audio_ms=round(reply.audio_ms)))
        out.defer(lambda: RESPONSES_TOTAL.labels("completed").inc())
        out.defer(lambda: self._finish(reply, "completed"))

    def _finish(self, reply: Reply, status: str) -> None:
        """response.done, sent once the reply is live (its turn end is known then)."""
        reply.mark("total", self.clock.now())
        timings = reply.stage_timings()
        for name, value in timings.items():
            if name.endswith("_ms") and name not in {"vad_silence_ms", "asr_ms"}:
                STAGE_SECONDS.labels(name.removesuffix("_ms")).observe(value / 1000)
        extra = {} if reply.speaker_similarity is None else {"speaker_similarity": reply.speaker_similarity}
        self.send(
            event(
                "response.done", response_id=reply.id, status=status, text=reply.text.strip(), timings=timings, **extra
            )
        )

    def _apply_heard(self, reply: Reply) -> None:
        assert reply.history_index is not None and reply.played_ms is not None
        if not reply.fully_played(reply.played_ms):
            heard = reply.heard_text(reply.played_ms)
            self.history.replace(reply.history_index, heard)
            self._history_changed()
            self.send(event("response.truncated", response_id=reply.id, played_ms=round(reply.played_ms), text=heard))

    def _remember(self, reply: Reply, text: str) -> None:
        reply.history_index = self._add_turn("assistant", text)
        if reply.played_ms is not None:
            self._apply_heard(reply)

    def _add_user_turn(self, text: str) -> None:
        self._add_turn("user", text)

    def _add_turn(self, role: str, content: str) -> int:
        seq = self.history.append(role, content)
        self._history_changed()
        return seq

    def _history_changed(self) -> None:
        if self._on_history_change is not None:
            self._on_history_change()

    @staticmethod
    def _say(reply: Reply, feed: TextFeed, sentence: str) -> None:
        """Queue a sentence for the reply's TTS stream; it counts as heard only once its audio plays."""
        reply.pieces.append(SpokenPiece(sentence, math.inf, math.inf))
        feed.add(sentence)

    async def _speak(self, reply: Reply, feed: TextFeed) -> None:
        """The reply's TTS stream: one call, pinned to the TTS instance of this conversation when it can.

        If its instance dies mid-reply, the rest is spoken by another: from the sentence
        whose audio was flowing (the user may hear its start twice, never a gap).
        """
        rate = self.settings.output_sample_rate
        start = tts_pb2.SpeakStart(
            voice=self.options.voice or self.settings.voice, sample_rate=rate, conversation_id=self.id
        )
        out = reply.output
        first = 0  # the piece this call starts from
        for attempt in range(TTS_MIDSTREAM_RETRIES + 1):
            speaking = first - 1  # the last piece audio came for
            try:
                pieces = functools.partial(feed.read, first)  # replayed from here if the call moves again
                async for response in self.services.speak(start, pieces, feed.owed_since):
                    if response.HasField("done") and response.done.HasField("speaker_similarity"):
                        reply.speaker_similarity = round(response.done.speaker_similarity, 3)
                    if not response.HasField("audio") or not response.audio.pcm:
                        continue
                    index = first + response.piece
                    feed.answered(index)
                    if "tts_first_audio" not in reply.marks:
                        reply.mark("tts_first_audio", self.clock.now())
                        out.send(event("response.audio.started", response_id=reply.id, sample_rate=rate))
                        out.defer(lambda: reply.mark("first_audio_sent", self.clock.now()))
                    piece = reply.pieces[index]
                    if index != speaking:
                        piece.start_ms, speaking = reply.audio_ms, index
                    out.send(response.audio.pcm)
                    reply.audio_ms += duration_s(response.audio.pcm, rate) * 1000
                    piece.end_ms = reply.audio_ms
                return
            except ServiceError as exc:
                if exc.status != grpc.StatusCode.UNAVAILABLE or attempt == TTS_MIDSTREAM_RETRIES:
                    raise
                first = max(speaking, first)
                log.warning(
                    "session %s: TTS instance lost mid-reply (%s); re-speaking from piece %d on another",
                    self.id,
                    exc.message,
                    first,
                )
                feed.restart(first)

    # ---- life cycle ----------------------------------------------------------

    @property
    def busy(self) -> bool:
        """The user is mid-turn, or a reply is being made or still playing (a draining gateway waits)."""
        if self._transcriptions or any(reply.running for reply in self._replies.values()):
            return True
        latest = self._latest
        if latest is None or "first_audio_sent" not in latest.marks:
            return False
        # The client plays a reply in real time from its first audio on.
        return self.clock.now() < latest.marks["first_audio_sent"] + latest.audio_ms / 1000

    async def close(self) -> None:
        tasks = [t.task for t in self._transcriptions.values()]
        tasks += [r.task for r in self._replies.values() if r.task is not None]
        if self._vad_task is not None:
            tasks.append(self._vad_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a helper task and wait for it to end (our own cancellation still propagates)."""
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task})
