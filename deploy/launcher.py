"""What the launcher (deploy/run_stack.py) decides while the stack starts and runs.

`StackWatch` is a plain object: it is fed what supervisord says of each program and what the
gateway's `/readyz` says, with the time, and answers with notices for the operator. It never
stops a stack for being slow: a model loading from a network volume can take many minutes,
so past `PARLEY_LAUNCHER_READY_TIMEOUT_S` it only says the stack is late and what is still
missing, every `PARLEY_LAUNCHER_PROGRESS_EVERY_S`. It asks for a stop only when a program
cannot start at all (supervisord gave up on it, or it keeps exiting) before the stack was
ever ready and before that program ever ran a whole crash window (a stack without a gateway
is judged by the latter alone); a stack that has served keeps running whatever crashes
later (supervisord restarts the program and the gateway routes around it), and the watch
says so, once per episode.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class LauncherSettings(BaseSettings):
    """`make run` and `runpod/start.sh` (deploy/run_stack.py): how the stack's start is watched."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_LAUNCHER_", extra="ignore")

    ready_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="After this long without a ready gateway the launcher says the stack is late and what is "
        "missing; it keeps waiting and never stops a stack for being slow (runpod/start.sh: 1800).",
    )
    progress_every_s: float = Field(
        default=20.0, gt=0, description="How often the launcher says what is still missing while it waits."
    )
    crash_restarts: int = Field(
        default=5,
        ge=1,
        description="A program that exits this many times within `PARLEY_LAUNCHER_CRASH_WINDOW_S` before the stack "
        "was first ready cannot start: the launcher stops the stack and names it with its last error.",
    )
    crash_window_s: float = Field(
        default=300.0, gt=0, description="The window in which `PARLEY_LAUNCHER_CRASH_RESTARTS` exits count."
    )


@dataclass(frozen=True)
class Program:
    """One supervisord program as `supervisor.getAllProcessInfo` describes it."""

    name: str
    state: str  # supervisord's statename: STARTING, RUNNING, BACKOFF, EXITED, FATAL, STOPPED, ...
    started: float  # when its current (or last) process was spawned, Unix time; 0 if never
    description: str = ""  # "pid 12, uptime 0:01:02", "exit status 1; not expected", a spawn error

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> Program:
        description = str(info.get("spawnerr") or info.get("description") or "")
        return cls(str(info["name"]), str(info["statename"]), float(info.get("start") or 0), description)


@dataclass(frozen=True)
class Readiness:
    """What the gateway's `/readyz` answered (`ready` is its 200)."""

    ready: bool
    body: Mapping[str, Any]


class Kind(Enum):
    READY = "ready"  # the stack is ready for the first time
    WAITING = "waiting"  # not ready yet: what is missing
    LATE = "late"  # not ready past the readiness timeout: still waiting
    CANNOT_START = "cannot_start"  # a program cannot start before the stack was ever ready: stop
    CRASHING = "crashing"  # a program keeps crashing in a stack that served: keep going
    LOST = "lost"  # a ready stack is no longer ready
    BACK = "back"  # ... and ready again


@dataclass(frozen=True)
class Notice:
    kind: Kind
    text: str

    @property
    def stops(self) -> bool:
        return self.kind is Kind.CANNOT_START


def describe(body: Mapping[str, Any]) -> str:
    """`/readyz`'s body in words: the kinds still missing, and those that keep failing."""
    parts = []
    if body.get("missing"):
        parts.append(f"no ready {', '.join(body['missing'])} yet")
    for kind, problem in (body.get("crashing") or {}).items():
        parts.append(
            f"{kind} keeps failing ({problem['crashes']} crashes, {problem['failed_starts']} failed starts "
            f"in {problem['window_s']:.0f} s; last: {problem['last_problem']})"
        )
    return "; ".join(parts) or str(body.get("status"))


@dataclass
class _Exits:
    """When a program's processes were replaced, within the crash window; whether it has served."""

    started: float = 0.0
    times: deque[float] = field(default_factory=deque)
    reported: bool = False
    running_since: float | None = None  # (the watch's clock) since when its current process runs
    served: bool = False  # it ran a whole crash window without exiting: it can start


class StackWatch:
    def __init__(self, settings: LauncherSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.since = clock()
        self.ever_ready = False
        self.ready = False
        self._late_said = False
        self._last_progress = self.since
        self._exits: dict[str, _Exits] = {}
        self._last_body: Mapping[str, Any] = {}

    def observe(self, programs: Iterable[Program], readiness: Readiness | None) -> list[Notice]:
        """One look at the stack; `readiness` is None where this stack has no gateway (never "ready")."""
        now = self.clock()
        notices = [*self._programs(now, programs)]
        if any(notice.stops for notice in notices):
            return notices
        if readiness is not None:
            self._last_body = readiness.body
            notices += self._readiness(now, readiness)
        return notices

    def _programs(self, now: float, programs: Iterable[Program]) -> Iterable[Notice]:
        window, limit = self.settings.crash_window_s, self.settings.crash_restarts
        for program in programs:
            exits = self._exits.setdefault(program.name, _Exits(started=program.started))
            if program.started != exits.started:
                if exits.started:  # a process before this one ended: supervisord started it again
                    exits.times.append(now)
                exits.started, exits.running_since = program.started, None
            if program.state == "RUNNING":
                exits.running_since = now if exits.running_since is None else exits.running_since
                exits.served = exits.served or now - exits.running_since >= window
            while exits.times and now - exits.times[0] > window:
                exits.times.popleft()
            fatal = program.state == "FATAL"
            looping = len(exits.times) >= limit
            if not (looping or fatal):
                exits.reported = False
            elif not (self.ever_ready or exits.served):
                times = "" if fatal else f": it exited {len(exits.times)} times in {window:.0f} s"
                yield Notice(Kind.CANNOT_START, f"{program.name} cannot start{times} ({self._why(program)})")
            elif not exits.reported:
                exits.reported = True
                what = "supervisord gave up on it" if fatal else "supervisord keeps restarting it"
                yield Notice(
                    Kind.CRASHING,
                    f"{program.name} keeps crashing ({self._why(program)}); {what}, and the rest of the stack goes on",
                )

    def _why(self, program: Program) -> str:
        """The program's last error: what it announced when it failed (via /readyz), else supervisord's word."""
        problem = (self._last_body.get("crashing") or {}).get(program.name)
        if problem and problem.get("last_problem"):
            return f"last error: {problem['last_problem']}"
        return f"supervisord: {program.state.lower()}, {program.description or 'no detail'}"

    def _readiness(self, now: float, readiness: Readiness) -> Iterable[Notice]:
        waited = now - self.since
        was_ready, self.ready = self.ready, readiness.ready
        if readiness.ready and not self.ever_ready:
            self.ever_ready = True
            yield Notice(Kind.READY, f"ready after {waited:.1f} s")
        elif self.ever_ready and was_ready != readiness.ready:
            if readiness.ready:
                yield Notice(Kind.BACK, "ready again")
            else:
                yield Notice(Kind.LOST, f"not ready any more: {describe(readiness.body)}")
        if self.ever_ready:
            return
        if waited >= self.settings.ready_timeout_s and not self._late_said:
            self._late_said = True
            self._last_progress = now
            yield Notice(
                Kind.LATE,
                f"not ready after {waited:.0f} s (PARLEY_LAUNCHER_READY_TIMEOUT_S={self.settings.ready_timeout_s:g}): "
                f"{describe(readiness.body)}. Still waiting: the services keep running and loading",
            )
        elif now - self._last_progress >= self.settings.progress_every_s:
            self._last_progress = now
            yield Notice(Kind.WAITING, f"waiting for the stack ({waited:.0f} s): {describe(readiness.body)}")
