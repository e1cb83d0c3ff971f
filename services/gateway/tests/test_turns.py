"""The turn-taking state machine on its own: recorded ports and a virtual clock, no stack."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from parley_gateway.conversation.turns import TurnSettings, TurnTaker


class VirtualTimer:
    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due, self.callback, self.cancelled = due, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class VirtualClock:
    """Time moves only when a test says so; timers fire as it passes them, in order."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.timers: list[VirtualTimer] = []

    def now(self) -> float:
        return self.t

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> VirtualTimer:
        timer = VirtualTimer(self.t + delay_s, callback)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[VirtualTimer]:
        return [t for t in self.timers if not t.cancelled]

    def advance(self, seconds: float) -> None:
        end = self.t + seconds
        while due := sorted((t for t in self.pending() if t.due <= end), key=lambda t: t.due):
            timer = due[0]
            self.timers.remove(timer)
            self.t = timer.due
            timer.callback()
        self.t = end


class RecordedPorts:
    """Every effect the state machine asks for, in order; replies get ids r1, r2, ..."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.events: list[dict[str, Any]] = []
        self._replies = 0

    def send(self, message: dict[str, Any]) -> None:
        self.events.append(message)
        self.calls.append(("send", message["type"]))

    def open_transcription(self, turn: int, start: int) -> None:
        self.calls.append(("open", turn, start))

    def end_transcription(self, turn: int) -> None:
        self.calls.append(("end", turn))

    def abort_transcription(self, turn: int) -> None:
        self.calls.append(("abort", turn))

    def start_reply(self, user_text: str, held: bool, turn_end: float | None, timings: dict[str, object]) -> str:
        self._replies += 1
        self.calls.append(("start", f"r{self._replies}", user_text, "held" if held else "live"))
        return f"r{self._replies}"

    def release_reply(self, reply_id: str, turn_end: float, timings: dict[str, object]) -> None:
        self.calls.append(("release", reply_id, timings.get("preemptive")))

    def drop_reply(self, reply_id: str) -> None:
        self.calls.append(("drop", reply_id))

    def cancel_reply(self, reply_id: str) -> None:
        self.calls.append(("cancel", reply_id))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]

    def final(self) -> dict[str, Any]:
        [final] = [e for e in self.events if e["type"] == "transcript.final"]
        return final


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def ports() -> RecordedPorts:
    return RecordedPorts()


# The verdicts in these tests are written against these bands (unsure: 0.05 to 0.7), whatever the defaults.
BANDS = {
    "end_of_turn_threshold": 0.7,
    "incomplete_threshold": 0.05,
    "incomplete_turn_max_silence_s": 1.2,
    "doubtful_turn_max_silence_s": 1.2,  # one wait for every incomplete turn, unless a test says otherwise
}


def machine(ports: RecordedPorts, clock: VirtualClock, **settings: Any) -> TurnTaker:
    return TurnTaker(TurnSettings(**{**BANDS, **settings}), ports, clock)


def assert_released_at(ports: RecordedPorts, clock: VirtualClock, silence_s: float, silence_now_s: float = 0.5) -> None:
    """The held reply r1 stays held until the silence (`silence_now_s` now) reaches `silence_s`, and no longer."""
    clock.advance(silence_s - silence_now_s - 0.01)
    assert ports.of("release") == []
    clock.advance(0.02)
    assert ports.of("release") == [("release", "r1", True)]


def playing_reply(turns: TurnTaker, clock: VirtualClock, text: str = "Here is a long answer about boats.") -> str:
    """A typed turn whose reply has started playing at the client (2 s of audio sent)."""
    turns.typed("tell me about boats")
    reply_id = turns.reply.id if turns.reply else ""
    turns.reply_text(reply_id, text)
    turns.reply_audio_sent(reply_id, 2.0)
    return reply_id


def test_preemptive_hit_releases_the_held_reply(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(4800, 300)
    turns.speech_paused()
    turns.transcribed(1, "What time is it?", "en", 0.97, 0.88)
    assert ports.of("start") == [("start", "r1", "What time is it?", "held")]
    clock.advance(0.3)
    turns.speech_stopped(1500, 500)
    assert ports.calls == [
        ("send", "vad.speech_started"),
        ("open", 1, 4800),
        ("end", 1),
        ("start", "r1", "What time is it?", "held"),
        ("send", "vad.speech_stopped"),
        ("send", "transcript.final"),
        ("release", "r1", True),
    ]
    assert ports.final() == {
        "type": "transcript.final",
        "text": "What time is it?",
        "language": "en",
        "language_probability": 0.97,
        "confidence": 0.88,
    }
    assert turns.reply is not None and turns.reply.id == "r1"


def test_preemptive_miss_on_resume_drops_the_guess_and_retranscribes_from_the_start(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock)
    turns.speech_started(4800, 300)
    turns.speech_paused()
    turns.transcribed(1, "I would like", "en")
    turns.speech_resumed()
    turns.speech_paused()
    turns.transcribed(2, "I would like a coffee", "en")
    turns.speech_stopped(3000, 500)
    assert ports.of("open") == [("open", 1, 4800), ("open", 2, 4800)]
    assert ports.of("drop") == [("drop", "r1")]
    assert ports.of("release") == [("release", "r2", True)]
    assert ports.of("cancel") == []  # a held reply never reached the client: nothing to cancel
    assert ports.final()["text"] == "I would like a coffee"


def test_resume_before_the_pause_transcript_aborts_it_and_ignores_it_late(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused()
    turns.speech_resumed()
    turns.transcribed(1, "stale words", "en")  # arrives after it was abandoned
    assert ports.of("abort") == [("abort", 1)]
    assert ports.of("start") == []
    turns.speech_stopped(2000, 500)
    turns.transcribed(2, "the whole utterance", "en")
    assert ports.of("start") == [("start", "r1", "the whole utterance", "live")]


def test_a_transcript_that_arrives_after_the_stop_starts_the_reply_live(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused()
    clock.advance(0.3)
    turns.speech_stopped(1000, 500)
    clock.advance(0.12)
    turns.transcribed(1, "Hello there", "en")
    assert ports.of("start") == [("start", "r1", "Hello there", "live")]
    assert ports.of("end") == [("end", 1)]  # ended once, at the pause


def test_without_preemption_the_turn_ends_at_the_stop(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock, preemptive=False)
    turns.speech_started(0, 0)
    turns.speech_paused()
    turns.speech_resumed()
    assert ports.of("end") == [] and ports.of("open") == [("open", 1, 0)]
    turns.speech_stopped(1000, 500)
    turns.transcribed(1, "Hello", "en")
    assert ports.calls[-1] == ("start", "r1", "Hello", "live")


def test_nothing_intelligible_is_not_answered(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused()
    turns.transcribed(1, "...", "en")
    turns.speech_stopped(1000, 500)
    assert ports.of("start") == []
    assert ports.final()["text"] == ""


def test_barge_in_cancels_a_playing_reply(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    reply_id = playing_reply(turns, clock)
    turns.reply_finished(reply_id)  # generated; 2 s of it still playing
    clock.advance(1.0)
    turns.speech_started(9000, 500)
    assert ports.of("cancel") == [("cancel", reply_id)]
    # The cancel comes before the client hears that the user speaks.
    assert ports.calls.index(("cancel", reply_id)) < ports.calls.index(("send", "vad.speech_started"))


def test_speech_after_the_reply_played_out_interrupts_nothing(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    reply_id = playing_reply(turns, clock)
    turns.reply_finished(reply_id)
    clock.advance(2.0 + 0.25 + 0.01)  # its audio and the playback margin are over
    turns.speech_started(9000, 500)
    assert ports.of("cancel") == []


def test_barge_in_during_a_held_reply(ports: RecordedPorts, clock: VirtualClock) -> None:
    """The user interrupts the assistant, pauses (a guess starts, held), and goes on speaking."""
    turns = machine(ports, clock)
    first = playing_reply(turns, clock)
    clock.advance(1.0)
    turns.speech_started(9000, 500)  # barge-in
    turns.speech_paused()
    turns.transcribed(1, "Wait", "en")  # guess r2, held
    clock.advance(0.1)
    turns.speech_started(12000, 700)  # the VAD sees new speech while r2 is held
    assert ports.of("cancel") == [("cancel", first)]  # only the live reply was ever cancelled
    assert ports.of("drop") == [("drop", "r2")]
    turns.speech_stopped(14000, 500)
    turns.transcribed(2, "Wait, what about trains?", "en")
    assert ports.calls[-1] == ("start", "r3", "Wait, what about trains?", "live")


def test_response_cancel_while_the_reply_is_generated(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.typed("Tell me a story")
    turns.cancel()
    assert ports.of("cancel") == [("cancel", "r1")]
    turns.cancel()  # twice: nothing more to cancel
    assert len(ports.of("cancel")) == 1


def test_speech_in_the_echo_window_is_transcribed_and_answered_if_it_is_the_user(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock, echo_guard_s=0.3)
    reply_id = playing_reply(turns, clock)
    clock.advance(0.1)  # inside the echo window
    turns.speech_started(9000, 500)
    assert ports.of("cancel") == []  # maybe echo: not cut yet
    assert ports.of("open") == [("open", 1, 9000)]  # but transcribed, never dropped
    turns.speech_stopped(12000, 500)
    turns.transcribed(1, "No, I meant trains", "en")
    # Not the reply's words: the user's turn, which interrupts the reply and is answered.
    assert ports.of("cancel") == [("cancel", reply_id)]
    assert ports.final()["text"] == "No, I meant trains"
    assert ports.calls[-1] == ("start", "r2", "No, I meant trains", "live")


def test_speech_in_the_echo_window_that_repeats_the_reply_is_ignored(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock, echo_guard_s=0.3)
    playing_reply(turns, clock, text="Here is a long answer about boats.")
    clock.advance(0.1)
    turns.speech_started(9000, 500)
    turns.speech_paused()
    turns.transcribed(1, "a long answer about boats", "en")
    assert ports.of("start")[1:] == []  # no guess made from our own voice
    turns.speech_stopped(12000, 500)
    assert ports.of("cancel") == []
    assert ports.final() == {
        "type": "transcript.final",
        "text": "",
        "language": "en",
        "language_probability": 0.0,
        "confidence": 0.0,
        "reason": "echo",
    }


def test_the_echo_window_runs_from_the_clients_playback_start(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock, echo_guard_s=0.3)
    reply_id = playing_reply(turns, clock)
    clock.advance(0.5)  # sent 0.5 s ago, but the client starts playing only now
    turns.playback_started(reply_id)
    clock.advance(0.1)
    turns.speech_started(9000, 500)
    assert ports.of("cancel") == []  # 0.1 s into playback: inside the window
    clock.advance(0.4)
    turns.speech_stopped(12000, 500)
    turns.transcribed(1, "something else entirely", "en")
    assert ports.of("cancel") == [("cancel", reply_id)]


def test_push_to_talk_interrupts_at_once_and_ends_on_commit(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    reply_id = playing_reply(turns, clock)
    clock.advance(0.05)  # inside the echo window, but a button press is deliberate
    turns.push_to_talk_audio(9000)
    turns.push_to_talk_audio(10600)  # the same turn goes on
    assert ports.of("cancel") == [("cancel", reply_id)]
    assert ports.of("open") == [("open", 1, 9000)]
    assert turns.commit()
    assert not turns.commit()  # nothing more to commit
    turns.transcribed(1, "Hello", "en")
    assert ports.calls[-1] == ("start", "r2", "Hello", "live")


def test_a_held_reply_that_finished_early_is_not_running_once_released(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused()
    turns.transcribed(1, "Hi", "en")
    turns.reply_finished("r1")  # generated entirely while held
    turns.speech_stopped(1000, 500)
    assert turns.reply is not None and turns.reply.id == "r1" and not turns.reply.running
    turns.reply_audio_sent("r1", 0.5)  # released audio reaches the client now
    clock.advance(1.0)
    turns.speech_started(20000, 1300)  # after it played out: no barge-in
    assert ports.of("cancel") == []


# ---- semantic end of turn: the VAD's verdict on a pause -----------------------------------
# Here the VAD reports and judges a pause after 200 ms of silence (its verdict with the pause) and stops after
# 500 ms; positions are at 16 kHz.


def test_a_pause_judged_complete_ends_the_turn_there(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.93, end_of_turn_ms=71.0)
    clock.advance(0.15)
    turns.transcribed(1, "What time is it?", "en")
    # The turn ended at the pause: no wait for the VAD's stop (300 ms of silence later).
    assert ports.calls == [
        ("send", "vad.speech_started"),
        ("open", 1, 0),
        ("end", 1),
        ("send", "vad.speech_stopped"),
        ("send", "transcript.final"),
        ("start", "r1", "What time is it?", "live"),
    ]
    assert ports.events[1] == {"type": "vad.speech_stopped", "audio_end_ms": 2000}
    clock.advance(0.15)
    turns.speech_stopped(2000, 500)  # the VAD closes that speech: nothing new for the client
    assert ports.calls[-1] == ("start", "r1", "What time is it?", "live")
    assert [e["type"] for e in ports.events].count("vad.speech_stopped") == 1


class TimingPorts(RecordedPorts):
    """Also keeps the timings each reply started with."""

    def __init__(self) -> None:
        super().__init__()
        self.timings: list[dict[str, object]] = []

    def start_reply(self, user_text: str, held: bool, turn_end: float | None, timings: dict[str, object]) -> str:
        self.timings.append(timings)
        return super().start_reply(user_text, held, turn_end, timings)


def test_the_verdict_and_the_reason_reach_the_replys_timings(clock: VirtualClock) -> None:
    ports = TimingPorts()
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.9312, end_of_turn_ms=70.44)
    turns.transcribed(1, "What time is it?", "en")
    assert ports.timings == [
        {
            "vad_silence_ms": 200,
            "end_of_turn": 0.931,
            "end_of_turn_ms": 70.4,
            "turn_end": "end_of_turn",
            "asr_ms": 0.0,
        }
    ]


def test_a_complete_verdict_on_a_dangling_word_is_overruled(ports: RecordedPorts, clock: VirtualClock) -> None:
    """The intonation sounds final, but no English sentence ends on "in": the turn waits, as if incomplete."""
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.95, end_of_turn_ms=70.0)
    turns.transcribed(1, "I would like to know the weather in", "en")
    assert ports.of("start") == [("start", "r1", "I would like to know the weather in", "held")]
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    assert "vad.speech_stopped" not in [e["type"] for e in ports.events]
    assert ports.of("release") == []


@pytest.mark.parametrize("heard", ["Could you remind me to call?", "who wrote the famous album out"])
def test_a_complete_verdict_on_unfinished_words_is_overruled(
    ports: RecordedPorts, clock: VirtualClock, heard: str
) -> None:
    """An infinitive still missing its object, or words Whisper closed with no full stop: the turn waits."""
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.97, end_of_turn_ms=70.0)
    turns.transcribed(1, heard, "en")
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    assert "vad.speech_stopped" not in [e["type"] for e in ports.events]
    assert ports.of("release") == []


def test_a_pause_judged_incomplete_waits_past_the_vads_stop_until_the_cap(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock, incomplete_turn_max_silence_s=1.2)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    turns.transcribed(1, "Can you tell me how to get to the", "en")
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)  # 500 ms of silence: today's end of turn
    assert ports.of("release") == [] and "vad.speech_stopped" not in [e["type"] for e in ports.events]
    clock.advance(0.69)  # 1.19 s of silence
    assert ports.of("release") == []
    clock.advance(0.02)  # 1.21 s: the cap
    assert ports.events[-2] == {"type": "vad.speech_stopped", "audio_end_ms": 2000}
    assert ports.of("release") == [("release", "r1", True)]
    assert ports.final()["text"] == "Can you tell me how to get to the"


def test_speech_while_an_incomplete_turn_waits_continues_that_turn(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    turns.transcribed(1, "I would like to know the weather in", "en")
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    clock.advance(0.2)
    turns.speech_started(40000, 2500)  # "Paris tomorrow", 700 ms after the end of speech
    # The same turn goes on: its guess is dropped, the whole utterance is transcribed again,
    # and the client hears of neither a stop nor a new start.
    assert ports.of("drop") == [("drop", "r1")]
    assert ports.of("open") == [("open", 1, 0), ("open", 2, 0)]
    assert [e["type"] for e in ports.events] == ["vad.speech_started"]
    clock.advance(5.0)  # the cap's timer was cancelled
    assert "vad.speech_stopped" not in [e["type"] for e in ports.events]
    turns.speech_paused(64000, 4000, 200, end_of_turn=0.9, end_of_turn_ms=70.0)
    turns.transcribed(2, "I would like to know the weather in Paris tomorrow?", "en")
    assert ports.calls[-1] == ("start", "r2", "I would like to know the weather in Paris tomorrow?", "live")
    assert len(ports.of("start")) == 2  # answered once, after the second half


def test_speech_after_a_pause_judged_incomplete_resumes_as_before(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    turns.transcribed(1, "I would like", "en")
    turns.speech_resumed(36000, 2250)
    turns.speech_paused(64000, 4000, 200)  # no verdict this time (the model was busy)
    turns.transcribed(2, "I would like a coffee", "en")
    turns.speech_stopped(4000, 500)  # the earlier "incomplete" does not linger: the silence rule
    assert ports.of("release") == [("release", "r2", True)]


def test_speech_after_a_turn_ended_at_its_pause_is_a_new_turn(ports: RecordedPorts, clock: VirtualClock) -> None:
    """Judged complete, but the user goes on: the VAD says "resumed"; that is a new turn (and a barge-in)."""
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.9, end_of_turn_ms=70.0)
    turns.transcribed(1, "Tell me about boats.", "en")
    turns.reply_text("r1", "Boats float.")
    clock.advance(0.2)
    turns.reply_audio_sent("r1", 1.0)
    clock.advance(0.4)  # past the echo guard
    turns.speech_resumed(38400, 2400)
    assert ports.of("cancel") == [("cancel", "r1")]
    assert ports.of("open") == [("open", 1, 0), ("open", 2, 32000)]  # from where the first turn's speech ended
    assert ports.events[-1] == {"type": "vad.speech_started", "audio_start_ms": 2400}
    turns.speech_stopped(3000, 500)
    turns.transcribed(2, "and trains", "en")
    assert ports.calls[-1] == ("start", "r2", "and trains", "live")


def test_without_a_verdict_a_pause_changes_nothing(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(4800, 300)
    turns.speech_paused(32000, 2000, 200)
    turns.transcribed(1, "What time is it?", "en")
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    assert ports.calls == [
        ("send", "vad.speech_started"),
        ("open", 1, 4800),
        ("end", 1),
        ("start", "r1", "What time is it?", "held"),
        ("send", "vad.speech_stopped"),
        ("send", "transcript.final"),
        ("release", "r1", True),
    ]
    assert clock.pending() == []


def test_a_complete_verdict_without_preemption_still_ends_the_turn_at_the_pause(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock, preemptive=False)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.9, end_of_turn_ms=70.0)
    assert ports.of("end") == [("end", 1)]  # its words are needed to check the verdict
    turns.transcribed(1, "What time is it?", "en")
    assert ports.calls[-1] == ("start", "r1", "What time is it?", "live")


def test_a_verdict_under_the_incomplete_threshold_waits(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock, end_of_turn_threshold=0.95, incomplete_threshold=0.92)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.9, end_of_turn_ms=70.0)
    turns.transcribed(1, "What time is it?", "en")
    assert ports.of("start") == [("start", "r1", "What time is it?", "held")]
    turns.speech_stopped(2000, 500)
    assert ports.of("release") == []
    clock.advance(0.7)
    assert ports.of("release") == [("release", "r1", True)]


def test_an_unsure_verdict_leaves_the_turn_to_the_silence_rule(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.4, end_of_turn_ms=70.0)
    turns.transcribed(1, "What is your favourite colour?", "en")
    assert ports.of("release") == []  # not complete enough to end at the pause
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)  # nor incomplete enough to wait past the silence rule
    assert ports.of("release") == [("release", "r1", True)]
    assert clock.pending() == []


def test_an_unsure_verdict_on_a_dangling_word_waits(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.4, end_of_turn_ms=70.0)
    turns.transcribed(1, "Which language do people speak in", "en")
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    assert ports.of("release") == []
    clock.advance(0.71)  # the 1.2 s cap
    assert ports.of("release") == [("release", "r1", True)]


def test_commit_while_an_incomplete_turn_waits_ends_it(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    turns.transcribed(1, "Hello there", "en")
    turns.speech_stopped(2000, 500)
    assert turns.commit()
    assert ports.of("release") == [("release", "r1", True)]
    assert clock.pending() == []


def test_without_preemption_speech_during_the_wait_continues_the_same_stream(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock, preemptive=False)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    turns.speech_stopped(2000, 500)
    clock.advance(0.2)
    turns.speech_started(40000, 2500)
    clock.advance(2.0)  # the cap's timer is gone with the wait
    assert ports.of("end") == [] and ports.of("open") == [("open", 1, 0)]  # one ASR stream, still open
    turns.speech_paused(64000, 4000, 200)  # no verdict: the earlier "incomplete" is forgotten
    turns.speech_stopped(4000, 500)
    assert ports.events[-1] == {"type": "vad.speech_stopped", "audio_end_ms": 4000}
    turns.transcribed(1, "I would like to know the weather in Paris", "en")
    assert ports.calls[-1] == ("start", "r1", "I would like to know the weather in Paris", "live")


def test_a_closed_session_has_no_timer_left(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    turns.speech_stopped(2000, 500)
    turns.close()
    clock.advance(2.0)
    assert clock.pending() == [] and "vad.speech_stopped" not in [e["type"] for e in ports.events]


def test_a_verdict_that_comes_after_the_pauses_transcript_still_ends_the_turn(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    """The VAD sends the pause at once and its verdict when the model is done: the transcript may come first."""
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200)
    turns.transcribed(1, "What time is it?", "en")
    assert ports.of("start") == [("start", "r1", "What time is it?", "held")] and ports.of("release") == []
    turns.pause_judged(0.93, 71.0)
    assert ports.of("release") == [("release", "r1", True)]
    assert ports.events[-2] == {"type": "vad.speech_stopped", "audio_end_ms": 2000}


def test_a_pause_judged_after_more_silence_than_it_was_reported_at_counts_that_silence(clock: VirtualClock) -> None:
    """The VAD may report a pause early (early work starts) and judge it later (PARLEY_VAD_TURN_SILENCE_MS)."""
    ports = TimingPorts()
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 100)
    assert ports.of("end") == [("end", 1)]  # the early work starts at the pause
    turns.pause_judged(0.93, 70.0, silence_ms=200)
    turns.transcribed(1, "What time is it?", "en")
    assert ports.calls[-1] == ("start", "r1", "What time is it?", "live")
    assert ports.timings[-1]["vad_silence_ms"] == 200 and ports.timings[-1]["turn_end"] == "end_of_turn"


def test_an_unsure_turn_stopped_before_its_words_ends_when_they_come(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.4, end_of_turn_ms=70.0)
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)  # the silence rule, before the words are known
    assert "vad.speech_stopped" not in [e["type"] for e in ports.events]
    clock.advance(0.1)
    turns.transcribed(1, "What is your favourite colour?", "en")
    assert ports.events[-2] == {"type": "vad.speech_stopped", "audio_end_ms": 2000}
    assert ports.calls[-1] == ("start", "r1", "What is your favourite colour?", "live")
    assert clock.pending() == []


def test_an_unsure_turn_stopped_before_its_dangling_words_waits(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.4, end_of_turn_ms=70.0)
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    clock.advance(0.1)
    turns.transcribed(1, "What is a good present for", "en")
    assert "vad.speech_stopped" not in [e["type"] for e in ports.events]
    clock.advance(0.2)
    turns.speech_started(40000, 2500)  # "my nephew", 800 ms after the end of speech: the same turn
    assert [e["type"] for e in ports.events] == ["vad.speech_started"]
    assert ports.of("open") == [("open", 1, 0), ("open", 2, 0)]


def test_a_complete_turn_whose_dangling_words_come_after_the_stop_waits(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.91, end_of_turn_ms=70.0)
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)  # the transcript is slow: the silence rule comes first
    turns.transcribed(1, "What is a good present for", "en")
    assert "vad.speech_stopped" not in [e["type"] for e in ports.events]
    clock.advance(0.71)
    assert ports.events[-2] == {"type": "vad.speech_stopped", "audio_end_ms": 2000}  # the cap


def test_an_incomplete_sounding_turn_whose_words_finish_a_sentence_waits_less(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock, doubtful_turn_max_silence_s=0.9)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    turns.transcribed(1, "What is your favourite colour?", "en")
    assert ports.of("start") == [("start", "r1", "What is your favourite colour?", "held")]
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    assert_released_at(ports, clock, 0.9)  # the shorter wait, not the 1.2 s cap
    [done] = [e for e in ports.events if e["type"] == "vad.speech_stopped"]
    assert done == {"type": "vad.speech_stopped", "audio_end_ms": 2000}


def test_speech_within_the_shorter_wait_still_continues_the_turn(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock, doubtful_turn_max_silence_s=0.9)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    turns.transcribed(1, "What time does the museum?", "en")  # a first half misheard as a question
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    clock.advance(0.3)
    turns.speech_started(40000, 2800)  # "open on Sundays"
    assert ports.of("drop") == [("drop", "r1")] and ports.of("release") == []
    clock.advance(5.0)
    assert "vad.speech_stopped" not in [e["type"] for e in ports.events]


def test_words_that_finish_a_sentence_after_the_stop_shorten_the_wait_then(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock, doubtful_turn_max_silence_s=0.9)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)  # the words are not in yet: the cap's wait
    clock.advance(0.2)  # 0.7 s of silence
    turns.transcribed(1, "What is your favourite colour?", "en")
    assert ports.of("start") == [("start", "r1", "What is your favourite colour?", "held")]
    assert_released_at(ports, clock, 0.9, silence_now_s=0.7)


def test_finished_words_that_come_after_the_shorter_wait_end_the_turn_at_once(clock: VirtualClock) -> None:
    ports = TimingPorts()
    turns = machine(ports, clock, doubtful_turn_max_silence_s=0.9)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    clock.advance(0.5)  # 1.0 s of silence, past the shorter wait: the transcript was slow
    turns.transcribed(1, "What is your favourite colour?", "en")
    assert ports.final()["text"] == "What is your favourite colour?"
    [timings] = ports.timings
    assert timings["turn_end"] == "doubtful" and timings["vad_silence_ms"] == 1000
    assert clock.pending() == []


def test_dangling_words_keep_the_full_wait(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = machine(ports, clock, doubtful_turn_max_silence_s=0.9)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    turns.transcribed(1, "What is the tallest mountain in", "en")
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    assert_released_at(ports, clock, 1.2)


def test_a_complete_sounding_turn_that_ends_on_to_and_a_verb_waits_less(clock: VirtualClock) -> None:
    ports = TimingPorts()
    turns = machine(ports, clock, doubtful_turn_max_silence_s=0.9)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.9, end_of_turn_ms=70.0)
    turns.transcribed(1, "Can you recommend a good book to read?", "en")
    assert ports.of("release") == []  # doubtful words: not ended at the pause
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    assert_released_at(ports, clock, 0.9)
    assert ports.timings == [{}]  # the held reply's; its timings come with the release


def test_an_incomplete_sounding_turn_that_ends_on_to_and_a_verb_keeps_the_full_wait(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock, doubtful_turn_max_silence_s=0.9)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.02, end_of_turn_ms=70.0)
    turns.transcribed(1, "Could you remind me to call?", "en")
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    assert_released_at(ports, clock, 1.2)


def test_a_complete_sounding_turn_whose_doubtful_words_come_after_the_stop_waits_less(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock, doubtful_turn_max_silence_s=0.9)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.9, end_of_turn_ms=70.0)
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)  # its words are not in: it waits for them
    clock.advance(0.1)
    turns.transcribed(1, "Can you recommend a good book to read?", "en")
    assert_released_at(ports, clock, 0.9, silence_now_s=0.6)


def test_finished_words_the_asr_was_unsure_of_do_not_end_the_turn_at_the_pause(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    """A first half misheard into a question sounds and reads finished; the recogniser's doubt keeps it open."""
    turns = machine(ports, clock, doubtful_turn_max_silence_s=0.9, min_word_confidence=0.6)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.95, end_of_turn_ms=70.0)
    turns.transcribed(1, "Who wrote the famous album out?", "en", 1.0, confidence=0.48)
    assert ports.of("release") == [] and ports.of("start") == [
        ("start", "r1", "Who wrote the famous album out?", "held")
    ]
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    clock.advance(0.2)
    turns.speech_started(40000, 2700)  # "a white whale": the same turn goes on
    assert ports.of("drop") == [("drop", "r1")] and ports.of("release") == []


@pytest.mark.parametrize("confidence", [0.0, 0.61])
def test_finished_words_the_asr_was_sure_of_or_could_not_tell_end_the_turn_at_the_pause(
    ports: RecordedPorts, clock: VirtualClock, confidence: float
) -> None:
    turns = machine(ports, clock, min_word_confidence=0.6)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.95, end_of_turn_ms=70.0)
    turns.transcribed(1, "What time is it?", "en", 1.0, confidence=confidence)
    assert ports.calls[-1] == ("start", "r1", "What time is it?", "live")


def test_words_the_asr_was_unsure_of_wait_the_shorter_wait_after_a_complete_verdict(
    ports: RecordedPorts, clock: VirtualClock
) -> None:
    turns = machine(ports, clock, doubtful_turn_max_silence_s=0.9, min_word_confidence=0.6)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.95, end_of_turn_ms=70.0)
    turns.transcribed(1, "Tell me a fun fact, I'm out early fence.", "en", 1.0, confidence=0.48)
    clock.advance(0.3)
    turns.speech_stopped(2000, 500)
    assert_released_at(ports, clock, 0.9)


def test_by_default_the_asrs_confidence_decides_nothing(ports: RecordedPorts, clock: VirtualClock) -> None:
    turns = TurnTaker(TurnSettings(), ports, clock)
    turns.speech_started(0, 0)
    turns.speech_paused(32000, 2000, 200, end_of_turn=0.95, end_of_turn_ms=70.0)
    turns.transcribed(1, "Tell me a fun fact about elephants.", "en", 1.0, confidence=0.3)
    assert ports.calls[-1] == ("start", "r1", "Tell me a fun fact about elephants.", "live")
