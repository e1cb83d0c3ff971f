"""Fuzzing what clients send: WebSocket frames and uploads. Each input gets the answer it must get.

Hypothesis makes the inputs: events of every known type with fields of any JSON
shape, random text and binary frames, text frames that are not UTF-8, deep
nesting, floods; upload bodies that are noise, truncated or lying WAV headers,
with any file name and content type. A model of the protocol (docs/protocol.md)
says, frame by frame, what the gateway must answer: an `error` with a given code,
`session.started`, `session.ended`, or nothing; and whether the connection stays
open (then it must still start a session and end it cleanly) or closes, with which
code. An upload gets 200 with a transcript or a 4xx naming the file, as a real
decoder judges it. No error repeats a big input back.

Each run explores new inputs (no example database, no fixed table). A failure
prints its falsifying example and a `@reproduce_failure` blob to paste onto the
test; `pytest --hypothesis-seed=N` replays a whole run (CI may pass its run number).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from parley.audio_files import AudioFileError, decode_audio
from parley_gateway.protocol import (
    CLIENT_EVENT_TYPES,
    ClientEvent,
    InputCommit,
    SessionEnd,
    SessionStart,
    TextInput,
)
from tests.conversation_client import ConversationClient
from tests.stack import Stack

pytestmark = pytest.mark.integration

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,  # every run starts afresh: nothing replays from a local file, on CI or off it
    print_blob=True,
)
FIELDS = [
    "input_sample_rate",
    "output_sample_rate",
    "voice",
    "text",
    "vad",
    "turn_detection",
    "response_id",
    "played_ms",
    "session_id",
]
LONGEST_ERROR = 600  # characters: an error names the problem, it never echoes the input back
EXAMPLE_TIMEOUT_S = 20.0  # one example's whole conversation (they take milliseconds)

# The gateway's limits at their defaults (the stack sets none of them).
MAX_EVENT_CHARS = 65536
MAX_EVENT_DEPTH = 16
MAX_TEXT_CHARS = 2000
MAX_FRAME_MS = 1000
ERRORS_AT_ONCE = 5  # max_errors_per_second: so many errors always go out before any is held back
MAX_TRANSCRIPTION_S = 600.0
MAX_UPLOAD_BYTES = 25_000_000
# Binary frames up to this size: ten of them are under 2 s even at 8 kHz, the audio burst a
# session may send at once, so `audio_too_fast` (a matter of timing) never comes into it.
MAX_FUZZ_AUDIO_BYTES = 3000

START = {"type": "session.start", "turn_detection": "push_to_talk"}
END = {"type": "session.end"}
client_event: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
rates = st.sampled_from([8000, 16000, 24000, 48000, 7999, 48001])
# Fields near what a client would send: mostly valid, some just outside their limits.
plausible: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "session.start": {
        "input_sample_rate": rates,
        "output_sample_rate": rates,
        "voice": st.sampled_from(["joe", "nobody", "../voices", ""]),
        "language": st.sampled_from(["en", "de", "EN", "english"]),
        "turn_detection": st.sampled_from(["vad", "push_to_talk", "manual"]),
        "vad": st.fixed_dictionaries(
            {}, optional={"threshold": st.floats(0, 1), "min_silence_ms": st.integers(0, 6000)}
        ),
        "preemptive": st.booleans(),
        "system_prompt": st.text(max_size=40),
        "session_id": st.sampled_from(["sess_" + "0" * 16, "sess_x"]),
        "resume_token": st.text(min_size=16, max_size=20),
    },
    "text.input": {"text": st.text(max_size=40) | st.sampled_from(["Hello.", " ", "y" * 2001])},
    "input.commit": {},
    "response.cancel": {},
    "response.audio.playing": {"response_id": st.text(max_size=20)},
    "response.audio.played": {"response_id": st.text(max_size=20), "played_ms": st.integers(-1, 10**6)},
    "session.end": {},
}
REQUIRED = {"text.input": {"text"}, "response.audio.playing": {"response_id"}, "response.audio.played": {"response_id"}}


def client_event_of(type_: str) -> st.SearchStrategy[str]:
    """An event of `type_` with its required fields and some of its optional ones (a few left out)."""
    fields = plausible[type_]
    required = {name: fields[name] for name in REQUIRED.get(type_, set())}
    optional = {name: value for name, value in fields.items() if name not in required}
    return st.fixed_dictionaries({"type": st.just(type_), **required}, optional=optional).map(json.dumps)


client_events = st.sampled_from(sorted(plausible)).flatmap(client_event_of)
any_events = st.builds(
    lambda type_, fields: json.dumps({"type": type_, **fields}),
    st.sampled_from([*sorted(CLIENT_EVENT_TYPES), "", "x" * 5000, "session.start "]),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=4),
)
frames = st.one_of(
    # Events a client might send come three times as often as each kind of junk.
    *[client_events.map(lambda text: ("text", text))] * 3,
    any_events.map(lambda text: ("text", text)),
    st.text(max_size=300).map(lambda text: ("text", text)),
    st.binary(max_size=MAX_FUZZ_AUDIO_BYTES).map(lambda data: ("binary", data)),
    st.binary(min_size=1, max_size=40).map(lambda data: ("not-utf8", b"\xff\xfe" + data)),
    st.sampled_from([("text", ""), ("binary", b""), ("text", "[" * 4000), ("text", '{"type":' * 2000)]),
)

# ---- what the gateway must answer ----------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    type: str  # "error", "session.started" or "session.ended"
    code: str | None = None  # an error's code
    optional: bool = False  # whether it comes depends on timing (the VAD, a resampler's latency)

    def __str__(self) -> str:
        return f"{self.type}({self.code})" if self.code else self.type


def depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed JSON value."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def parse(raw: str) -> ClientEvent | str:
    """A text frame as the protocol reads it: the event, or the code of the error it gets."""
    if len(raw) > MAX_EVENT_CHARS:
        return "event_too_large"
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return "invalid_json"
    if depth(data) > MAX_EVENT_DEPTH:
        return "invalid_json"
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return "invalid_event"
    if data["type"] not in CLIENT_EVENT_TYPES:
        return "unknown_event"
    try:
        return client_event.validate_python(data)
    except ValidationError:
        return "invalid_event"


@dataclass
class Protocol:
    """The gateway's side of one connection as docs/protocol.md describes it, fed frame by frame."""

    voices: set[str]
    answers: list[Answer] = field(default_factory=list)
    close_code: int | None = None  # set once the gateway must close the connection
    session: bool = False
    rate: int = 16000
    push_to_talk: bool = False
    turn: bool | None = False  # a user turn is open (None: the VAD or a resampler decides)
    typed_turns: int = 0  # text.input events that start a reply

    def error(self, code: str, optional: bool = False) -> None:
        self.answers.append(Answer("error", code, optional))

    def frame(self, kind: str, payload: str | bytes) -> None:
        if kind == "not-utf8":
            # The WebSocket layer fails the connection at once (1007): what the gateway was
            # still about to send for earlier frames may never go out.
            self.answers = [Answer(a.type, a.code, optional=True) for a in self.answers]
            self.close_code = 1007
        elif isinstance(payload, bytes):
            self.audio(payload)
        else:
            self.text(payload)

    def audio(self, frame: bytes) -> None:
        if not self.session:
            self.error("session_not_started")
        elif len(frame) % 2:
            self.error("bad_audio")
        elif len(frame) > self.rate * 2 * MAX_FRAME_MS // 1000:
            self.error("frame_too_large")
        elif frame:
            exact = self.push_to_talk and self.rate == 16000
            self.turn = True if exact else None

    def text(self, raw: str) -> None:
        parsed = parse(raw)
        if isinstance(parsed, str):
            self.error(parsed)
        elif isinstance(parsed, SessionStart):
            self.start(parsed)
        elif not self.session:
            self.error("session_not_started")
        elif isinstance(parsed, TextInput):
            if len(parsed.text.strip()) > MAX_TEXT_CHARS:
                self.error("text_too_long")
            elif parsed.text.strip():
                self.typed_turns += 1
        elif isinstance(parsed, InputCommit):
            if self.turn is not True:  # no turn to end; None: the VAD may have opened one
                self.error("empty_turn", optional=self.turn is None)
            if self.push_to_talk:
                self.turn = False
        elif isinstance(parsed, SessionEnd):
            self.answers.append(Answer("session.ended"))
            self.close_code = 1000
        # A typed turn is answered by a reply; response.cancel and the playback reports by nothing.

    def start(self, start: SessionStart) -> None:
        if self.session:
            self.error("session_already_started")
        elif start.session_id is not None:
            self.error("session_not_found")  # no session was ever made with that id
        elif start.voice is not None and start.voice not in self.voices:
            self.error("unknown_voice")
        else:
            self.answers.append(Answer("session.started"))
            self.session, self.rate = True, start.input_sample_rate
            self.push_to_talk = start.turn_detection == "push_to_talk"


# Events that come from the session's own work (VAD, ASR, replies, keep-alive), not as answers.
UNPROMPTED = ("vad.", "transcript.", "response.")


def clipped(items: list[Any], most: int = 30) -> str:
    return repr(items) if len(items) <= most else f"{items[:most]!r} and {len(items) - most} more"


def check_answers(expected: Protocol, received: list[dict[str, Any]], close_code: int | None) -> None:
    """`received` is `expected`'s answers in order, but for errors held back by the error throttle and counted."""
    shown = f"\nexpected: {clipped([str(a) for a in expected.answers])}\nreceived: {clipped(received)}"
    answers: list[Answer] = []
    held_back = 0
    for message in received:
        assert isinstance(message, dict) and isinstance(message.get("type"), str), shown
        kind = message["type"]
        if kind == "error":
            assert 0 < len(message.get("message", "")) < LONGEST_ERROR, shown
            if message["code"] == "errors_suppressed":
                held_back += message["count"]
            else:
                answers.append(Answer("error", message["code"]))
        elif kind in ("session.started", "session.ended"):
            answers.append(Answer(kind))
        else:
            assert kind == "ping" or kind.startswith(UNPROMPTED), f"unexpected {kind}{shown}"
    # Match in order; what is skipped must be an error (held back) or an answer that may not come.
    todo = iter(expected.answers)
    skipped_errors = skipped_optional = 0
    for answer in answers:
        for wanted in todo:
            if (wanted.type, wanted.code) == (answer.type, answer.code):
                break
            assert wanted.optional or wanted.type == "error", f"no {wanted}{shown}"
            skipped_optional += wanted.optional
            skipped_errors += not wanted.optional
        else:
            raise AssertionError(f"unexpected {answer}{shown}")
    for wanted in todo:
        assert wanted.optional or wanted.type == "error", f"no {wanted}{shown}"
        skipped_optional += wanted.optional
        skipped_errors += not wanted.optional
    # Every error the throttle held back is counted in an `errors_suppressed` (sent at the latest
    # as the connection closes), and the first few always go out.
    if expected.close_code == 1007:  # the connection failed: what was still to be sent is lost
        assert held_back <= skipped_errors + skipped_optional, shown
    else:
        assert skipped_errors <= held_back <= skipped_errors + skipped_optional, (
            f"{skipped_errors} error(s) not sent, {held_back} counted as held back{shown}"
        )
        required = sum(a.type == "error" and not a.optional for a in expected.answers)
        delivered = sum(a.type == "error" for a in answers)
        assert delivered >= min(required, ERRORS_AT_ONCE), shown
    assert close_code == expected.close_code, f"closed with {close_code}{shown}"


async def read_events(ws: websockets.ClientConnection, into: list[dict[str, Any]]) -> None:
    with suppress(websockets.ConnectionClosed):
        async for message in ws:
            if isinstance(message, str):
                into.append(json.loads(message))


async def converse(stack: Stack, sent: Iterable[tuple[str, str | bytes]]) -> Protocol:
    """Send `sent`, then (if the connection is still open) start a session if none and end it; check every answer."""
    expected = Protocol(await known_voices(stack))
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(EXAMPLE_TIMEOUT_S), websockets.connect(stack.ws_url, max_size=None) as ws:
        reader = asyncio.create_task(read_events(ws, received))
        try:
            for kind, payload in sent:
                # A text frame that is not UTF-8 is a protocol violation the server must survive (1007).
                await ws.send(payload, text=True) if kind == "not-utf8" else await ws.send(payload)
                expected.frame(kind, payload)
                if expected.close_code is not None:
                    break
            # Still open: the connection must still work, and end as asked.
            if expected.close_code is None and not expected.session:
                await ws.send(json.dumps(START))
                expected.frame("text", json.dumps(START))
            if expected.close_code is None:
                await ws.send(json.dumps(END))
                expected.frame("text", json.dumps(END))
        except websockets.ConnectionClosed:
            pass  # closed early: the answers and the close code say what went wrong
        await reader
    check_answers(expected, received, ws.close_code)
    return expected


_voices: dict[str, set[str]] = {}


async def known_voices(stack: Stack) -> set[str]:
    if stack.url not in _voices:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            listed = (await http.get("/v1/voices")).json()
        _voices[stack.url] = {voice["id"] for voice in listed["voices"]}
    return _voices[stack.url]


def wav_header(rate: int, channels: int, bits: int, declared: int) -> bytes:
    """A WAV header that may lie about everything (sizes wrap as a 32-bit field would)."""
    u32 = 0xFFFFFFFF
    return b"RIFF" + struct.pack(
        "<I4s4sIHHIIHH4sI",
        (36 + declared) & u32,
        b"WAVE",
        b"fmt ",
        16,
        1,
        channels,
        rate,
        (rate * channels * bits // 8) & u32,
        (channels * bits // 8) & 0xFFFF,
        bits,
        b"data",
        declared,
    )


uploads = st.one_of(
    st.binary(max_size=20_000),
    st.builds(
        lambda header, body: header + body,
        st.builds(
            wav_header,
            st.sampled_from([0, 1, 8000, 16000, 44100, 2**31 - 1]),
            st.sampled_from([0, 1, 2, 255]),
            st.sampled_from([0, 8, 16, 24, 32, 7]),
            st.sampled_from([0, 10, 2**31 - 1, 2**32 - 1]),
        ),
        st.binary(max_size=8000),
    ),
)


def text(frame: dict[str, Any]) -> tuple[str, str]:
    return ("text", json.dumps(frame))


# The corpus: inputs that broke (or would break) a gateway, tried before the generated ones.
CORPUS: list[list[tuple[str, str | bytes]]] = [
    [text({"type": "x" * 30_000})],  # an unknown type is never echoed whole
    [text({"type": "session.start", "input_sample_rate": "fast", "vad": [1] * 5000})],
    [("not-utf8", b"\xff\xfe\xfd")],
    [("text", "[" * 4000)],
    [("binary", b"\x00" * 3)],
    [text({"type": "text.input", "text": "y" * 50_000})],
    [("binary", b"\x00" * 32_002), ("binary", b"\x00" * 320), text({"type": "input.commit"})],
    [text({"type": "session.start"}), text({"type": "session.start"}), text({"type": "input.commit"})],
    [
        text({"type": "session.start", "voice": "nobody"}),
        text({"type": "session.start", "session_id": "sess_" + "0" * 16}),
    ],
    [text({"type": "input.commit"}), text({"type": "response.cancel"}), ("text", '{"type": "text.input"'), text(END)],
    [text(END), ("binary", b"\x00\x00")],
]


@settings(FUZZ, max_examples=100)  # an example takes milliseconds
@given(start=st.booleans(), sent=st.lists(frames, max_size=10))
@example(start=True, sent=CORPUS[0])
@example(start=False, sent=CORPUS[1])
@example(start=True, sent=CORPUS[2])
@example(start=False, sent=CORPUS[3])
@example(start=False, sent=CORPUS[4])
@example(start=True, sent=CORPUS[5])
@example(start=True, sent=CORPUS[6])
@example(start=False, sent=CORPUS[7])
@example(start=False, sent=CORPUS[8])
@example(start=True, sent=CORPUS[9])
@example(start=False, sent=CORPUS[10])
async def test_any_websocket_frames_get_their_answers(stack: Stack, start: bool, sent: list[Any]) -> None:
    expected = await converse(stack, [text(START), *sent] if start else sent)
    for what in {*map(str, expected.answers), *(["typed turn"] if expected.typed_turns else [])}:
        event(what)  # what the inputs covered: pytest --hypothesis-show-statistics
    # However that connection ended, the gateway takes the next one.
    await converse(stack, [text(START), text({"type": "input.commit"})])


@FUZZ
@given(
    body=uploads,
    filename=st.text(max_size=40),
    content_type=st.sampled_from(["audio/wav", "audio/mpeg", "application/octet-stream", "text/plain", "", "x/y"]),
    where=st.sampled_from(["/v1/audio/transcriptions", "/v1/voices"]),
)
async def test_any_upload_gets_a_transcript_or_a_clear_4xx(
    stack: Stack, body: bytes, filename: str, content_type: str, where: str
) -> None:
    try:
        decoded = decode_audio(body, max_bytes=MAX_UPLOAD_BYTES, max_duration_s=MAX_TRANSCRIPTION_S)
    except AudioFileError:
        decoded = None
    form = {"model": "whisper-1"} if where.endswith("transcriptions") else {"name": "fuzz", "transcript": "Hello."}
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as http:
        response = await http.post(where, files={"file": (filename or "f", body, content_type)}, data=form)
        answer = (response.status_code, response.text[:300])
        if response.status_code == 201:  # a voice was made of it: take it away again
            assert (await http.delete(f"/v1/voices/{response.json()['id']}")).status_code == 200
    if where.endswith("transcriptions") and decoded is not None:
        assert response.status_code == 200 and isinstance(response.json()["text"], str), answer
        return
    if where == "/v1/voices" and decoded is not None and 3 <= decoded.duration_s <= 30:
        # Long enough to be a voice: the level and the clipping decide (noise rarely gets here).
        assert response.status_code in (201, 400), answer
        if response.status_code == 201:
            return
    assert response.status_code == 400, answer
    error = response.json()["error"]
    assert error["param"] == "file" and 0 < len(error["message"]) < LONGEST_ERROR, error
    assert error["code"] == ("invalid_audio" if where.endswith("transcriptions") else "invalid_request"), error


async def test_a_flood_of_bad_frames_gets_every_error_counted(stack: Stack) -> None:
    flood: list[tuple[str, str | bytes]] = [
        ("binary", b"\x01") if n % 2 else ("text", "{not json") for n in range(2000)
    ]
    await converse(stack, [text({"type": "session.start"}), *flood])


async def test_a_session_still_answers_a_turn_after_bad_frames(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url) as conv:
        for raw in ("{not json", json.dumps({"type": "x" * 30_000}), "[" * 4000, b"\x00" * 3):
            await conv.send_raw(raw)
        await conv.send_event({"type": "text.input", "text": "Are you all right?"})
        done = await conv.wait_for("response.done", timeout_s=60)
        assert done["status"] == "completed" and conv.received.audio
    codes = [e["code"] for e in conv.received.of_type("error")]
    assert codes == ["invalid_json", "unknown_event", "invalid_json", "bad_audio"], codes
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
        assert (await http.get("/healthz")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and "crashing" not in ready.json(), ready.json()
