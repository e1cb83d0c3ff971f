"""The turn-taking state machine on its own: recorded ports and a virtual clock, no stack."""

from __future__ import annotations

from typing import Any

import pytest

from parley_gateway.turns import TurnSettings, TurnTaker


class VirtualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


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


def machine(ports: RecordedPorts, clock: VirtualClock, **settings: Any) -> TurnTaker:
    return TurnTaker(TurnSettings(**settings), ports, clock)


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
    turns.transcribed(1, "What time is it?", "en")
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
    assert ports.final() == {"type": "transcript.final", "text": "What time is it?", "language": "en"}
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
    assert ports.final() == {"type": "transcript.final", "text": "", "language": "en", "reason": "echo"}


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
