"""Calls to the model services, routed by the directory, with fail-over and deadlines.

`ModelServices` is what a conversation needs from the model services; the
session gets one injected (`GrpcServices` here, fakes in unit tests).

Fail-over: a stream whose instance is gone (UNAVAILABLE) or full
(RESOURCE_EXHAUSTED) before it has answered is retried on another instance;
its request audio is replayed from the start (audio requests come from a
factory for that reason). Once a reply has flowed a failure is reported to the
session instead (replaying half a reply would repeat audio the user heard).
gRPC's own retries never apply once response headers arrived, hence this layer.

A voice goes only where it can be spoken: `tts_engines` is the one place that
decides which engines a TTS request needs (the engine it names, else those that
speak its voices, from every instance's ListVoices), and the request is routed
only to an instance running one of them. With none running, the caller gets
`voice_unavailable` at once, never a refusal from an instance that lacks the engine.

Deadlines are per wait for the next message, never per whole call: a long
reply or a long utterance is fine, a silent service is not. A message is owed
from the moment a request is complete (the LLM and TTS requests at once; an
ASR stream once its end marker was sent; VAD events never): the first must
come within `first_answer_timeout_s` (which covers waiting in a busy
instance's queue), each next one within `idle_timeout_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

import grpc

from parley.asr.v1 import asr_pb2, asr_pb2_grpc
from parley.audio.v1.audio_pb2 import AudioChunk
from parley.llm.v1 import llm_pb2, llm_pb2_grpc
from parley.refusals import refusal_reason
from parley.registry import DRAINING_TRAILER
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley.vad.v1 import vad_pb2, vad_pb2_grpc
from parley_gateway.config import ModelServiceSettings
from parley_gateway.protocol import ErrorCode
from parley_gateway.routing.discovery import Instance, NoInstance, ServiceDirectory
from parley_gateway.routing.retry import DEFAULT_POLICY, RetryPolicy

Message = TypeVar("Message")
Metadata = tuple[tuple[str, str], ...]
AudioRequests = Callable[[], AsyncIterable[AudioChunk]]
TextRequests = Callable[[], AsyncIterable[str]]
AFFINITY_KEPT = 1024  # conversations whose TTS instance is remembered
# Re-check this often whether a message became owed while waiting for one.
OWED_CHECK_S = 0.25
VOICES_CACHE_S = 10.0
# What a cloned voice needs when no instance that clones is up to say so (the only cloning engine).
CLONING_HINT = "cloning needs the fireredtts2 engine (PARLEY_TTS_ENGINES=piper,fireredtts2, on a GPU)"


def _draining(exc: grpc.aio.AioRpcError) -> bool:
    """The instance refused because it is stopping (it finishes its streams; it did not crash)."""
    return any(key == DRAINING_TRAILER for key, _ in exc.trailing_metadata() or ())


class ServiceError(Exception):
    """A model service call that failed; `status` and `detail` are the service's own, when it answered.

    `retryable`: another instance could take the call over (this one went away or is full);
    the caller decides whether that is worth it (a reply half spoken is, from its cut).
    `refused_for`: the reason the service named for refusing (parley.refusals), or "".
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        status: grpc.StatusCode | None = None,
        detail: str = "",
        retryable: bool | None = None,
        refused_for: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.detail = detail or message
        self.retryable = RetryPolicy.retryable(status) if retryable is None else retryable
        self.refused_for = refused_for


class ModelServices(Protocol):
    """What a conversation asks of the model services."""

    policy: RetryPolicy  # how callers fail over what this layer cannot

    def detect(self, audio: AudioRequests, metadata: Metadata) -> AsyncIterator[vad_pb2.VadEvent]: ...

    def transcribe(
        self, audio: AudioRequests, metadata: Metadata, owed_since: Callable[[], float | None]
    ) -> AsyncIterator[asr_pb2.Transcript]:
        """`owed_since`: when the end marker was sent (time.monotonic), None before."""
        ...

    def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]: ...

    def synthesize(self, request: tts_pb2.SynthesizeRequest) -> AsyncIterator[AudioChunk]: ...

    def speak(
        self, start: tts_pb2.SpeakStart, pieces: TextRequests, owed_since: Callable[[], float | None]
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        """One reply spoken while it is written, on one TTS instance (the conversation's, when it can)."""
        ...

    async def voices(self, fresh: bool = False) -> dict[str, list[str]] | None:
        """Voice id -> the engines that can speak it (empty: none running can); None when no TTS instance can say.

        Cached for a few seconds unless `fresh` (a voice created a moment ago is not in the cache yet).
        """
        ...

    async def voice_list(self) -> tts_pb2.ListVoicesResponse | None:
        """Every running TTS instance's voices, merged (their languages included); None when none can say.

        From the same few-seconds cache as `voices`.
        """
        ...


def _always_owed() -> Callable[[], float | None]:
    started = time.monotonic()
    return lambda: started


def _never_owed() -> float | None:
    return None


class GrpcServices:
    def __init__(
        self, directory: ServiceDirectory, settings: ModelServiceSettings, policy: RetryPolicy = DEFAULT_POLICY
    ) -> None:
        self.directory = directory
        self.first_answer_timeout_s = settings.first_answer_timeout_s
        self.idle_timeout_s = settings.idle_timeout_s
        self.policy = policy
        self._voices: tuple[float, tts_pb2.ListVoicesResponse] | None = None
        # conversation id -> the TTS instance that spoke its last reply (it keeps the conversation's context)
        self._tts_affinity: OrderedDict[str, str] = OrderedDict()

    def _error(self, kind: str, exc: grpc.aio.AioRpcError, answered: bool) -> ServiceError:
        code = exc.code()
        if code == grpc.StatusCode.NOT_FOUND and kind == "tts":
            return ServiceError(ErrorCode.UNKNOWN_VOICE, exc.details() or "unknown voice", code, exc.details() or "")
        if code == grpc.StatusCode.UNAVAILABLE and answered:
            return ServiceError(
                ErrorCode.SERVICE_CRASHED, f"the {kind} service went away mid-stream: {exc.details()}", code
            )
        if self.policy.retryable(code):
            return ServiceError(ErrorCode.SERVICE_UNAVAILABLE, f"{kind} service: {exc.details()}", code)
        return ServiceError(
            ErrorCode.SERVICE_ERROR,
            f"{kind} service: {code.name}: {exc.details()}",
            code,
            exc.details() or "",
            refused_for=refusal_reason(exc.trailing_metadata()),
        )

    def _unavailable(self, kind: str, tried: int) -> ServiceError:
        health = self.directory.health[kind]
        if health.troubled():
            return ServiceError(ErrorCode.SERVICE_CRASHED, f"no {kind} service is available: {health.summary(kind)}")
        if tried:
            return ServiceError(ErrorCode.SERVICE_UNAVAILABLE, f"every {kind} instance is gone or full")
        return ServiceError(ErrorCode.SERVICE_UNAVAILABLE, f"no {kind} service is available")

    async def _stream(
        self,
        kind: str,
        open_call: Callable[[grpc.aio.Channel], Any],
        owed_since: Callable[[], float | None],
        retry_after_answer: Callable[[Any], bool] = lambda _: False,
        affinity: OrderedDict[str, str] | None = None,
        affinity_key: str = "",
        engines: frozenset[str] = frozenset(),
    ) -> AsyncIterator[Any]:
        """Messages of one call, failing over to another instance while nothing was answered yet.

        With an `affinity` map and key, the instance that served the key last is preferred (when it
        has room), and whichever serves it now is remembered. With `engines`, only instances that
        run one of them are tried.
        """
        tried: set[str] = set()
        remember = affinity is not None and bool(affinity_key)
        while True:
            prefer = affinity.get(affinity_key, "") if affinity is not None and remember else ""
            try:
                async with self.directory.lease(
                    kind, exclude=frozenset(tried), prefer=prefer, engines=engines
                ) as instance:
                    assert instance.channel is not None
                    if affinity is not None and remember:
                        affinity[affinity_key] = instance.record.id
                        affinity.move_to_end(affinity_key)
                        while len(affinity) > AFFINITY_KEPT:
                            affinity.popitem(last=False)
                    call = open_call(instance.channel)
                    answered = False
                    try:
                        async for message in self._with_deadlines(kind, call, owed_since):
                            answered = answered or not retry_after_answer(message)
                            yield message
                        return
                    except grpc.aio.AioRpcError as exc:
                        if not self.policy.retryable(exc.code()) or answered:
                            raise self._error(kind, exc, answered) from None
                        if _draining(exc):
                            instance.stopping = True
                        elif exc.code() == grpc.StatusCode.UNAVAILABLE:
                            self.directory.forget(kind, instance.record.id, "connection refused")
                        tried.add(instance.record.id)
                    finally:
                        # Cancelling here is what stops the service's work on barge-in.
                        call.cancel()
            except NoInstance as exc:
                if exc.engines:
                    raise self._engine_unavailable(exc.engines) from None
                raise self._unavailable(kind, len(tried)) from None

    def _engine_unavailable(self, engines: frozenset[str], voice: str = "") -> ServiceError:
        names = " or ".join(sorted(engines))
        what = f"the voice {voice!r} needs" if voice else "this needs"
        message = f"{what} the {names} engine and no TTS instance running it is available"
        health = self.directory.health["tts"]
        if health.troubled():
            message += f"; {health.summary('tts')}"
        return ServiceError(ErrorCode.VOICE_UNAVAILABLE, message)

    async def tts_engines(self, voices: Iterable[str], engine: str = "") -> frozenset[str]:
        """The engines a TTS request must go to: the one it names, else those that speak all its `voices`.

        Empty: any instance will do (no voice, or one no instance knows: the instance answers NOT_FOUND).
        Raises `voice_unavailable` when no instance running now can speak a voice or runs the engine.
        """
        wanted = [voice for voice in voices if voice]
        if engine:
            required = frozenset({engine})
        elif wanted:
            required = await self._speaking(wanted)
        else:
            return frozenset()
        if required and not self.directory.ready("tts", required) and self.directory.ready("tts"):
            raise self._engine_unavailable(required, wanted[0] if len(wanted) == 1 and not engine else "")
        return required

    async def _speaking(self, wanted: list[str]) -> frozenset[str]:
        """The engines that speak every one of `wanted` somewhere (empty when unknown, or they need different ones)."""
        known = await self.voices()
        if known is not None and any(not known.get(voice) for voice in wanted):
            known = await self.voices(fresh=True)  # made a moment ago, or its engine is back
        if known is None:
            return frozenset()  # no instance could say: one will answer for itself
        for voice in wanted:
            if voice in known and not known[voice]:
                raise ServiceError(
                    ErrorCode.VOICE_UNAVAILABLE,
                    f"{voice!r} is a cloned voice and no running TTS engine can clone: {CLONING_HINT}",
                )
        engines = [frozenset(known[voice]) for voice in wanted if voice in known]
        # Voices of different engines in one dialogue: no filter, the instance explains the mix.
        return frozenset.intersection(*engines) if engines else frozenset()

    async def _tts_stream(
        self,
        voices: Iterable[str],
        engine: str,
        open_call: Callable[[grpc.aio.Channel], Any],
        owed_since: Callable[[], float | None],
        **options: Any,
    ) -> AsyncIterator[Any]:
        """A TTS call on an instance that can speak its voices (`tts_engines`), with fail-over."""
        engines = await self.tts_engines(voices, engine)
        async for message in self._stream("tts", open_call, owed_since, engines=engines, **options):
            yield message

    async def _with_deadlines(
        self, kind: str, call: AsyncIterable[Any], owed_since: Callable[[], float | None]
    ) -> AsyncIterator[Any]:
        messages = aiter(call)
        last_answer: float | None = None
        while True:
            following = asyncio.ensure_future(anext(messages))
            try:
                while True:
                    done, _ = await asyncio.wait({following}, timeout=OWED_CHECK_S)
                    if done:
                        break
                    since = owed_since()
                    if since is None:
                        continue
                    if last_answer is None:
                        limit, waited = self.first_answer_timeout_s, time.monotonic() - since
                    else:
                        limit, waited = self.idle_timeout_s, time.monotonic() - max(since, last_answer)
                    if waited > limit:
                        raise ServiceError(
                            ErrorCode.SERVICE_TIMEOUT, f"the {kind} service sent nothing for {limit:g} s"
                        )
            finally:
                following.cancel()
            try:
                message = following.result()
            except StopAsyncIteration:
                return
            last_answer = time.monotonic()
            yield message

    def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        return self._stream("llm", lambda ch: llm_pb2_grpc.ConversationStub(ch).Generate(request), _always_owed())

    def synthesize(self, request: tts_pb2.SynthesizeRequest) -> AsyncIterator[AudioChunk]:
        return self._tts_stream(
            [request.voice],
            request.engine,
            lambda ch: tts_pb2_grpc.TextToSpeechStub(ch).Synthesize(request),
            _always_owed(),
        )

    def dialogue(self, request: tts_pb2.DialogueRequest) -> AsyncIterator[tts_pb2.DialogueResponse]:
        return self._tts_stream(
            request.voices.values(),
            request.engine,
            lambda ch: tts_pb2_grpc.TextToSpeechStub(ch).SynthesizeDialogue(request),
            _always_owed(),
        )

    def speak(
        self, start: tts_pb2.SpeakStart, pieces: TextRequests, owed_since: Callable[[], float | None]
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        def open_call(channel: grpc.aio.Channel) -> Any:
            async def requests() -> AsyncIterator[tts_pb2.SpeakRequest]:
                # Replayed from the first piece if the call moves to another instance.
                yield tts_pb2.SpeakRequest(start=start)
                async for text in pieces():
                    yield tts_pb2.SpeakRequest(text=text)
                yield tts_pb2.SpeakRequest(end_of_text=True)

            return tts_pb2_grpc.TextToSpeechStub(channel).Speak(requests())

        return self._tts_stream(
            [start.voice],
            start.engine,
            open_call,
            owed_since,
            affinity=self._tts_affinity,
            affinity_key=start.conversation_id,
        )

    def transcribe(
        self, audio: AudioRequests, metadata: Metadata, owed_since: Callable[[], float | None]
    ) -> AsyncIterator[asr_pb2.Transcript]:
        # Partials do not count as an answer: until the final, another instance can start over.
        return self._stream(
            "asr",
            lambda ch: asr_pb2_grpc.SpeechRecognitionStub(ch).Transcribe(audio(), metadata=metadata),
            owed_since,
            retry_after_answer=lambda result: not result.is_final,
        )

    def detect(self, audio: AudioRequests, metadata: Metadata) -> AsyncIterator[vad_pb2.VadEvent]:
        return self._stream(
            "vad", lambda ch: vad_pb2_grpc.VoiceActivityStub(ch).Detect(audio(), metadata=metadata), _never_owed
        )

    async def tts_unary(self, call: Callable[[Any], Awaitable[Message]], timeout_s: float) -> Message:
        """One unary TTS call (voices) on the least-loaded instance, another if it is gone or full."""
        tried: set[str] = set()
        while True:
            try:
                async with self.directory.lease("tts", exclude=frozenset(tried)) as instance:
                    assert instance.channel is not None
                    try:
                        return await asyncio.wait_for(call(tts_pb2_grpc.TextToSpeechStub(instance.channel)), timeout_s)
                    except TimeoutError:
                        raise ServiceError(
                            ErrorCode.SERVICE_TIMEOUT, f"the tts service did not answer in {timeout_s:g} s"
                        ) from None
                    except grpc.aio.AioRpcError as exc:
                        if not self.policy.retryable(exc.code()):
                            raise self._error("tts", exc, answered=False) from None
                        tried.add(instance.record.id)
            except NoInstance:
                raise self._unavailable("tts", len(tried)) from None

    async def list_voices(self, timeout_s: float) -> tts_pb2.ListVoicesResponse:
        """Every ready TTS instance's voices and engines, merged: a voice lists each engine that speaks it anywhere.

        Instances differ (a Piper-only one lists a cloned voice with no engine); one instance's
        answer would depend on which was least loaded. Raises when none answers.
        """
        instances = self.directory.ready("tts")
        if not instances:
            raise self._unavailable("tts", 0)

        async def ask(instance: Instance) -> tts_pb2.ListVoicesResponse:
            stub = tts_pb2_grpc.TextToSpeechStub(self.directory.channel(instance))
            answer: tts_pb2.ListVoicesResponse = await stub.ListVoices(tts_pb2.ListVoicesRequest(), timeout=timeout_s)
            return answer

        results = await asyncio.gather(*(ask(i) for i in instances), return_exceptions=True)
        answers = [r for r in results if isinstance(r, tts_pb2.ListVoicesResponse)]
        if not answers:
            failed = next((r for r in results if isinstance(r, grpc.aio.AioRpcError)), None)
            raise self._error("tts", failed, answered=False) if failed else self._unavailable("tts", len(instances))
        return _merge_voices(answers)

    async def voices(self, fresh: bool = False) -> dict[str, list[str]] | None:
        answer = await self._voice_listing(fresh)
        return None if answer is None else {v.id: list(v.engines) for v in answer.voices}

    async def voice_list(self) -> tts_pb2.ListVoicesResponse | None:
        return await self._voice_listing(fresh=False)

    async def _voice_listing(self, fresh: bool) -> tts_pb2.ListVoicesResponse | None:
        now = time.monotonic()
        if not fresh and self._voices is not None and now - self._voices[0] < VOICES_CACHE_S:
            return self._voices[1]
        try:
            answer = await self.list_voices(self.idle_timeout_s)
        except ServiceError:
            return None
        self._voices = (now, answer)
        return answer


def _merge_voices(answers: list[tts_pb2.ListVoicesResponse]) -> tts_pb2.ListVoicesResponse:
    """One voice list from several instances' (the description of one that can speak a voice wins)."""
    voices: dict[str, tts_pb2.Voice] = {}
    engines: dict[str, tts_pb2.Engine] = {}
    for answer in answers:
        for voice in answer.voices:
            seen = voices.get(voice.id)
            if seen is None or (voice.engines and not seen.engines):
                voices[voice.id] = seen = tts_pb2.Voice()
                seen.CopyFrom(voice)
            else:
                seen.engines.extend(e for e in voice.engines if e not in seen.engines)
        for engine in answer.engines:
            engines.setdefault(engine.name, engine)
    return tts_pb2.ListVoicesResponse(
        voices=list(voices.values()), default_voice=answers[0].default_voice, engines=list(engines.values())
    )
