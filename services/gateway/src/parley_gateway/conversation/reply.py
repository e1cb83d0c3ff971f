"""One reply, from the user's words to its last audio: an object that runs itself.

    (previous reply stopped) ─► LLM deltas ─► response.text.delta + sentence chunker
        ─► ReplySpeech (one TTS stream, fed a sentence at a time) ─► binary audio
        ─► response.audio.done ─► response.done (per-stage timings)

A `Reply` owns its task and its pipeline. The session only says what happens to it:
`release()` (a reply started on a guess turned out right), `drop()` (it turned out wrong:
the client never hears of it), `cancel()` (the user cut it off: `response.cancelled`), and
`played()` (how much the client played: history keeps only that). `done` says it ended, and
`heard_text()` what of it was heard.

A reply always ends, whatever dies under it: the model-service calls have deadlines per
message, and a watchdog fails the reply (`service_timeout`) when nothing moved for
`stall_timeout_s` — whatever it waits for. Its end is exactly one of: completed
(`response.done`), cancelled (`response.cancelled`), or failed (`error`, then `response.done`).

A reply has a language (the conversation's when it started; empty: not known). Outside the
default language the LLM is told to answer in it, and the reply is spoken by a voice that speaks
it (`reply_voice`); when no voice does, the reply is text only and the client is told so with a
`voice_unavailable` error that names the language (the reply itself completes).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from parley import refusals
from parley.llm.v1 import llm_pb2
from parley.pcm import duration_s
from parley.tts.v1 import tts_pb2
from parley_gateway.config import ReplySettings
from parley_gateway.conversation.heard import SpokenAudio
from parley_gateway.conversation.history import RecordedHistory
from parley_gateway.conversation.language import DEFAULT_LANGUAGE, answer_instruction, base_language, language_name
from parley_gateway.conversation.reply_output import Message, ReplyOutput, Send
from parley_gateway.conversation.reply_voice import choose_voice
from parley_gateway.conversation.sentences import SentenceChunker
from parley_gateway.conversation.speech import ReplySpeech
from parley_gateway.conversation.turns import Clock
from parley_gateway.metrics import RESPONSES_TOTAL, STAGE_SECONDS
from parley_gateway.protocol import ErrorCode, error_event, event
from parley_gateway.routing.model_services import ModelServices, ServiceError

# How often the watchdog looks whether a reply still moves.
STALL_CHECK_S = 0.25
# How long a stalled reply's work is given to stop once cancelled before the reply ends anyway.
STOP_WAIT_S = 1.0


class ReplyWatcher(Protocol):
    """Who follows what of a reply reached the client (the turn machine)."""

    def reply_text(self, reply_id: str, text: str) -> None: ...

    def reply_audio_sent(self, reply_id: str, seconds: float) -> None: ...

    def reply_finished(self, reply_id: str) -> None: ...


@dataclass(frozen=True)
class ReplyContext:
    """What every reply of one session shares."""

    services: ModelServices
    settings: ReplySettings
    clock: Clock
    send: Send  # to the client, in order
    watcher: ReplyWatcher
    history: RecordedHistory
    llm_request: Callable[[str], llm_pb2.GenerateRequest]  # built once the previous reply is over
    speak_start: tts_pb2.SpeakStart  # voice, rate, conversation
    name: str  # the session, for the log


class Reply:
    def __init__(
        self,
        context: ReplyContext,
        user_text: str,
        held: bool,
        turn_end: float | None,
        timings: dict[str, Any],
        previous: Reply | None = None,
        language: str = "",
        prefill: asyncio.Task[None] | None = None,
    ) -> None:
        """prefill: the LLM still reading this turn's words (prefill.py); the reply's request waits for it."""
        self.id = f"resp_{uuid.uuid4().hex[:12]}"
        self.context = context
        self.user_text = user_text
        self.language = language  # ISO 639-1 of the reply; empty: not known (the voice's own)
        self.turn_end = turn_end  # when the user's turn ended, on the session's clock (None: not yet)
        self.timings = dict(timings)  # known before the reply started
        self.marks: dict[str, float] = {}  # when each stage was reached
        self.text = ""
        self.spoken = SpokenAudio()
        self.output = ReplyOutput(self._deliver, held)
        self.history_index: int | None = None  # where its assistant turn sits in history
        self.played_ms: float | None = None  # what the client reported having played
        self.speaker_similarity: float | None = None
        self._created = False  # response.created went out (to the output: it may be held)
        self._text_only = False  # no voice speaks its language: its words reach the client as text only
        self._loop = asyncio.get_running_loop()
        self._moved_at = self._loop.time()  # the watchdog's: when the reply last made progress
        self._prefill = prefill
        self._task = asyncio.create_task(self._run(previous))

    # ---- what the session does with it -----------------------------------------------

    @property
    def done(self) -> bool:
        """It ended (completed, cancelled or failed); a held one may still wait for release."""
        return self._task.done()

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def wait(self) -> None:
        """Until it ended (our own cancellation still passes)."""
        await asyncio.wait({self._task})

    def release(self, turn_end: float, timings: dict[str, Any]) -> None:
        """A held reply turned out right: everything it kept back reaches the client now."""
        self.turn_end = turn_end
        self.timings.update(timings)
        self.output.release()

    def drop(self) -> None:
        """A held reply turned out wrong: stop it; the client never hears of it."""
        self.output.discard()
        self._task.cancel()

    def cancel(self) -> None:
        """The user cut it off: stop it, and tell the client to flush its playback."""
        if self.running:
            self._task.cancel()  # it says response.cancelled itself
        else:
            self.context.send(
                event("response.cancelled", response_id=self.id, audio_sent_ms=round(self.spoken.audio_ms))
            )

    async def close(self) -> None:
        """The session ends: stop at once."""
        self._task.cancel()
        await asyncio.wait({self._task})

    def played(self, played_ms: float) -> None:
        """The client says how much it played: history keeps only that part."""
        self.played_ms = played_ms
        # Reports can arrive while the reply is still being made (barge-in); then the
        # assistant turn takes it when it is stored.
        if self.history_index is not None:
            self._keep_heard()

    def heard_text(self, played_ms: float) -> str:
        return self.spoken.heard_text(played_ms)

    def fully_played(self, played_ms: float) -> bool:
        return self.spoken.fully_played(played_ms)

    @property
    def audio_ms(self) -> float:
        return self.spoken.audio_ms

    def playing_until(self) -> float | None:
        """When the client will have played all of it, on the session's clock (None: no audio reached it)."""
        started = self.marks.get("first_audio_sent")
        return None if started is None else started + self.spoken.audio_ms / 1000

    def stage_timings(self) -> dict[str, Any]:
        """Milliseconds from the end of the user's turn to each stage (0 if it came before)."""
        assert self.turn_end is not None
        out = dict(self.timings)
        for stage, at in self.marks.items():
            out[f"{stage}_ms"] = round(max(0.0, at - self.turn_end) * 1000, 1)
        return out

    # ---- its life ---------------------------------------------------------------------

    def _mark(self, stage: str) -> None:
        self.marks.setdefault(stage, self.context.clock.now())

    def _moved(self) -> None:
        self._moved_at = self._loop.time()

    async def _run(self, previous: Reply | None) -> None:
        out = self.output
        try:
            await self._watched(self._make(previous))
        except asyncio.CancelledError:
            if self._created:
                out.defer(lambda: self._remember(self._received_text()))
                if not out.discarded:
                    RESPONSES_TOTAL.labels("cancelled").inc()
                out.send(event("response.cancelled", response_id=self.id, audio_sent_ms=round(self.spoken.audio_ms)))
            raise
        except ServiceError as exc:
            self._create()  # a reply that failed before it began still answers its turn
            out.defer(lambda: self._remember(self._received_text()))
            out.defer(lambda: RESPONSES_TOTAL.labels("failed").inc())
            out.send(error_event(exc.code, exc.message))
            out.defer(lambda: self._finish("failed"))
            return
        finally:
            self.context.watcher.reply_finished(self.id)
        out.defer(lambda: self._remember(self.text.strip()))
        if self.spoken.audio_ms:
            out.send(event("response.audio.done", response_id=self.id, audio_ms=round(self.spoken.audio_ms)))
        out.defer(lambda: RESPONSES_TOTAL.labels("completed").inc())
        out.defer(lambda: self._finish("completed"))

    async def _watched(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work`; fail it when it makes no progress for `stall_timeout_s`, whatever it waits for."""
        limit = self.context.settings.stall_timeout_s
        task = asyncio.create_task(work)
        try:
            while True:
                waited = self._loop.time() - self._moved_at
                if waited > limit:
                    task.cancel()
                    # What it waits for may not even end when cancelled: the reply ends regardless.
                    await asyncio.wait({task}, timeout=STOP_WAIT_S)
                    raise ServiceError(ErrorCode.SERVICE_TIMEOUT, f"the reply made no progress for {limit:g} s")
                done, _ = await asyncio.wait({task}, timeout=min(STALL_CHECK_S, limit - waited + 0.01))
                if done:
                    task.result()
                    return
        except asyncio.CancelledError:
            await _stop(task)
            raise

    async def _make(self, previous: Reply | None) -> None:
        context = self.context
        if previous is not None and previous.running:
            # The previous reply must be over (its history written) before this one reads the
            # history. Waiting with asyncio.wait lets our own cancellation (a barge-in now) through.
            previous._task.cancel()
            await previous.wait()
        if self._prefill is not None:
            # Its KV stream is busy until then: sent now, the request would read its whole prompt elsewhere.
            await asyncio.wait({self._prefill})
        self._moved()
        request = reply_request(context.llm_request, self.user_text, self.language)
        self._create()
        speech = ReplySpeech(context.services, context.speak_start, self.spoken, self._audio, context.name)
        speaker = asyncio.create_task(self._speak(speech))
        writer = asyncio.create_task(self._write(request, speech))
        try:
            # A speech that fails (its TTS wedged past the idle deadline, say) ends the reply now,
            # not when the LLM has written the rest of a reply nobody would hear.
            await asyncio.wait({speaker, writer}, return_when=asyncio.FIRST_EXCEPTION)
            speech_failed = speaker.done() and speaker.exception() is not None
            if speech_failed and not self._speaks_text_instead(speaker.exception()):
                speaker.result()  # raises: the reply fails now
            await writer
            if not speech_failed:
                await speaker
        finally:
            await _stop(writer)
            await _stop(speaker)
            self.speaker_similarity = speech.speaker_similarity

    async def _write(self, request: llm_pb2.GenerateRequest, speech: ReplySpeech) -> None:
        """The LLM's reply: to the client as text, and sentence by sentence to the speech."""
        context = self.context
        settings = context.settings
        chunker = SentenceChunker(settings.first_clause_min_chars, self.language, settings.first_piece_max_words)
        async for delta in context.services.generate(request):
            self._moved()
            self._mark("llm_first_token")
            if delta.text:
                self.text += delta.text
                self.output.send(event("response.text.delta", response_id=self.id, text=delta.text))
                for sentence in chunker.push(delta.text):
                    self._mark("tts_first_piece")
                    speech.say(sentence)
        for sentence in chunker.flush():
            self._mark("tts_first_piece")
            speech.say(sentence)
        speech.end()

    def _speaks_text_instead(self, exc: BaseException | None) -> bool:
        """Whether a failed speech leaves the reply text only: the instance said its voice cannot speak
        the reply's language (naming one that can) before any audio. Tells the client so."""
        if (
            not isinstance(exc, ServiceError)
            or exc.refused_for != refusals.LANGUAGE
            or not self.language
            or self.spoken.audio_ms
        ):
            return False
        self._no_voice(exc.detail)
        return True

    async def _speak(self, speech: ReplySpeech) -> None:
        """The reply's speech, in a voice that speaks its language. The voice is looked up while the
        LLM already writes (its sentences wait in the speech's feed); with none, the reply is text only."""
        start = await self._speak_start()
        if start is None:
            return
        self._moved()
        speech.start = start
        await speech.run()

    async def _speak_start(self) -> tts_pb2.SpeakStart | None:
        """The reply's Speak start: its language, and a voice that speaks it (None: no voice does)."""
        base = self.context.speak_start
        if not self.language:
            return base
        start = tts_pb2.SpeakStart()
        start.CopyFrom(base)
        start.language = self.language
        if base_language(self.language) == DEFAULT_LANGUAGE and not base.voice:
            return start  # the default voices speak it: no lookup, as before languages were followed
        listing = await self.context.services.voice_list()
        if listing is None:
            return start  # no instance could say which voices there are: the one that gets it decides
        voice = choose_voice(listing, base.voice, self.language)
        if voice is None:
            self._no_voice("")
            return None
        if voice.id != (base.voice or listing.default_voice):
            start.voice, start.engine = voice.id, ""
        return start

    def _received_text(self) -> str:
        """What of a reply cut short reached the user: the audio they heard, or all its text when it was
        text only."""
        return self.text.strip() if self._text_only else self.heard_text(self.spoken.audio_ms)

    def _no_voice(self, detail: str) -> None:
        """Tell the client this reply comes as text only: no voice speaks its language."""
        self._text_only = True
        name = language_name(self.language)
        message = (
            f"no running voice speaks {name} ({self.language}): this reply is sent as text only; "
            "voices that speak it need another engine or voice (the fireredtts2 engine, or a Piper voice in "
            "PARLEY_TTS_PIPER_VOICES_DIR)"
        )
        if detail:
            message += f"; the TTS service said: {detail}"
        self.output.send({**error_event(ErrorCode.VOICE_UNAVAILABLE, message), "language": self.language})

    def _create(self) -> None:
        """response.created, once; the user's turn joins the history with it."""
        if self._created:
            return
        self._created = True
        self.output.defer(self._remember_user_turn)
        self.output.send(event("response.created", response_id=self.id))

    def _remember_user_turn(self) -> None:
        self.context.history.add("user", self.user_text)

    def _audio(self, pcm: bytes) -> None:
        """A chunk of the reply's audio, its place in the reply already counted."""
        self._moved()
        if "tts_first_audio" not in self.marks:
            self._mark("tts_first_audio")
            self.output.send(
                event("response.audio.started", response_id=self.id, sample_rate=self.context.speak_start.sample_rate)
            )
            self.output.defer(lambda: self._mark("first_audio_sent"))
        self.output.send(pcm)

    def _deliver(self, message: Message) -> None:
        """The reply's live output: to the client, and the turn machine learns what reached it."""
        context = self.context
        context.send(message)
        if isinstance(message, bytes):
            context.watcher.reply_audio_sent(self.id, duration_s(message, context.speak_start.sample_rate))
        elif message.get("type") == "response.text.delta":
            context.watcher.reply_text(self.id, message["text"])

    def _remember(self, text: str) -> None:
        self.history_index = self.context.history.add("assistant", text)
        if self.played_ms is not None:
            self._keep_heard()

    def _keep_heard(self) -> None:
        assert self.history_index is not None and self.played_ms is not None
        if not self.fully_played(self.played_ms):
            heard = self.heard_text(self.played_ms)
            self.context.history.replace(self.history_index, heard)
            self.context.send(
                event("response.truncated", response_id=self.id, played_ms=round(self.played_ms), text=heard)
            )

    def _finish(self, status: str) -> None:
        """response.done, sent once the reply is live (its turn end is known then)."""
        self._mark("total")
        timings = self.stage_timings()
        for name, value in timings.items():
            # The turn machine observes the turn's own stages (ASR, the turn model's verdicts) as they happen.
            if name.endswith("_ms") and name not in {"vad_silence_ms", "asr_ms", "end_of_turn_ms"}:
                STAGE_SECONDS.labels(name.removesuffix("_ms")).observe(value / 1000)
        extra = {} if self.speaker_similarity is None else {"speaker_similarity": self.speaker_similarity}
        self.context.send(
            event("response.done", response_id=self.id, status=status, text=self.text.strip(), timings=timings, **extra)
        )


def reply_request(
    llm_request: Callable[[str], llm_pb2.GenerateRequest], user_text: str, language: str
) -> llm_pb2.GenerateRequest:
    """The LLM request of a reply to `user_text` in `language`: the conversation's, asking for that language."""
    request = llm_request(user_text)
    instruct(request, answer_instruction(language))
    return request


def instruct(request: llm_pb2.GenerateRequest, instruction: str) -> None:
    """Add a line for the model to the request: to its system prompt, else to the user's last message.

    Without a system message the LLM service puts its own default prompt first, and any system
    message would replace it: the line then goes with the user's words instead.
    """
    if not instruction:
        return
    messages = request.messages
    system = next((m for m in messages if m.role == "system"), None)
    target = system if system is not None else (messages[-1] if messages else None)
    if target is None:
        messages.append(llm_pb2.Message(role="user", content=instruction))
        return
    target.content = f"{target.content}\n\n{instruction}" if target.content else instruction


async def _stop(task: asyncio.Task[Any]) -> None:
    """Cancel a helper task and wait for it to end (our own cancellation still propagates)."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
