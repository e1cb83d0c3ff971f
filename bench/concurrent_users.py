"""N users speaking to one stack at the same time, at real-time pace: is any turn lost, and what latency?

Starts the whole stack (as `make run` does) on free ports unless --url is given. Then, for each
user count N (default 1, 2, 4, 8): N sessions connect to /v1/conversation, and all of them speak at
once, each in its own session, like N people with a live microphone each:

- every session streams 100 ms PCM16 frames at a steady real-time pace for the whole run, silence
  whenever its user is not speaking (a live microphone never stops sending);
- users start within --stagger seconds of each other (a seeded random offset each), so they truly
  overlap without being in lockstep;
- each user does --turns turns: 0.5 s of silence, one spoken question (espeak-ng, silence trimmed, so
  the end of the audio is the end of speech; users rotate through the questions of
  bench/conversation_latency.py with a per-user offset, so at any moment they ask different things),
  then silence until that turn's `response.done` (or --timeout), then silence while the reply would
  still be playing at the client (speaking earlier would be a barge-in), then --think seconds of
  silence, then the next turn.

Per turn it records the outcome: "ok" is a `response.done` with status "completed" after a non-empty
`transcript.final` and some reply audio; anything else is "lost", with the reason (the `error`
event's code and message, a failed or cancelled response, an empty transcript, no reply audio, a
closed socket, or a timeout). Only events that arrived after the turn began are looked at, and the
reply is followed by its `response_id`. Latencies are measured at the client from the moment the
last speech frame left it:

    end of speech -> transcript.final, -> first response.text.delta, -> first reply audio byte
    (voice-to-voice)

    python bench/concurrent_users.py                               # --users 1 2 4 8 --turns 3
    python bench/concurrent_users.py --users 1 2 --turns 1         # a quick smoke run
    python bench/concurrent_users.py --url ws://host:7860/v1/conversation
    python bench/concurrent_users.py --env PARLEY_GATEWAY_MAX_SESSIONS=4

Prints one line per turn, a markdown table per user count (turns, ok, lost, voice-to-voice p50/p95
over the ok turns, end -> final and end -> first token p50, wall time), the reasons of lost turns,
and a final JSON line with the machine and the settings. Exits with 1 if any turn was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.conversation_latency import percentile  # noqa: E402
from tests.conversation_client import FRAME_MS, ConversationClient  # noqa: E402
from tests.speech import (  # noqa: E402
    QUESTIONS,
    silence,
    speak,
)
from tests.stack import start_stack  # noqa: E402

SAMPLE_RATE = 16000
FRAME_BYTES = SAMPLE_RATE * 2 * FRAME_MS // 1000
ERROR_GRACE_S = 5.0  # after an `error` event, how long a response.done may still take to come
POLL_S = 0.02  # how often a turn looks at what arrived (arrival times are the reader's, not the poll's)

Event = tuple[float, dict[str, Any]]


class Microphone:
    """A live microphone on one session: 100 ms frames at a steady real-time pace, silence unless speaking."""

    def __init__(self, conv: ConversationClient) -> None:
        self.conv = conv
        self.max_lag_s = 0.0  # how far the frame clock ever fell behind (the client's own load)
        self.error: BaseException | None = None
        self._queue: collections.deque[tuple[bytes, asyncio.Future[float] | None]] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def say(self, pcm: bytes) -> float:
        """Speak `pcm` next; returns when its last frame left the client (the end of speech)."""
        if self.error is not None:
            raise ConnectionError(f"microphone stopped: {self.error!r}")
        pcm = bytes(-len(pcm) % FRAME_BYTES) + pcm  # padded in front: the speech ends exactly at a frame's end
        frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
        sent: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._queue.extend((frame, None) for frame in frames[:-1])
        self._queue.append((frames[-1], sent))
        return await sent

    async def _run(self) -> None:
        silent = silence(FRAME_MS / 1000, SAMPLE_RATE)
        started = time.perf_counter()
        index = 0
        sent: asyncio.Future[float] | None = None
        try:
            while True:
                delay = started + index * FRAME_MS / 1000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    self.max_lag_s = max(self.max_lag_s, -delay)
                frame, sent = self._queue.popleft() if self._queue else (silent, None)
                await self.conv.send_raw(frame)
                if sent is not None:
                    sent.set_result(time.perf_counter())
                    sent = None
                index += 1
        except Exception as exc:  # the socket closed: fail whoever is waiting to speak
            self.error = exc
            waiting = [sent, *(future for _, future in self._queue)]
            for future in waiting:
                if future is not None and not future.done():
                    future.set_exception(ConnectionError(f"microphone stopped: {exc!r}"))
            self._queue.clear()


@dataclass
class Turn:
    users: int
    user: int
    turn: int
    question: str
    outcome: str = "lost"
    reason: str = ""
    transcript: str = ""
    response_id: str = ""
    end_to_final_ms: float | None = None
    end_to_first_token_ms: float | None = None
    voice_to_voice_ms: float | None = None
    reply_audio_ms: float = 0.0
    server: dict[str, Any] = field(default_factory=dict)

    def lose(self, reason: str) -> None:
        self.outcome, self.reason = "lost", reason


def first(events: list[Event], type_: str, response_id: str | None = None) -> tuple[int, Event] | None:
    """Index and (arrival, payload) of the first event of `type_` (of that response, if given)."""
    for index, (arrival, payload) in enumerate(events):
        if payload["type"] == type_ and (response_id is None or payload.get("response_id") == response_id):
            return index, (arrival, payload)
    return None


def describe(error: dict[str, Any]) -> str:
    return f"error {error.get('code')}: {error.get('message')}"


async def follow_turn(conv: ConversationClient, after: int, speech_end: float, timeout_s: float, turn: Turn) -> float:
    """Watch the events from index `after` until this turn's reply is over or lost; fills in `turn`.

    Returns when the reply would have finished playing at the client (now, if there was none)."""
    output_rate = int(conv.session.get("output_sample_rate", 24000))
    while True:
        now = time.perf_counter()
        events = conv.received.events[after:]
        errors = [payload for _, payload in events if payload["type"] == "error"]
        final = first(events, "transcript.final")
        if final is not None:
            final_index, (final_at, final_event) = final
            turn.transcript = str(final_event.get("text", "")).strip()
            turn.end_to_final_ms = round((final_at - speech_end) * 1000, 1)
            if not turn.transcript:
                why = f" ({final_event['reason']})" if final_event.get("reason") else ""
                turn.lose(f"empty transcript{why}" + "".join(f"; {describe(e)}" for e in errors))
                return now
            created = first(events[final_index:], "response.created")
            if created is not None:
                turn.response_id = str(created[1][1]["response_id"])
                cancelled = first(events, "response.cancelled", turn.response_id)
                if cancelled is not None:
                    turn.lose("response.cancelled" + "".join(f"; {describe(e)}" for e in errors))
                    return now
                done = first(events, "response.done", turn.response_id)
                if done is not None:
                    return judge(conv, events, done[1], speech_end, output_rate, errors, turn)
        if errors and not turn.response_id:  # a reply under way ends with response.done, even a failed one
            error_at = next(arrival for arrival, payload in events if payload["type"] == "error")
            if now > error_at + ERROR_GRACE_S:
                turn.lose("; ".join(describe(e) for e in errors))
                return now
        if conv.ws.close_code is not None:
            turn.lose(
                f"socket closed ({conv.ws.close_code} {conv.ws.close_reason})"
                + "".join(f"; {describe(e)}" for e in errors)
            )
            return now
        if now > speech_end + timeout_s:
            seen = [payload["type"] for _, payload in events if payload["type"] != "ping"]
            turn.lose(f"timeout: no response.done within {timeout_s:g} s (last event: {seen[-1] if seen else None})")
            return now
        await asyncio.sleep(POLL_S)


def judge(
    conv: ConversationClient,
    events: list[Event],
    done: Event,
    speech_end: float,
    output_rate: int,
    errors: list[dict[str, Any]],
    turn: Turn,
) -> float:
    """Fill in `turn` from its response.done; returns when its reply would have finished playing."""
    done_at, done_event = done
    turn.server = dict(done_event.get("timings") or {})
    delta = first(events, "response.text.delta", turn.response_id)
    if delta is not None:
        turn.end_to_first_token_ms = round((delta[1][0] - speech_end) * 1000, 1)
    started = first(events, "response.audio.started", turn.response_id)
    chunks = [] if started is None else [(t, c) for t, c in conv.received.audio if started[1][0] <= t <= done_at]
    audio_s = sum(len(chunk) for _, chunk in chunks) / 2 / output_rate
    turn.reply_audio_ms = round(audio_s * 1000)
    if chunks:
        turn.voice_to_voice_ms = round((chunks[0][0] - speech_end) * 1000, 1)
    if done_event.get("status") != "completed":
        turn.lose(f"response.done status {done_event.get('status')}" + "".join(f"; {describe(e)}" for e in errors))
    elif not chunks:
        turn.lose("no reply audio" + "".join(f"; {describe(e)}" for e in errors))
    else:
        turn.outcome, turn.reason = "ok", ""
    return chunks[0][0] + audio_s if chunks else time.perf_counter()


@dataclass
class Settings:
    turns: int
    timeout_s: float
    think_s: float
    lead_silence_s: float
    stagger_s: float
    seed: int


async def speak_turns(
    conv: ConversationClient,
    user: int,
    users: int,
    start_at: float,
    audio: dict[str, bytes],
    settings: Settings,
    results: list[Turn],
) -> float:
    """One user's turns in its own session; returns the microphone's worst lag (s)."""
    mic = Microphone(conv)
    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    mic.start()
    try:
        for index in range(settings.turns):
            question = QUESTIONS[(user + index) % len(QUESTIONS)]
            turn = Turn(users, user, index, question)
            results.append(turn)
            after = len(conv.received.events)  # this turn looks only at what arrives from now on
            try:
                speech_end = await mic.say(silence(settings.lead_silence_s, SAMPLE_RATE) + audio[question])
            except ConnectionError as exc:
                turn.lose(str(exc))
                continue
            playback_end = await follow_turn(conv, after, speech_end, settings.timeout_s, turn)
            v2v = f"{turn.voice_to_voice_ms:6.0f} ms" if turn.voice_to_voice_ms is not None else "     – ms"
            print(
                f"{users} users  user {user} turn {index}: {turn.outcome:4}  v2v {v2v}  heard {turn.transcript!r}"
                + (f"  LOST: {turn.reason}" if turn.outcome != "ok" else ""),
                flush=True,
            )
            if index + 1 < settings.turns:
                await asyncio.sleep(max(0.0, playback_end - time.perf_counter()) + settings.think_s)
    finally:
        await mic.stop()
    return mic.max_lag_s


async def connect(url: str) -> ConversationClient:
    conv = ConversationClient(url)
    try:
        await conv.__aenter__()
    except Exception as exc:
        errors = "".join(f"; {describe(e)}" for e in conv.received.of_type("error"))
        await conv.__aexit__(None, None, None)
        raise ConnectionError(f"could not start a session: {exc}{errors}") from exc
    return conv


async def concurrent(url: str, users: int, audio: dict[str, bytes], settings: Settings) -> dict[str, Any]:
    """All `users` speak at once; returns the summary and the turns."""
    results: list[Turn] = []
    convs: list[ConversationClient | Exception] = []
    for _ in range(users):
        try:
            convs.append(await connect(url))
        except ConnectionError as exc:
            convs.append(exc)
    offsets = random.Random(settings.seed * 1000 + users)
    started = time.perf_counter()
    tasks = []
    for user, conv in enumerate(convs):
        if isinstance(conv, Exception):
            for index in range(settings.turns):
                turn = Turn(users, user, index, QUESTIONS[(user + index) % len(QUESTIONS)])
                turn.lose(str(conv))
                results.append(turn)
            continue
        start_at = started + offsets.uniform(0.0, settings.stagger_s)
        tasks.append(speak_turns(conv, user, users, start_at, audio, settings, results))
    try:
        lags = await asyncio.gather(*tasks)
    finally:
        for conv in convs:
            if isinstance(conv, ConversationClient):
                await conv.__aexit__(None, None, None)
    wall_s = time.perf_counter() - started
    results.sort(key=lambda t: (t.user, t.turn))
    return {"summary": summarise(results, wall_s, lags), "turns": results}


def p50(values: list[float]) -> float | None:
    return round(statistics.median(values)) if values else None


def summarise(results: list[Turn], wall_s: float, lags: list[float]) -> dict[str, Any]:
    ok = [t for t in results if t.outcome == "ok"]
    v2v = [t.voice_to_voice_ms for t in ok if t.voice_to_voice_ms is not None]
    finals = [t.end_to_final_ms for t in ok if t.end_to_final_ms is not None]
    tokens = [t.end_to_first_token_ms for t in ok if t.end_to_first_token_ms is not None]
    return {
        "turns": len(results),
        "ok": len(ok),
        "lost": len(results) - len(ok),
        "lost_reasons": dict(collections.Counter(t.reason for t in results if t.outcome != "ok")),
        "voice_to_voice_ms": {"p50": p50(v2v), "p95": round(percentile(v2v, 0.95)) if v2v else None},
        "end_to_transcript_ms": {"p50": p50(finals)},
        "end_to_first_token_ms": {"p50": p50(tokens)},
        "preemptive_hit_rate": round(sum(1 for t in ok if t.server.get("preemptive")) / len(ok), 3) if ok else None,
        "wall_s": round(wall_s, 1),
        "client_max_lag_ms": round(max(lags, default=0.0) * 1000),
    }


def table(summaries: dict[int, dict[str, Any]]) -> str:
    def ms(value: float | None) -> str:
        return "–" if value is None else f"{value:.0f} ms"

    lines = [
        "| users at once | turns | ok | lost | **voice-to-voice** p50 / p95 | end of speech → `transcript.final` p50 "
        "| end of speech → first token p50 | wall time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for users, s in summaries.items():
        v2v = s["voice_to_voice_ms"]
        v2v_cell = "–" if v2v["p50"] is None else f"{v2v['p50']:.0f} / {v2v['p95']:.0f} ms"
        lines.append(
            f"| {users} | {s['turns']} | {s['ok']} | {s['lost']} | **{v2v_cell}** "
            f"| {ms(s['end_to_transcript_ms']['p50'])} | {ms(s['end_to_first_token_ms']['p50'])} "
            f"| {s['wall_s']:.1f} s |"
        )
    reasons = [
        f"- {users} users at once: {count} turn(s) lost: {reason}"
        for users, s in summaries.items()
        for reason, count in s["lost_reasons"].items()
    ]
    return "\n".join(lines + (["", *reasons] if reasons else []))


async def measure(url: str, user_counts: list[int], settings: Settings) -> dict[int, dict[str, Any]]:
    audio = {question: speak(question) for question in QUESTIONS}
    out = {}
    for users in user_counts:
        out[users] = await concurrent(url, users, audio, settings)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running gateway's /v1/conversation; default: start one")
    parser.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8], help="user counts to measure")
    parser.add_argument("--turns", type=int, default=3, help="turns per user")
    parser.add_argument("--timeout", type=float, default=120.0, help="longest wait for a turn's response.done (s)")
    parser.add_argument("--think", type=float, default=1.0, help="silence after a reply has played (s)")
    parser.add_argument("--lead-silence", type=float, default=0.5, help="silence before each question (s)")
    parser.add_argument("--stagger", type=float, default=0.3, help="users start within this many seconds")
    parser.add_argument("--seed", type=int, default=0, help="seed of the start offsets")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the started stack")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    settings = Settings(args.turns, args.timeout, args.think, args.lead_silence, args.stagger, args.seed)

    if args.url:
        results = asyncio.run(measure(args.url, args.users, settings))
    else:
        with tempfile.TemporaryDirectory() as state:
            stack = start_stack(Path(state), extra_env)
            try:
                results = asyncio.run(measure(stack.ws_url, args.users, settings))
                if any(r["summary"]["lost"] for r in results.values()):
                    print(f"--- tail of the stack log ---\n{stack.log()}\n---", file=sys.stderr, flush=True)
            finally:
                stack.stop()

    summaries = {users: r["summary"] for users, r in results.items()}
    print()
    print(table(summaries))
    print()
    report = {
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "settings": {
            "users": args.users,
            **asdict(settings),
            "url": args.url or "started here",
            "env": extra_env,
        },
        "results": {str(users): s for users, s in summaries.items()},
        "lost_turns": [asdict(t) for r in results.values() for t in r["turns"] if t.outcome != "ok"],
    }
    print(json.dumps(report))
    sys.exit(1 if any(s["lost"] for s in summaries.values()) else 0)


if __name__ == "__main__":
    main()
