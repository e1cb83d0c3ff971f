"""What the launcher decides while a stack starts (deploy/launcher.py), on a virtual clock."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.scripts import deploy_module

launcher = deploy_module("launcher")
Kind, Program, Readiness = launcher.Kind, launcher.Program, launcher.Readiness

NOT_READY = Readiness(False, {"status": "not ready", "missing": ["llm", "tts"]})
READY = Readiness(True, {"status": "ready"})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def watch(clock: Clock, **settings: Any) -> Any:
    values = {"ready_timeout_s": 60, "progress_every_s": 20, "crash_restarts": 3, "crash_window_s": 100, **settings}
    return launcher.StackWatch(launcher.LauncherSettings(**values), clock=clock)


def running(name: str, started: float = 1.0, state: str = "RUNNING", description: str = "") -> Any:
    return Program(name, state, started, description)


def kinds(notices: list[Any]) -> list[Any]:
    return [notice.kind for notice in notices]


def test_a_slow_stack_is_reported_late_and_never_stopped(clock: Clock) -> None:
    stack = watch(clock)
    seen = []
    for _ in range(20 * 60 * 2):  # twenty minutes, every half second: models loading from a slow volume
        clock.now += 0.5
        seen += stack.observe([running("llm")], NOT_READY)
    assert Kind.CANNOT_START not in kinds(seen)
    assert kinds(seen).count(Kind.LATE) == 1
    late = next(n for n in seen if n.kind is Kind.LATE)
    assert "not ready after 60 s" in late.text and "no ready llm, tts yet" in late.text
    waiting = [n for n in seen if n.kind is Kind.WAITING]
    assert len(waiting) == pytest.approx(20 * 60 / 20 - 1, abs=1), "one line every 20 s"
    assert "no ready llm, tts yet" in waiting[0].text
    clock.now += 1
    assert kinds(stack.observe([running("llm")], READY)) == [Kind.READY]
    clock.now += 1
    assert stack.observe([running("llm")], READY) == []


def test_a_program_that_keeps_exiting_before_the_stack_is_ready_stops_it_with_its_last_error(clock: Clock) -> None:
    stack = watch(clock)
    crashing = Readiness(
        False,
        {
            "missing": ["llm"],
            "crashing": {
                "llm": {
                    "crashes": 0,
                    "failed_starts": 2,
                    "window_s": 300,
                    "last_problem": "failed to start: no such file: /workspace/models/llm.gguf",
                }
            },
        },
    )
    for restart in range(1, 4):  # the first process, then two restarts: not yet
        clock.now += 5
        assert not any(n.stops for n in stack.observe([running("llm", started=restart), running("tts")], crashing))
    clock.now += 5
    notices = stack.observe([running("llm", started=4), running("tts")], crashing)
    assert [n.kind for n in notices] == [Kind.CANNOT_START] and notices[0].stops
    assert "llm cannot start: it exited 3 times in 100 s" in notices[0].text
    assert "no such file: /workspace/models/llm.gguf" in notices[0].text


def test_restarts_spread_wider_than_the_window_are_no_crash_loop(clock: Clock) -> None:
    stack = watch(clock)
    for restart in range(1, 10):
        clock.now += 60  # once a minute: two in any 100 s window
        assert not any(n.stops for n in stack.observe([running("asr", started=restart)], NOT_READY))


def test_a_program_supervisord_gave_up_on_stops_the_stack(clock: Clock) -> None:
    stack = watch(clock)
    fatal = Program("nats", "FATAL", 5.0, "Exited too quickly (process log may have details)")
    notices = stack.observe([fatal], Readiness(False, {"status": "gateway not answering yet"}))
    assert notices[0].stops and "nats cannot start" in notices[0].text and "Exited too quickly" in notices[0].text


def test_a_stack_that_served_is_never_stopped_by_a_crash(clock: Clock) -> None:
    stack = watch(clock)
    assert kinds(stack.observe([running("tts")], READY)) == [Kind.READY]
    seen = []
    for restart in range(2, 12):
        clock.now += 2
        seen += stack.observe([running("tts", started=restart)], Readiness(False, {"missing": ["tts"]}))
    assert not any(n.stops for n in seen)
    assert kinds(seen).count(Kind.CRASHING) == 1, "said once per episode"
    assert kinds(seen).count(Kind.LOST) == 1
    clock.now += 1
    assert Kind.BACK in kinds(stack.observe([running("tts", started=11)], READY))
    clock.now += 500  # the crashes left the window: a new episode would be said again
    assert stack.observe([running("tts", started=11)], READY) == []
    gave_up = stack.observe([Program("tts", "FATAL", 11, "")], READY)
    assert [n.kind for n in gave_up] == [Kind.CRASHING] and "gave up" in gave_up[0].text
    for _ in range(5):  # supervisord gave up for good: said once, not at every look
        clock.now += 2
        assert stack.observe([Program("tts", "FATAL", 11, "")], READY) == []


def test_without_a_gateway_a_program_that_ran_a_whole_window_is_never_stopped(clock: Clock) -> None:
    stack = watch(clock)
    for _ in range(1000):  # days, in effect: no gateway, so never "ready"
        clock.now += 1
        assert stack.observe([running("tts")], None) == []
    crashed = stack.observe([Program("tts", "FATAL", 1, "spawn error")], None)
    assert [n.kind for n in crashed] == [Kind.CRASHING]


def test_without_a_gateway_a_program_that_never_ran_a_window_stops_the_stack(clock: Clock) -> None:
    stack = watch(clock)
    clock.now += 5
    assert stack.observe([running("tts")], None) == []
    assert stack.observe([Program("tts", "FATAL", 1, "spawn error")], None)[0].stops
