"""Locust load test of a Parley stack: conversations, the TTS service over gRPC, and the HTTP API.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:7860            # web UI, all three users
    locust -f loadtests/locustfile.py --headless -u 4 -r 4 -t 2m ConversationUser
    locust -f loadtests/locustfile.py --headless -u 2 -t 1m TtsGrpcUser --tts-address 127.0.0.1:50053
    locust -f loadtests/locustfile.py --headless -u 1 -t 1m RestUser --tags speech
    make loadtest LOADTEST_USERS=4 LOADTEST_TIME=2m                           # against `make run`

Users are picked by class name on the command line or in the web UI (--class-picker); tags pick
tasks within them (a class left with no task would only fail, so name the classes too):

- `ConversationUser` (tag `conversation`): a person talking to `/v1/conversation` with a live
  microphone: 100 ms PCM16 frames at 16 kHz at real-time pace, silence between turns, spoken
  questions (espeak-ng, cached in loadtests/.cache). Each turn waits for the reply's
  `response.done`, then for the reply to finish playing, then thinks 1–3 s. Reports, as
  request type `WS`: `voice_to_voice` (end of speech → first reply audio byte), `turn` (end of
  speech → `response.done`; a failure for a lost turn: an `error`, a failed or cancelled reply,
  an empty transcript, a closed socket or a timeout), `connect` (socket + `session.start`), and a
  failed `error` entry for every `error` event the server sent.
- `TtsGrpcUser` (tag `tts`): `Synthesize` on the TTS service directly, at --tts-address or the
  address the gateway's `/v1/services` lists: `tts_first_audio` and `tts_total`, type `gRPC`.
- `RestUser` (tags `rest`, `speech`, `transcription`): `POST /v1/audio/speech` (`speech_first_byte`,
  `speech_total`) and `POST /v1/audio/transcriptions` of a spoken question (`transcription`).

With API keys on the gateway, give one as --api-key or PARLEY_API_KEY: HTTP requests send it as
`Authorization: Bearer`, and each conversation gets a token from `POST /v1/auth/token` for its
`?token=`, as the browser does. --samples-file writes every request's time as a JSON line
(bench/capacity.py computes exact percentiles from it; Locust's own are rounded to 100 ms above 1 s).
"""

# Locust's event hooks and the generated gRPC stubs are untyped.
# mypy: disallow-untyped-calls=False, disallow-untyped-decorators=False

from __future__ import annotations

import itertools
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import IO, Any, cast

import gevent  # type: ignore[import-untyped]  # no stubs in this venv (types-gevent would add them)
import gevent.lock  # type: ignore[import-untyped]
import grpc
import grpc.experimental.gevent
from locust import HttpUser, User, between, events, tag, task
from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # Locust puts only this file's folder on the path
    sys.path.insert(0, str(ROOT))

from loadtests.clips import SAMPLE_RATE, clip, wav  # noqa: E402
from loadtests.conversation import Conversation, TurnLost  # noqa: E402
from loadtests.endpoints import auth_headers, conversation_url, discover_tts, mint_token  # noqa: E402
from parley.tts.v1 import tts_pb2, tts_pb2_grpc  # noqa: E402
from tests.speech import QUESTIONS  # noqa: E402

# gRPC's C core runs its own threads and polls its own sockets; this hands its completion queue to
# gevent's loop, so a blocking stub call yields to other users instead of freezing the whole process.
# It must run before the first channel exists (this module is imported before any user starts).
grpc.experimental.gevent.init_gevent()

DEFAULT_HOST = "http://127.0.0.1:7860"  # `make run`
LEAD_SILENCE_S = 0.5  # before each question, as in bench/conversation_latency.py
# Assistant-length sentences for the TTS and speech users: a first sentence, then more.
SENTENCES = (
    "The capital of France is Paris, a city on the river Seine.",
    "A week has seven days. Most people work on five of them.",
    "Elephants can recognise themselves in a mirror, which few animals can do.",
    "Warm the pot first, then let the tea steep for about three minutes. Enjoy it while it is hot.",
    "The sky looks blue because air scatters blue sunlight more than red.",
)


@events.init_command_line_parser.add_listener
def _arguments(parser: LocustArgumentParser) -> None:
    # On the parser itself, not a group: only it takes Locust's own options (is_secret).
    parser.add_argument(
        "--api-key",
        env_var="PARLEY_API_KEY",
        default="",
        is_secret=True,
        help="a key of the gateway's PARLEY_GATEWAY_API_KEYS (none: an open gateway)",
    )
    parser.add_argument(
        "--tts-address",
        default="",
        help="host:port of the TTS service's gRPC for TtsGrpcUser (default: from the gateway's /v1/services)",
    )
    parser.add_argument(
        "--turn-timeout", type=float, default=60.0, help="longest wait for a turn's response.done, in seconds"
    )
    parser.add_argument("--samples-file", default="", help="append every request's time as a JSON line here")


def _option(environment: Environment, name: str, default: Any) -> Any:
    """A Parley option; its default when Locust runs as a library without parsed options."""
    return getattr(environment.parsed_options, name, default) if environment.parsed_options else default


def report(
    environment: Environment,
    request_type: str,
    name: str,
    response_time_ms: float,
    length: int = 0,
    exception: BaseException | None = None,
) -> None:
    """One custom entry in Locust's statistics (a success unless `exception`)."""
    environment.events.request.fire(
        request_type=request_type,
        name=name,
        response_time=response_time_ms,
        response_length=length,
        exception=exception,
        context={},
    )


_samples: IO[str] | None = None


@events.init.add_listener
def _open_samples(environment: Environment, **_: Any) -> None:
    global _samples
    path = _option(environment, "samples_file", "")
    if path:
        _samples = open(path, "a", buffering=1)  # noqa: SIM115 — open for the whole run, closed at quitting


@events.request.add_listener
def _record_sample(
    request_type: str, name: str, response_time: float, exception: BaseException | None = None, **_: Any
) -> None:
    if _samples is not None:
        sample = {"type": request_type, "name": name, "ms": round(response_time, 1), "ok": exception is None}
        _samples.write(json.dumps({**sample, "at": round(time.time(), 3), "error": str(exception or "")}) + "\n")


@events.quitting.add_listener
def _close_samples(**_: Any) -> None:
    if _samples is not None:
        _samples.close()


# espeak-ng runs once per question per process, not once per user; greenlets wait for the first maker.
_clips: dict[str, bytes] = {}
_clips_lock = gevent.lock.BoundedSemaphore()


def spoken(text: str, host: str, api_key: str) -> bytes:
    with _clips_lock:
        if text not in _clips:
            _clips[text] = clip(text, host, api_key)
        return _clips[text]


@events.init.add_listener
def _make_clips(environment: Environment, **_: Any) -> None:
    """Every question's clip, before any user starts: espeak-ng is forked from this process, and a fork
    while gRPC's threads are busy (TtsGrpcUser) can kill the child (seen: espeak-ng died with SIGABRT)."""
    try:
        for question in QUESTIONS:
            spoken(question, environment.host or DEFAULT_HOST, _option(environment, "api_key", ""))
    except Exception:  # no espeak-ng and no gateway yet (a web UI run): the users will report it
        logging.getLogger(__name__).exception("could not make the spoken questions now")


_user_numbers = itertools.count()


class ConversationUser(User):
    """A person talking to the assistant with a live microphone (see the module's docstring)."""

    host = DEFAULT_HOST
    weight = 2
    # Think time after the reply has finished playing; the microphone sends silence meanwhile.
    wait_time = between(1.0, 3.0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.api_key: str = _option(environment, "api_key", "")
        self.turn_timeout_s: float = _option(environment, "turn_timeout", 60.0)
        self.conversation: Conversation | None = None
        # Users start at different questions, so at any moment they ask different things.
        offset = next(_user_numbers) % len(QUESTIONS)
        self.questions = itertools.cycle(QUESTIONS[offset:] + QUESTIONS[:offset])

    def on_start(self) -> None:
        self.connect()

    def on_stop(self) -> None:
        if self.conversation is not None:
            if self.conversation.max_lag_s > 0.2:  # the load generator itself was short of CPU: timings suffer
                logging.getLogger(__name__).warning(
                    "a microphone fell %.0f ms behind real time", self.conversation.max_lag_s * 1000
                )
            self.conversation.close()
            self.conversation = None

    def connect(self) -> bool:
        assert self.host is not None
        started = time.perf_counter()
        conversation: Conversation | None = None
        try:
            token = mint_token(self.host, self.api_key) if self.api_key else ""
            conversation = Conversation(conversation_url(self.host, token))
            conversation.open()
        except Exception as exc:
            if conversation is not None:
                conversation.close()
            report(self.environment, "WS", "connect", (time.perf_counter() - started) * 1000, exception=exc)
            return False
        report(self.environment, "WS", "connect", (time.perf_counter() - started) * 1000)
        self.conversation = conversation
        return True

    @tag("conversation")
    @task
    def speak(self) -> None:
        if self.conversation is None or self.conversation.closed is not None:
            self.on_stop()
            if not self.connect():
                return
        assert self.conversation is not None and self.host is not None
        question = next(self.questions)
        started = time.perf_counter()
        try:
            pcm = bytes(int(LEAD_SILENCE_S * SAMPLE_RATE) * 2) + spoken(question, self.host, self.api_key)
            turn = self.conversation.turn(pcm, self.turn_timeout_s)
        except Exception as exc:  # TurnLost, a broken socket, no clip: a failed turn in the statistics, not a crash
            if not isinstance(exc, TurnLost | ConnectionError | TimeoutError):
                logging.getLogger(__name__).exception("turn failed")
            report(self.environment, "WS", "turn", (time.perf_counter() - started) * 1000, exception=exc)
            self._report_errors()
            return
        report(self.environment, "WS", "voice_to_voice", turn.voice_to_voice_ms)
        report(self.environment, "WS", "turn", turn.turn_ms, length=turn.reply_audio_bytes)
        self._report_errors()
        # Speaking before the reply has played would be a barge-in: a person listens first.
        gevent.sleep(max(0.0, turn.playback_end - time.perf_counter()))

    def _report_errors(self) -> None:
        assert self.conversation is not None
        for error in self.conversation.errors():
            exc = RuntimeError(f"{error.get('code')}: {error.get('message')}")
            report(self.environment, "WS", "error", 0.0, exception=exc)


class TtsGrpcUser(User):
    """A gRPC client of the TTS service: one `Synthesize` stream at a time, as a script would call it."""

    host = DEFAULT_HOST
    weight = 1
    wait_time = between(0.5, 2.0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.api_key: str = _option(environment, "api_key", "")
        self.address: str = _option(environment, "tts_address", "")
        self.channel: grpc.Channel | None = None
        self.stub: Any = None

    def on_stop(self) -> None:
        if self.channel is not None:
            self.channel.close()

    def _connect(self) -> None:
        if self.stub is None:
            assert self.host is not None
            # Discovered here, not in on_start: a failure is then a reported failure, not a dead user.
            address = self.address or discover_tts(self.host, self.api_key)
            self.channel = grpc.insecure_channel(address)
            self.stub = tts_pb2_grpc.TextToSpeechStub(self.channel)

    @tag("tts")
    @task
    def synthesize(self) -> None:
        started = time.perf_counter()
        first_audio: float | None = None
        size = 0
        try:
            self._connect()
            request = tts_pb2.SynthesizeRequest(text=random.choice(SENTENCES), sample_rate=24000)
            for chunk in self.stub.Synthesize(request, timeout=60):
                if first_audio is None and chunk.pcm:
                    first_audio = time.perf_counter()
                size += len(chunk.pcm)
            if first_audio is None:
                raise RuntimeError("Synthesize ended without audio")
        except Exception as exc:  # grpc.RpcError, no TTS instance to discover: a failure in the statistics
            report(self.environment, "gRPC", "tts_total", (time.perf_counter() - started) * 1000, exception=exc)
            return
        report(self.environment, "gRPC", "tts_first_audio", (first_audio - started) * 1000)
        report(self.environment, "gRPC", "tts_total", (time.perf_counter() - started) * 1000, length=size)


class RestUser(HttpUser):
    """A client of the OpenAI-compatible HTTP API: speech (streamed) and transcriptions."""

    host = DEFAULT_HOST
    weight = 1
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        self.client.headers.update(auth_headers(_option(self.environment, "api_key", "")))

    @tag("rest", "speech")
    @task
    def speech(self) -> None:
        body = {"model": "tts-1", "voice": "", "input": random.choice(SENTENCES), "response_format": "pcm"}
        started = time.perf_counter()
        first_byte: float | None = None
        size = 0
        with self.client.post(
            "/v1/audio/speech", json=body, stream=True, catch_response=True, name="speech_total"
        ) as response:
            if response.status_code == 200:
                for piece in response.iter_content(chunk_size=None):
                    if piece and first_byte is None:
                        first_byte = time.perf_counter()
                    size += len(piece)
            # Locust timed only the headers (stream=True); the entry should cover the whole body.
            meta = cast(dict[str, Any], response.request_meta)  # a dict, typed read-only; reported at the block's end
            meta["response_time"] = (time.perf_counter() - started) * 1000
            meta["response_length"] = size
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif first_byte is None:
                response.failure("no audio")
        if first_byte is not None:
            report(self.environment, "POST", "speech_first_byte", (first_byte - started) * 1000)

    @tag("rest", "transcription")
    @task
    def transcription(self) -> None:
        assert self.host is not None
        question = random.choice(QUESTIONS)
        # Made at init (_make_clips), so this only reads the cache.
        upload = wav(spoken(question, self.host, _option(self.environment, "api_key", "")))
        with self.client.post(
            "/v1/audio/transcriptions",
            files={"file": ("question.wav", upload, "audio/wav")},
            data={"model": "whisper-1"},
            catch_response=True,
            name="transcription",
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif not str(response.json().get("text", "")).strip():
                response.failure(f"empty transcript of {question!r}")
