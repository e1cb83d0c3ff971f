"""Who speaks when: the turn-taking state machine of one conversation.

A plain object driven by events and a clock. It decides; the session does
the I/O. Every outside effect (an ASR stream to open or end, a reply to start,
release, drop or cancel, an event for the client) goes through the injected
`TurnPorts`, and every time it reads comes from the injected `Clock`, so the
logic is unit-tested on fakes and virtual time (tests/test_turns.py).

    speech started ─► open an ASR stream for the utterance (from its padded start)
    speech paused  ─► end that stream: its transcript starts a reply, HELD (preemptive)
    speech resumed ─► drop the held reply, transcribe the whole utterance again
    speech stopped ─► transcript.final ─► release the held reply if it answered this
                      very transcript, else start the reply now

Semantic end of turn: a pause may carry the VAD's verdict, P(turn complete) from how
the utterance sounds. At or over `end_of_turn_threshold` the turn ends at the pause, as
soon as its transcript shows a finished sentence (not "the weather in", "remind me to
call" or words without a closing full stop: unfinished.py): the held reply is released
then, without waiting for the silence rule. Under `incomplete_threshold` (or on
unfinished words) the turn is incomplete: the VAD's
speech stop does not end it; it waits until `incomplete_turn_max_silence_s` of silence,
and speech before that continues it. Between the two the model is unsure and the
silence rule decides, as it does for a pause without a verdict, once the words are in:
if they dangle, the turn waits as an incomplete one (so does a complete one whose words
came only after the silence rule). The defaults (under 0.5 waits, up to 1.2 s: the VAD
reports speech soon after its stop within ~0.15 s, so an 800 ms pause shows in time) favour
letting people finish over answering fast: a turn cut off answers the wrong question,
a turn that waits costs a second. A turn whose sound and words disagree is *doubtful*
and waits `doubtful_turn_max_silence_s`: one judged incomplete whose words read as a
finished sentence (the model scores some finished questions under 0.1, "What is your
favourite colour?" on the benchmark's synthetic voices), and one judged complete or unsure
whose words are only doubtful: "a good book to read?" (unfinished.py), or, if
`min_word_confidence` asks, words the ASR was unsure of. By default it waits as long as an
incomplete turn: the same disagreement comes from first halves misheard into questions
("What time does the museum?", cut off with a 1 s wait in bench/turn_cutoffs.py).

    pause, complete   ─► transcript ─► the turn ends now (vad.speech_stopped, released)
    pause, incomplete ─► speech stopped ─► wait ─► more silence: the turn ends
                                                └► speech again: the turn goes on
                         (doubtful when the words disagree with the sound: its own cap)
    pause, unsure     ─► speech stopped ─► its words ─► the turn ends (the silence rule)
                                                    └► they dangle: wait, as above

Barge-in: user speech while the assistant's reply is being generated or still
playing cancels it — unless the speech began within `echo_guard_s` of the
reply's playback start, where the user's microphone most likely hears the
assistant itself. Such speech is still transcribed (never dropped): once its
transcript is known it is taken for echo only if its words are the reply's
own words; otherwise it interrupts then and is answered like any turn.

Events arrive in the order the session sees them; reply ids are the session's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol

from parley_gateway.conversation.unfinished import Words, intelligible, lowered_words, read_words
from parley_gateway.metrics import BARGE_INS_TOTAL, PREEMPTIVE_TOTAL, STAGE_SECONDS, TURN_ENDS_TOTAL
from parley_gateway.protocol import event

# A transcript is echo when at least this share of its words are in the reply being played.
ECHO_WORD_SHARE = 0.6


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...


class Timer(Protocol):
    def cancel(self) -> None: ...


class TurnClock(Clock, Protocol):
    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Run `callback` once `delay_s` have passed on this clock (unless cancelled)."""
        ...


class TurnPorts(Protocol):
    """What the state machine makes happen; the session implements it."""

    def send(self, message: dict[str, object]) -> None:
        """An event for the client."""

    def open_transcription(self, turn: int, start: int) -> None:
        """Start an ASR stream for `turn` with the input audio from position `start` on."""

    def end_transcription(self, turn: int) -> None:
        """No more audio for `turn`: its final transcript follows (`TurnTaker.transcribed`)."""

    def abort_transcription(self, turn: int) -> None:
        """Throw `turn`'s ASR stream away; no transcript is wanted."""

    def start_reply(self, user_text: str, held: bool, turn_end: float | None, timings: dict[str, object]) -> str:
        """Start answering `user_text` (replacing any reply still running); returns the reply id."""
        ...

    def release_reply(self, reply_id: str, turn_end: float, timings: dict[str, object]) -> None:
        """A held reply turned out right: let everything it kept back reach the client."""

    def drop_reply(self, reply_id: str) -> None:
        """A held reply turned out wrong: stop it; the client never hears of it."""

    def cancel_reply(self, reply_id: str) -> None:
        """Stop a live reply and tell the client to flush its playback (`response.cancelled`)."""


@dataclass(frozen=True)
class TurnSettings:
    preemptive: bool = True  # start the reply at a pause, held
    echo_guard_s: float = 0.3
    playback_margin_s: float = 0.25  # slack on the estimate of when the client stops playing
    end_of_turn_threshold: float = 0.7  # a pause verdict at or over it ends the turn there
    incomplete_threshold: float = 0.5  # a pause verdict under it makes the turn wait for more silence
    incomplete_turn_max_silence_s: float = 1.2  # a turn judged incomplete ends after this much silence
    # ... or after this much when the sound and the words disagree
    doubtful_turn_max_silence_s: float = 1.2
    # Words the ASR was less sure of than this (0..1) are only doubtful, however finished they read
    min_word_confidence: float = 0.0  # 0: not asked


class TurnEnd(Enum):
    """Why a turn ended (`turn_end` in the reply's timings)."""

    SILENCE = "silence"  # the VAD's silence rule (min_silence_ms)
    END_OF_TURN = "end_of_turn"  # judged complete at a pause
    MAX_SILENCE = "max_silence"  # judged incomplete, and no more speech came
    DOUBTFUL = "doubtful"  # the sound and the words disagreed, and no more speech came
    COMMIT = "commit"  # input.commit


class Verdict(Enum):
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    UNSURE = "unsure"  # between the thresholds: the silence rule decides, unless the words dangle


@dataclass(frozen=True)
class _Pause:
    """Where a pause (or stop) put the end of speech."""

    position: int  # input position of the end of speech
    audio_end_ms: int
    silence_ms: int  # silence the VAD had seen when it decided


@dataclass
class _Turn:
    """One user utterance (one ASR stream of it)."""

    id: int
    speech_start: int  # input position of the (padded) speech start
    ended: bool = False  # its ASR stream got the end marker
    stopped: bool = False  # the turn is over (VAD stop or input.commit)
    turn_end: float = 0.0
    timings: dict[str, object] = field(default_factory=dict)
    transcript: str | None = None  # known once the ASR stream answered
    language: str = ""
    language_probability: float = 0.0
    confidence: float = 0.0  # how sure the ASR was of the words (0..1; 0: it could not tell)
    transcribed: bool = False
    guess: str | None = None  # id of the held reply started at a pause
    echo_suspect: str | None = None  # id of the reply it started over, within the echo window
    verdict: Verdict | None = None  # the end-of-turn verdict of its latest pause, if it had one (words included)
    sound: Verdict | None = None  # that verdict from the sound alone, as the VAD gave it
    end_of_turn: dict[str, object] = field(default_factory=dict)  # that verdict, for the reply's timings
    pause: _Pause | None = None  # its latest pause
    waiting: Timer | None = None  # judged incomplete, the VAD stopped: the silence cap's timer
    waited_since: float = 0.0  # when that wait began


@dataclass
class _LiveReply:
    """What the state machine knows of the reply the client hears (or will)."""

    id: str
    running: bool = True
    text: str = ""
    audio_s: float = 0.0
    playback_started: float | None = None  # first audio sent, or the client's own report


class TurnTaker:
    def __init__(self, settings: TurnSettings, ports: TurnPorts, clock: TurnClock) -> None:
        self.settings = settings
        self.ports = ports
        self.clock = clock
        self._ids = itertools.count(1)
        self.turn: _Turn | None = None  # the utterance being heard
        self._finishing: dict[int, _Turn] = {}  # stopped turns waiting for their transcript
        self._held: dict[str, str] = {}  # held reply id -> the transcript it answers
        self._held_finished: set[str] = set()  # held replies whose pipeline already ended
        self.reply: _LiveReply | None = None  # the latest live (not held) reply
        # A turn ended at its pause while the VAD still holds that speech open: where the speech ended.
        # The VAD's own stop of it is not news; its resume is the user speaking again (a new turn).
        self._ended_at_pause: int | None = None

    # ---- speech, from the VAD (or push-to-talk) ------------------------------

    def speech_started(self, position: int, audio_start_ms: int) -> None:
        self._ended_at_pause = None
        turn = self.turn
        if turn is not None and turn.waiting is not None:
            self._go_on(turn)  # speech while an incomplete turn waited: the same turn goes on
            return
        echo_of = self._barge_in(echo_guard=True)
        self.ports.send(event("vad.speech_started", audio_start_ms=audio_start_ms))
        self._open(position, echo_of)

    def push_to_talk_audio(self, position: int) -> None:
        """Audio after a commit (or at the start) in push-to-talk: a deliberate press opens a turn."""
        if self.turn is None:
            self._barge_in(echo_guard=False)
            self._open(position, None)

    def speech_paused(
        self,
        position: int = 0,
        audio_end_ms: int = 0,
        silence_ms: int = 0,
        end_of_turn: float | None = None,
        end_of_turn_ms: float = 0.0,
    ) -> None:
        """A pause in speech at `position`; `end_of_turn`: the VAD's verdict on it, if it came with it."""
        turn = self.turn
        if turn is None:
            return
        turn.pause = _Pause(position, audio_end_ms, silence_ms)
        turn.verdict, turn.sound, turn.end_of_turn = None, None, {}
        if self.settings.preemptive and not turn.ended:
            turn.ended = True
            self.ports.end_transcription(turn.id)
        if end_of_turn is not None:
            self.pause_judged(end_of_turn, end_of_turn_ms)

    def pause_judged(self, end_of_turn: float, end_of_turn_ms: float = 0.0, silence_ms: int | None = None) -> None:
        """The VAD's verdict on the pause it reported last: P(turn complete), the model's time for it, and the
        silence the model heard (the VAD may judge a pause after more silence than it reported it at)."""
        turn = self.turn
        if turn is None or turn.pause is None or turn.verdict is not None:
            return  # no pause of this turn waits for a verdict
        if silence_ms is not None:
            turn.pause = replace(turn.pause, silence_ms=silence_ms)
        STAGE_SECONDS.labels("end_of_turn").observe(end_of_turn_ms / 1000)
        turn.verdict = turn.sound = self._verdict(end_of_turn)
        turn.end_of_turn = {"end_of_turn": round(end_of_turn, 3), "end_of_turn_ms": round(end_of_turn_ms, 1)}
        # A turn judged complete or unsure needs its words now (to check them), preemptive or not.
        if turn.verdict in {Verdict.COMPLETE, Verdict.UNSURE}:
            if not turn.ended:
                turn.ended = True
                self.ports.end_transcription(turn.id)
            elif turn.transcribed:
                self._judge_words(turn)

    def speech_resumed(self, position: int = 0, audio_start_ms: int = 0) -> None:
        """Speech again after a pause, from `position`."""
        if self._ended_at_pause is not None:
            # The turn was already judged over at this pause: this is the user speaking again.
            start, self._ended_at_pause = self._ended_at_pause, None
            self.speech_started(start, audio_start_ms)
            return
        turn = self.turn
        if turn is not None:
            self._go_on(turn)

    def speech_stopped(self, audio_end_ms: int, silence_ms: int) -> None:
        if self._ended_at_pause is not None:
            self._ended_at_pause = None  # the VAD closes speech whose turn ended at its pause: said already
            return
        turn = self.turn
        # A complete or unsure verdict whose words are not in yet: they may dangle ("a present for"), so wait
        # for them.
        words_unheard = turn is not None and turn.verdict in {Verdict.COMPLETE, Verdict.UNSURE} and not turn.transcribed
        if turn is not None and (turn.verdict is Verdict.INCOMPLETE or words_unheard):
            # Judged incomplete: this silence may be a pause to think. Wait for more of it (or for speech).
            position = turn.pause.position if turn.pause is not None else 0
            turn.pause = _Pause(position, audio_end_ms, silence_ms)
            turn.waited_since = self.clock.now()
            if self._wait(turn) is None:
                return
        self.ports.send(event("vad.speech_stopped", audio_end_ms=audio_end_ms))
        if turn is not None:
            self._stop({"vad_silence_ms": silence_ms}, TurnEnd.SILENCE)

    def commit(self) -> bool:
        """input.commit: end the turn now. False when there is no turn to end."""
        if self.turn is None:
            return False
        self._stop({}, TurnEnd.COMMIT)
        return True

    def typed(self, text: str) -> None:
        """text.input: a whole user turn at once."""
        self._start(text, held=False, turn_end=self.clock.now(), timings={})

    # ---- results of the session's I/O ----------------------------------------

    def transcribed(
        self,
        turn_id: int,
        text: str | None,
        language: str = "",
        language_probability: float = 0.0,
        confidence: float = 0.0,
    ) -> None:
        """A turn's ASR stream answered (None: it failed, and the error was reported); `confidence`: how sure the
        ASR was of the words (0..1; 0 when it could not tell)."""
        turn = self._finishing.get(turn_id) or (self.turn if self.turn and self.turn.id == turn_id else None)
        if turn is None or turn.transcribed:
            return  # abandoned (speech resumed) or aborted
        turn.transcribed, turn.transcript, turn.language = True, text, language
        turn.language_probability, turn.confidence = language_probability, confidence
        if turn.waiting is not None:
            # The VAD stopped the turn before its words came; now they tell how long that silence may last.
            if turn.verdict in {Verdict.COMPLETE, Verdict.UNSURE}:
                if self._words(turn) is Words.FINISHED:
                    self._waited(turn, TurnEnd.SILENCE)
                    return
                turn.verdict = Verdict.INCOMPLETE
            turn.waiting.cancel()
            turn.waiting = None
            if (over := self._wait(turn)) is not None:
                self._waited(turn, over)
                return
        if turn.stopped:
            self._finish(turn)
            return
        if turn.verdict in {Verdict.COMPLETE, Verdict.UNSURE} and self._judge_words(turn):
            return  # the turn ended here, and its reply started
        if text and intelligible(text) and self.settings.preemptive:
            if turn.echo_suspect is not None and not self._decide_echo(turn, text):
                return  # the assistant's own voice; wait for the turn's end to say so
            turn.guess = self._start(text, held=True, turn_end=None, timings={})

    def reply_text(self, reply_id: str, text: str) -> None:
        """Reply text reached the client."""
        if self.reply is not None and self.reply.id == reply_id:
            self.reply.text += text

    def reply_audio_sent(self, reply_id: str, seconds: float) -> None:
        """Reply audio reached the client (a held reply's only once released)."""
        reply = self.reply
        if reply is not None and reply.id == reply_id:
            if reply.playback_started is None:
                reply.playback_started = self.clock.now()
            reply.audio_s += seconds

    def playback_started(self, reply_id: str) -> None:
        """The client says it started playing the reply now (more exact than when it was sent)."""
        if self.reply is not None and self.reply.id == reply_id:
            self.reply.playback_started = self.clock.now()

    def reply_finished(self, reply_id: str) -> None:
        """The reply's pipeline ended (completed, failed or cancelled); it may still be playing."""
        if self.reply is not None and self.reply.id == reply_id:
            self.reply.running = False
        elif reply_id in self._held:
            self._held_finished.add(reply_id)

    def cancel(self) -> None:
        """response.cancel from the client."""
        self._interrupt(self.reply, barge_in=False)

    def close(self) -> None:
        """The session ends: no timer may fire into it afterwards."""
        if self.turn is not None and self.turn.waiting is not None:
            self.turn.waiting.cancel()
            self.turn.waiting = None

    # ---- inside ----------------------------------------------------------------

    def _start(self, text: str, held: bool, turn_end: float | None, timings: dict[str, object]) -> str:
        reply_id = self.ports.start_reply(text, held=held, turn_end=turn_end, timings=timings)
        if held:
            self._held[reply_id] = text
        else:
            self.reply = _LiveReply(reply_id)
        return reply_id

    def _go_on(self, turn: _Turn) -> None:
        """Speech again after a pause (or while waiting past the VAD's stop): the turn goes on."""
        if turn.waiting is not None:
            turn.waiting.cancel()
            turn.waiting = None
        turn.verdict = turn.sound = None  # the next pause is judged afresh
        if turn.ended:
            # The pause was not the end: drop the guess, transcribe the whole utterance again.
            self._open(turn.speech_start, turn.echo_suspect)

    def _judge_words(self, turn: _Turn) -> bool:
        """A turn judged complete (or unsure) at its pause, once its transcript is known: end a complete
        one now if the words agree.

        Returns whether it ended. If the words do not agree (nothing intelligible, or a dangling word), it is
        incomplete; an unsure turn whose words agree is left to the silence rule.
        """
        if turn is not self.turn:
            return False
        if self._words(turn) is not Words.FINISHED:
            turn.verdict = Verdict.INCOMPLETE
            return False
        if turn.verdict is not Verdict.COMPLETE:
            return False
        pause = turn.pause
        assert pause is not None
        self._ended_at_pause = pause.position
        self.ports.send(event("vad.speech_stopped", audio_end_ms=pause.audio_end_ms))
        self._stop({"vad_silence_ms": pause.silence_ms}, TurnEnd.END_OF_TURN)
        return True

    def _words(self, turn: _Turn) -> Words:
        """What the turn's transcript says of its sentence (unfinished.py).

        With `min_word_confidence` set, words the ASR was less sure of are at best doubtful: a first half misheard
        into a question reads as finished, and may score low.
        """
        words = read_words(turn.transcript or "", turn.language)
        if words is Words.FINISHED and 0 < turn.confidence < self.settings.min_word_confidence:
            return Words.DOUBTFUL
        return words

    def _verdict(self, end_of_turn: float) -> Verdict:
        if end_of_turn >= self.settings.end_of_turn_threshold:
            return Verdict.COMPLETE
        if end_of_turn < self.settings.incomplete_threshold:
            return Verdict.INCOMPLETE
        return Verdict.UNSURE

    def _max_silence(self, turn: _Turn) -> tuple[float, TurnEnd]:
        """How much silence a turn the VAD stopped may still end in, and what ends it then.

        The incomplete turn's cap, or the doubtful turn's when the sound and the (known) words disagree: it
        sounds incomplete but reads as a finished sentence, or sounds complete (or unsure) but reads only as
        doubtful.
        """
        full = self.settings.incomplete_turn_max_silence_s, TurnEnd.MAX_SILENCE
        if not turn.transcribed:
            return full
        words = self._words(turn)
        sounds_incomplete = turn.sound is Verdict.INCOMPLETE
        if (words is Words.FINISHED and sounds_incomplete) or (words is Words.DOUBTFUL and not sounds_incomplete):
            return min(full[0], self.settings.doubtful_turn_max_silence_s), TurnEnd.DOUBTFUL
        return full

    def _wait(self, turn: _Turn) -> TurnEnd | None:
        """Wait, in silence since the VAD stopped `turn`, until its cap; when no silence is left to wait, what
        ends it now instead."""
        max_silence_s, reason = self._max_silence(turn)
        pause = turn.pause
        assert pause is not None
        waited_s = pause.silence_ms / 1000 + (self.clock.now() - turn.waited_since)
        if max_silence_s - waited_s <= 0:
            return reason
        turn.waiting = self.clock.call_later(max_silence_s - waited_s, lambda: self._waited(turn, reason))
        return None

    def _waited(self, turn: _Turn, reason: TurnEnd = TurnEnd.MAX_SILENCE) -> None:
        """The wait of a turn the VAD stopped passed without speech (or the words of a turn judged complete or
        unsure came and read finished): it ends."""
        if self.turn is not turn:
            return
        if turn.waiting is not None:
            turn.waiting.cancel()  # a no-op when it is this very timer that fired
            turn.waiting = None
        pause = turn.pause
        assert pause is not None
        self.ports.send(event("vad.speech_stopped", audio_end_ms=pause.audio_end_ms))
        silence_ms = round(pause.silence_ms + (self.clock.now() - turn.waited_since) * 1000)
        self._stop({"vad_silence_ms": silence_ms}, reason)

    def _open(self, position: int, echo_of: str | None) -> None:
        old = self.turn
        if old is not None:
            if old.waiting is not None:
                old.waiting.cancel()
                old.waiting = None
            # Replaced before it stopped: its guess (if any) was wrong, its transcript is not wanted.
            if old.guess is not None:
                PREEMPTIVE_TOTAL.labels("miss").inc()
                self._drop(old.guess)
            if not old.transcribed:
                self.ports.abort_transcription(old.id)
        self.turn = _Turn(next(self._ids), position, echo_suspect=echo_of)
        self.ports.open_transcription(self.turn.id, position)

    def _stop(self, timings: dict[str, object], reason: TurnEnd) -> None:
        turn = self.turn
        assert turn is not None
        self.turn = None
        if turn.waiting is not None:
            turn.waiting.cancel()
            turn.waiting = None
        TURN_ENDS_TOTAL.labels(reason.value).inc()
        turn.stopped, turn.turn_end = True, self.clock.now()
        turn.timings = {**timings, **turn.end_of_turn, "turn_end": reason.value}
        self._finishing[turn.id] = turn
        if not turn.ended:
            turn.ended = True
            self.ports.end_transcription(turn.id)
        elif turn.transcribed:
            self._finish(turn)

    def _finish(self, turn: _Turn) -> None:
        del self._finishing[turn.id]
        text = turn.transcript
        if text is None:
            return  # the ASR stream failed; the error was reported
        heard_echo = turn.echo_suspect is not None and not self._decide_echo(turn, text)
        if heard_echo or not intelligible(text):
            # Nothing to answer: a cough, a tap, or the assistant's own voice.
            reason = {"reason": "echo"} if heard_echo else {}
            self.ports.send(event("transcript.final", text="", **_heard(turn), **reason))
            if turn.guess is not None:
                self._drop(turn.guess)
            return
        asr_ms = round((self.clock.now() - turn.turn_end) * 1000, 1)
        timings = {**turn.timings, "asr_ms": asr_ms}
        STAGE_SECONDS.labels("asr").observe(asr_ms / 1000)
        self.ports.send(event("transcript.final", text=text, **_heard(turn)))
        guess = turn.guess
        if guess is not None and self._held.get(guess) == text:
            PREEMPTIVE_TOTAL.labels("hit").inc()
            del self._held[guess]
            self.reply = _LiveReply(guess, running=guess not in self._held_finished)
            self._held_finished.discard(guess)
            self.ports.release_reply(guess, turn.turn_end, {**timings, "preemptive": True})
            return
        if guess is not None:
            PREEMPTIVE_TOTAL.labels("miss").inc()
            self._drop(guess)
        self._start(text, held=False, turn_end=turn.turn_end, timings=timings)

    def _decide_echo(self, turn: _Turn, text: str) -> bool:
        """For speech that began in the echo window, once its words are known: True if it is the user.

        The user's speech interrupts the reply now; the assistant's own voice is ignored.
        """
        suspect, turn.echo_suspect = turn.echo_suspect, None
        reply = self.reply
        if reply is not None and reply.id == suspect and _is_echo(text, reply.text):
            turn.echo_suspect = suspect  # stays marked, so the turn's end ignores it too
            return False
        if reply is not None and reply.id == suspect:
            self._interrupt(reply, barge_in=True)
        return True

    def _barge_in(self, echo_guard: bool) -> str | None:
        """User speech starts: interrupt the live reply. Returns its id instead if this may be its echo."""
        reply = self.reply
        if reply is None or not self._active(reply):
            return None
        started = reply.playback_started
        if echo_guard and started is not None and self.clock.now() - started < self.settings.echo_guard_s:
            return reply.id
        self._interrupt(reply, barge_in=True)
        return None

    def _active(self, reply: _LiveReply) -> bool:
        if reply.running:
            return True
        if reply.playback_started is None:
            return False
        playing_until = reply.playback_started + reply.audio_s + self.settings.playback_margin_s
        return self.clock.now() < playing_until

    def _interrupt(self, reply: _LiveReply | None, barge_in: bool) -> None:
        if reply is None or not self._active(reply):
            return
        if barge_in:
            BARGE_INS_TOTAL.inc()
        reply.running = False
        reply.audio_s = 0.0
        reply.playback_started = None  # flushed: nothing plays any more
        self.ports.cancel_reply(reply.id)

    def _drop(self, reply_id: str) -> None:
        self._held.pop(reply_id, None)
        self._held_finished.discard(reply_id)
        self.ports.drop_reply(reply_id)


def _heard(turn: _Turn) -> dict[str, object]:
    """How the turn was heard, for transcript.final: its language, how sure the detection was, and how sure the
    ASR was of the words (0..1 each)."""
    return {
        "language": turn.language,
        "language_probability": round(turn.language_probability, 3),
        "confidence": round(turn.confidence, 3),
    }


def _is_echo(transcript: str, reply_text: str) -> bool:
    heard = lowered_words(transcript)
    spoken = set(lowered_words(reply_text))
    if not heard:
        return True
    return sum(w in spoken for w in heard) / len(heard) >= ECHO_WORD_SHARE
