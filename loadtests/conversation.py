"""One `/v1/conversation` session as a person with a live microphone holds it, for Locust (gevent).

A reader greenlet records every event and audio frame with its arrival time; a microphone
greenlet sends 100 ms PCM16 frames at a steady real-time pace for the whole session, silence
unless the user is speaking, as a browser does (so the VAD, not the client, ends each turn).
`Conversation.turn` speaks one question and follows the reply by its `response_id`; the rules
for what counts as a lost turn are those of bench/concurrent_users.py.

websocket-client is a blocking client on the standard socket module, which Locust's gevent
monkey-patching makes cooperative: one greenlet may sit in `recv` while another sends.
"""

from __future__ import annotations

import collections
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

import gevent  # type: ignore[import-untyped]  # no stubs in this venv (types-gevent would add them)
import gevent.event  # type: ignore[import-untyped]
import websocket

SAMPLE_RATE = 16000
FRAME_MS = 100  # what tests/conversation_client.py and the browser send
FRAME_BYTES = SAMPLE_RATE * 2 * FRAME_MS // 1000
SILENT_FRAME = bytes(FRAME_BYTES)
ERROR_GRACE_S = 5.0  # after an `error` with no reply under way, how long a reply may still start
OUTPUT_RATE = 24000  # the gateway's default, until session.started says otherwise

Event = tuple[float, dict[str, Any]]


class TurnLost(Exception):
    """A turn that did not end in a completed reply with audio; the message says why."""


@dataclass
class Turn:
    """A completed turn, timed at the client from the moment the last speech frame left it."""

    voice_to_voice_ms: float  # → first reply audio byte
    turn_ms: float  # → response.done: the whole reply has been sent
    transcript: str
    reply_audio_bytes: int
    playback_end: float  # perf_counter time at which the reply would finish playing at the client


def _first(events: list[Event], type_: str, response_id: str | None = None) -> tuple[int, Event] | None:
    for index, (arrival, payload) in enumerate(events):
        if payload.get("type") == type_ and (response_id is None or payload.get("response_id") == response_id):
            return index, (arrival, payload)
    return None


def _describe(errors: list[dict[str, Any]]) -> str:
    return "".join(f"; error {e.get('code')}: {e.get('message')}" for e in errors)


class Conversation:
    def __init__(self, url: str, headers: dict[str, str] | None = None, connect_timeout_s: float = 30.0) -> None:
        self.url = url
        self.headers = headers or {}
        self.connect_timeout_s = connect_timeout_s
        self.events: list[Event] = []
        self.audio: list[tuple[float, bytes]] = []
        self.output_rate = OUTPUT_RATE
        self.closed: str | None = None  # why the socket is no longer usable
        self.max_lag_s = 0.0  # how far the microphone's frame clock fell behind (the load generator's own load)
        self._ws: websocket.WebSocket | None = None
        self._changed = gevent.event.Event()
        self._queue: collections.deque[tuple[bytes, gevent.event.AsyncResult | None]] = collections.deque()
        self._greenlets: list[gevent.Greenlet] = []

    # --- connection -------------------------------------------------------------------------

    def open(self, **session_options: Any) -> None:
        """Connect, start the session, and turn the microphone on; raises on any failure."""
        header = [f"{name}: {value}" for name, value in self.headers.items()]
        # No Origin header: the gateway checks it only for browsers (docs/http-api.md, "Access control").
        self._ws = websocket.create_connection(
            self.url, timeout=self.connect_timeout_s, header=header, suppress_origin=True, enable_multithread=True
        )
        self._ws.settimeout(None)  # the reader blocks until something comes; waits have their own timeouts
        self._greenlets.append(gevent.spawn(self._read))
        self._send_text({"type": "session.start", **session_options})
        started = self.wait_for("session.started", self.connect_timeout_s)
        self.output_rate = int(started.get("output_sample_rate", OUTPUT_RATE))
        self._greenlets.append(gevent.spawn(self._microphone))

    def close(self) -> None:
        if self.closed is None:
            self.closed = "closed by the client"
        gevent.killall(self._greenlets, timeout=2)  # the reader first, so close() alone reads the socket
        if self._ws is not None:
            with contextlib.suppress(Exception):  # already gone: nothing left to close
                self._ws.close(timeout=1)

    def _send_text(self, payload: dict[str, Any]) -> None:
        assert self._ws is not None
        self._ws.send(json.dumps(payload))

    def _read(self) -> None:
        assert self._ws is not None
        try:
            while True:
                opcode, data = self._ws.recv_data()
                now = time.perf_counter()
                if opcode == websocket.ABNF.OPCODE_BINARY:
                    self.audio.append((now, bytes(data)))
                elif opcode == websocket.ABNF.OPCODE_TEXT:
                    self.events.append((now, json.loads(data)))
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.closed = f"socket closed by the server ({self._ws.status or ''})"
                    return
                self._changed.set()
        except Exception as exc:
            if self.closed is None:
                self.closed = f"socket lost: {exc!r}"
        finally:
            self._changed.set()

    def _microphone(self) -> None:
        """A frame every 100 ms on a fixed clock; a late frame is sent at once so the stream keeps real time."""
        assert self._ws is not None
        started = time.perf_counter()
        index = 0
        pending: gevent.event.AsyncResult | None = None
        try:
            while True:
                delay = started + index * FRAME_MS / 1000 - time.perf_counter()
                if delay > 0:
                    gevent.sleep(delay)
                else:
                    self.max_lag_s = max(self.max_lag_s, -delay)
                frame, pending = self._queue.popleft() if self._queue else (SILENT_FRAME, None)
                self._ws.send_binary(frame)
                if pending is not None:
                    pending.set(time.perf_counter())
                    pending = None
                index += 1
        except Exception as exc:  # the socket broke: whoever waits to speak learns it now
            if self.closed is None:
                self.closed = f"microphone stopped: {exc!r}"
            for waiting in [pending, *(result for _, result in self._queue)]:
                if waiting is not None and not waiting.ready():
                    waiting.set_exception(ConnectionError(self.closed))
            self._queue.clear()

    # --- waiting ------------------------------------------------------------------------------

    def wait_for(self, type_: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.perf_counter() + timeout_s
        while True:
            # Greenlets switch only where they block, so nothing can arrive between clear() and the check.
            self._changed.clear()
            found = _first(self.events, type_)
            if found is not None:
                return found[1][1]
            errors = [payload for _, payload in self.events if payload.get("type") == "error"]
            if self.closed is not None:
                raise ConnectionError(f"{self.closed} before {type_}{_describe(errors)}")
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"no {type_} within {timeout_s:g} s{_describe(errors)}")
            self._changed.wait(min(remaining, 1.0))

    def say(self, pcm: bytes, timeout_s: float = 60.0) -> float:
        """Queue `pcm` on the microphone; returns the perf_counter time its last frame left (the end of speech)."""
        if self.closed is not None:
            raise ConnectionError(self.closed)
        pcm = bytes(-len(pcm) % FRAME_BYTES) + pcm  # padded in front, so the speech ends exactly at a frame's end
        frames = [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]
        sent = gevent.event.AsyncResult()
        self._queue.extend((frame, None) for frame in frames[:-1])
        self._queue.append((frames[-1], sent))
        try:
            return float(sent.get(timeout=len(frames) * FRAME_MS / 1000 + timeout_s))
        except gevent.Timeout as exc:  # a BaseException: turned into an ordinary failure of this turn
            raise TimeoutError(f"the microphone did not send the speech within {timeout_s:g} s") from exc

    def turn(self, pcm: bytes, timeout_s: float) -> Turn:
        """Speak `pcm` and follow the reply; raises TurnLost (or ConnectionError) if it is not a completed one."""
        # Only what arrives from now on belongs to this turn; forgetting the rest also bounds memory.
        self.events.clear()
        self.audio.clear()
        speech_end = self.say(pcm)
        while True:
            self._changed.clear()
            outcome = self._judge(speech_end, timeout_s)
            if outcome is not None:
                return outcome
            self._changed.wait(0.5)

    def errors(self) -> list[dict[str, Any]]:
        """The `error` events of the current turn (so far)."""
        return [payload for _, payload in self.events if payload.get("type") == "error"]

    def _judge(self, speech_end: float, timeout_s: float) -> Turn | None:
        """The turn's outcome from what arrived so far; None while it is still under way."""
        now = time.perf_counter()
        events = self.events
        errors = self.errors()
        response_id = None
        final = _first(events, "transcript.final")
        if final is not None:
            final_index, (_, final_event) = final
            transcript = str(final_event.get("text", "")).strip()
            if not transcript:
                why = f" ({final_event['reason']})" if final_event.get("reason") else ""
                raise TurnLost(f"empty transcript{why}{_describe(errors)}")
            created = _first(events[final_index:], "response.created")
            if created is not None:
                response_id = str(created[1][1].get("response_id"))
                if _first(events, "response.cancelled", response_id) is not None:
                    raise TurnLost(f"response.cancelled{_describe(errors)}")
                done = _first(events, "response.done", response_id)
                if done is not None:
                    return self._completed(events, done[1], response_id, transcript, speech_end, errors)
        if errors and response_id is None:  # a reply under way ends with response.done, even a failed one
            first_error_at = next(arrival for arrival, payload in events if payload.get("type") == "error")
            if now > first_error_at + ERROR_GRACE_S:
                raise TurnLost(_describe(errors).removeprefix("; "))
        if self.closed is not None:
            raise TurnLost(f"{self.closed}{_describe(errors)}")
        if now > speech_end + timeout_s:
            seen = [payload.get("type") for _, payload in events if payload.get("type") != "ping"]
            raise TurnLost(f"timeout: no response.done within {timeout_s:g} s (last event: {seen[-1:]})")
        return None

    def _completed(
        self,
        events: list[Event],
        done: Event,
        response_id: str,
        transcript: str,
        speech_end: float,
        errors: list[dict[str, Any]],
    ) -> Turn:
        done_at, done_event = done
        if done_event.get("status") != "completed":
            raise TurnLost(f"response.done status {done_event.get('status')}{_describe(errors)}")
        started = _first(events, "response.audio.started", response_id)
        chunks = [] if started is None else [(t, c) for t, c in self.audio if started[1][0] <= t <= done_at]
        if not chunks:
            raise TurnLost(f"no reply audio{_describe(errors)}")
        audio_bytes = sum(len(chunk) for _, chunk in chunks)
        return Turn(
            voice_to_voice_ms=(chunks[0][0] - speech_end) * 1000,
            turn_ms=(done_at - speech_end) * 1000,
            transcript=transcript,
            reply_audio_bytes=audio_bytes,
            playback_end=chunks[0][0] + audio_bytes / 2 / self.output_rate,
        )
