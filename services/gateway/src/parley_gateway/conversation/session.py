"""One conversation: the turn machine wired to transcription and replies.

    client audio ─► resample to 16 kHz ─► audio ring ─► VoiceActivity (one VAD stream)
                                              │             │ speech events
                                              │             ▼
                                              │        TurnTaker (turns.py: decides)
                                              │             │ TurnPorts (this class)
                                              └─► Transcription (one ASR stream per utterance)
                                                        Reply (reply.py: runs itself)

The `TurnTaker` decides who speaks when; the session does what it decides: it opens and
ends transcriptions, starts replies and tells them to release, drop or cancel. Client input
is checked by `SessionInputLimits` before anything else sees it. The model services come
in as a `ModelServices` (gRPC in the gateway, fakes in tests) and time (and timers) from a `TurnClock`.

Everything a session sends goes through one `send` (the connection's outbox), so events keep
their order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from parley.llm.v1 import llm_pb2
from parley.pcm import BYTES_PER_SAMPLE, StreamResampler, float_to_pcm16, pcm16_to_float
from parley.tts.v1 import tts_pb2
from parley_gateway.config import ConversationSettings
from parley_gateway.conversation.audio_ring import AudioRing
from parley_gateway.conversation.history import History, RecordedHistory
from parley_gateway.conversation.input_limits import SessionInputLimits
from parley_gateway.conversation.language import LanguageRule, SessionLanguage
from parley_gateway.conversation.prefill import PromptPrefill
from parley_gateway.conversation.reply import Reply, ReplyContext, reply_request
from parley_gateway.conversation.reply_output import Send
from parley_gateway.conversation.transcription import PIPELINE_RATE, Heard, Transcription
from parley_gateway.conversation.turns import Timer, TurnClock, TurnSettings, TurnTaker
from parley_gateway.conversation.voice_activity import VoiceActivity
from parley_gateway.protocol import AudioPlayed, ErrorCode, ProtocolError, SessionStart, error_event
from parley_gateway.routing.model_services import ModelServices

RECENT_REPLIES = 4  # finished replies kept, for the client's playback reports


class MonotonicClock:
    def now(self) -> float:
        return time.perf_counter()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        # On the session's event loop, like every other event the turn machine gets.
        return asyncio.get_running_loop().call_later(delay_s, callback)


def new_session_id() -> str:
    return f"sess_{uuid.uuid4().hex[:16]}"


class ConversationSession:
    def __init__(
        self,
        settings: ConversationSettings,
        services: ModelServices,
        send: Send,
        options: SessionStart,
        clock: TurnClock | None = None,
        session_id: str = "",
        history: History | None = None,
        on_history_change: Callable[[], None] | None = None,
    ) -> None:
        self.id = session_id or new_session_id()
        self.settings = settings
        self.services = services
        self.send = send
        self.options = options
        # The rate of the reply audio this client asked for (the gateway's own when it did not say).
        self.output_sample_rate = options.output_sample_rate or settings.reply.output_sample_rate
        self.clock = clock or MonotonicClock()
        self.history = (
            history if history is not None else History(settings.history.max_turns, settings.history.max_tokens)
        )
        self.ring = AudioRing(PIPELINE_RATE, settings.audio_buffer_s)
        self.turns = TurnTaker(
            TurnSettings(
                preemptive=options.preemptive,
                echo_guard_s=settings.echo_guard_s,
                playback_margin_s=settings.playback_margin_s,
                end_of_turn_threshold=settings.end_of_turn_threshold,
                incomplete_threshold=settings.incomplete_threshold,
                incomplete_turn_max_silence_s=settings.incomplete_turn_max_silence_s,
                doubtful_turn_max_silence_s=settings.doubtful_turn_max_silence_s,
                min_word_confidence=settings.min_word_confidence,
            ),
            ports=self,
            clock=self.clock,
        )
        self.input = SessionInputLimits(settings.input, options.input_sample_rate, self.clock.now)
        # The one asked for, else the one heard; replies follow it (voice and the LLM's language).
        self.language = SessionLanguage(
            options.language,
            LanguageRule(settings.language_switch_probability, settings.language_switch_min_audio_s),
        )
        self._resampler = StreamResampler(options.input_sample_rate, PIPELINE_RATE)
        self._push_to_talk = options.turn_detection == "push_to_talk"
        self._turn_cut = False  # a push-to-talk turn hit its limit: audio is ignored until input.commit
        self._transcriptions: dict[int, Transcription] = {}
        self._replies: dict[str, Reply] = {}  # running and recent replies, by id
        self._latest: Reply | None = None  # the newest reply, live or held
        self._reply_context = ReplyContext(
            services=services,
            settings=settings.reply,
            clock=self.clock,
            send=send,
            watcher=self.turns,
            history=RecordedHistory(self.history, on_history_change),
            llm_request=self._llm_request,
            speak_start=tts_pb2.SpeakStart(
                voice=options.voice or settings.reply.voice,
                sample_rate=self.output_sample_rate,
                conversation_id=self.id,
            ),
            name=f"session {self.id}",
        )
        self.voice_activity = (
            None if self._push_to_talk else VoiceActivity(services, options.vad, self.ring, self.turns, send)
        )
        self._prefill = (
            PromptPrefill(services, lambda text: reply_request(self._llm_request, text, self.language.current))
            if settings.llm_prefill
            else None
        )

    # ---- client input --------------------------------------------------------

    def on_audio(self, frame: bytes) -> None:
        self.input.check_frame(frame)
        pcm = float_to_pcm16(self._resampler.push(pcm16_to_float(frame)))
        if not pcm or (self._push_to_talk and self._push_to_talk_too_long(len(pcm) // BYTES_PER_SAMPLE)):
            return
        position = self.ring.append(pcm)
        if self.voice_activity is None:
            self.turns.push_to_talk_audio(position)
        else:
            self.voice_activity.audio(position, pcm)
        for transcription in self._transcriptions.values():
            transcription.wake()

    def _push_to_talk_too_long(self, samples: int) -> bool:
        """Whether audio must be dropped: the turn would pass its length limit (it is committed then)."""
        if self._turn_cut:
            return True
        turn = self.turns.turn
        if turn is None or not self.input.turn_too_long(self.ring.end + samples - turn.speech_start, PIPELINE_RATE):
            return False
        self._turn_cut = True
        self.turns.commit()  # what came so far is the turn, and is answered
        error = self.input.turn_too_long_error()
        self.send(error_event(error.code, error.message))
        return True

    def on_text(self, text: str) -> None:
        text = text.strip()
        self.input.check_text(text)
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
        if reply is not None:
            reply.played(report.played_ms)

    def on_cancel(self) -> None:
        """response.cancel from the client."""
        self.turns.cancel()

    # ---- TurnPorts: what the turn machine makes happen -------------------------

    def open_transcription(self, turn: int, start: int) -> None:
        transcription = Transcription(
            self.services,
            self.ring,
            turn,
            start,
            self.options.language,
            self.send,
            self._transcribed,
            None if self._prefill is None else self._prefill.heard,
        )
        self._transcriptions[turn] = transcription
        transcription.task.add_done_callback(lambda _: self._transcriptions.pop(turn, None))

    def _transcribed(self, turn: int, heard: Heard) -> None:
        if heard.text:
            self.language.heard(heard.language, heard.language_probability, heard.audio_s)
        self.turns.transcribed(turn, heard.text, heard.language, heard.language_probability, heard.confidence)

    def end_transcription(self, turn: int) -> None:
        if turn in self._transcriptions:
            self._transcriptions[turn].end()

    def abort_transcription(self, turn: int) -> None:
        transcription = self._transcriptions.pop(turn, None)
        if transcription is not None:
            transcription.abort()

    def start_reply(self, user_text: str, held: bool, turn_end: float | None, timings: dict[str, Any]) -> str:
        reply = Reply(
            self._reply_context,
            user_text,
            held,
            turn_end,
            timings,
            previous=self._latest,
            language=self.language.current,
            prefill=None if self._prefill is None else self._prefill.hand_over(),
        )
        self._latest = reply
        self._replies[reply.id] = reply
        for old in [r for r in self._replies.values() if r.done and r is not reply][:-RECENT_REPLIES]:
            del self._replies[old.id]
        return reply.id

    def release_reply(self, reply_id: str, turn_end: float, timings: dict[str, Any]) -> None:
        self._replies[reply_id].release(turn_end, timings)

    def drop_reply(self, reply_id: str) -> None:
        reply = self._replies.get(reply_id)
        if reply is not None:
            reply.drop()

    def cancel_reply(self, reply_id: str) -> None:
        reply = self._replies.get(reply_id)
        if reply is not None:
            reply.cancel()

    def _llm_request(self, user_text: str) -> llm_pb2.GenerateRequest:
        settings = self.settings.reply
        messages = []
        if self.options.system_prompt:
            messages.append(llm_pb2.Message(role="system", content=self.options.system_prompt))
        # A reply cut before a word was heard has an empty turn: the model need not see it.
        messages += [
            llm_pb2.Message(role=turn.role, content=turn.content)
            for turn in self.history.recent(settings.history_turns * 2)
            if turn.content
        ]
        messages.append(llm_pb2.Message(role="user", content=user_text))
        return llm_pb2.GenerateRequest(
            messages=messages, max_tokens=settings.llm_max_tokens, temperature=-1.0, session_id=self.id
        )

    # ---- life cycle ----------------------------------------------------------

    @property
    def busy(self) -> bool:
        """The user is mid-turn, or a reply is being made or still playing (a draining gateway waits)."""
        if self._transcriptions or any(reply.running for reply in self._replies.values()):
            return True
        playing_until = self._latest.playing_until() if self._latest is not None else None
        # The client plays a reply in real time from its first audio on.
        return playing_until is not None and self.clock.now() < playing_until

    async def close(self) -> None:
        self.turns.close()
        tasks = [t.task for t in self._transcriptions.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._prefill is not None:
            await self._prefill.close()
        await asyncio.gather(*(reply.close() for reply in self._replies.values()))
        if self.voice_activity is not None:
            await self.voice_activity.close()
