"""A voice goes only to TTS instances whose engines can speak it (scripted TTS servers over real gRPC)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import pytest

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.registry import InstanceRecord
from parley.testing import grpc_server
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_gateway.api.errors import from_service
from parley_gateway.config import DiscoverySettings, ModelServiceSettings
from parley_gateway.protocol import ErrorCode
from parley_gateway.routing.discovery import Instance, ServiceDirectory
from parley_gateway.routing.model_services import GrpcServices, ServiceError

CLONED = "ana-000001"


class ScriptedTts(tts_pb2_grpc.TextToSpeechServicer):
    """Lists voices as a real instance running `engines` does, and records what it was asked to speak."""

    def __init__(self, engines: list[str]) -> None:
        self.engines = engines
        self.spoken: list[str] = []  # "<method> <voice>"

    async def ListVoices(  # noqa: N802
        self, request: tts_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.ListVoicesResponse:
        cloners = [e for e in self.engines if e == "fireredtts2"]
        voices = [tts_pb2.Voice(id="joe", engine="piper", engines=["piper"])] if "piper" in self.engines else []
        voices.append(tts_pb2.Voice(id=CLONED, cloned=True, engines=cloners))  # a Piper-only one lists no engine
        engines = [tts_pb2.Engine(name=e, cloning=e in cloners) for e in self.engines]
        return tts_pb2.ListVoicesResponse(voices=voices, default_voice="joe", engines=engines)

    async def _refuse_what_it_cannot(self, voice: str, context: grpc.aio.ServicerContext) -> None:
        if voice == CLONED and "fireredtts2" not in self.engines:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "cloned voices need the fireredtts2 engine")

    async def Synthesize(  # noqa: N802
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[AudioChunk]:
        self.spoken.append(f"Synthesize {request.voice}")
        await self._refuse_what_it_cannot(request.voice, context)
        yield AudioChunk(pcm=b"\0\0" * 100, sample_rate=24000)

    async def SynthesizeDialogue(  # noqa: N802
        self, request: tts_pb2.DialogueRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.DialogueResponse]:
        self.spoken.append(f"SynthesizeDialogue {','.join(request.voices.values())}")
        for voice in request.voices.values():
            await self._refuse_what_it_cannot(voice, context)
        yield tts_pb2.DialogueResponse(started=tts_pb2.DialogueStarted(turns_total=1, sample_rate=24000))

    async def Speak(  # noqa: N802
        self, requests: AsyncIterator[tts_pb2.SpeakRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SpeakResponse]:
        first = await anext(aiter(requests))
        self.spoken.append(f"Speak {first.start.voice}")
        await self._refuse_what_it_cannot(first.start.voice, context)
        async for request in requests:
            if request.end_of_text:
                break
        yield tts_pb2.SpeakResponse(audio=AudioChunk(pcm=b"\0\0" * 100, sample_rate=24000), piece=0)


def directory_of(*instances: tuple[str, str, str, int]) -> ServiceDirectory:
    """(id, address, engines, active) per instance, all ready and SERVING."""
    directory = ServiceDirectory(nc=None, settings=DiscoverySettings(1, 0.1, 3, 300))  # type: ignore[arg-type]
    for instance_id, address, engines, active in instances:
        record = InstanceRecord(
            id=instance_id, kind="tts", address=address, version="0", engine=engines, ready=True, active=active,
            capacity=4,
        )  # fmt: skip
        directory.instances["tts"][instance_id] = Instance(record, last_seen=time.monotonic(), serving=True)
    return directory


async def pieces() -> AsyncIterator[str]:
    yield "Hello there."


async def test_a_cloned_voice_goes_only_to_an_instance_that_clones_and_none_left_is_voice_unavailable() -> None:
    piper, both = ScriptedTts(["piper"]), ScriptedTts(["piper", "fireredtts2"])
    async with (
        grpc_server(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(piper, s)) as piper_address,
        grpc_server(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(both, s)) as both_address,
    ):
        # The Piper-only instance is idle, the other busy: least-loaded routing alone would pick Piper.
        directory = directory_of(("p", piper_address, "piper", 0), ("b", both_address, "piper,fireredtts2", 3))
        services = GrpcServices(directory, ModelServiceSettings(first_answer_timeout_s=5, idle_timeout_s=5))
        try:
            # Every instance's list, merged: the cloned voice is spoken by fireredtts2 (somewhere).
            assert await services.voices() == {"joe": ["piper"], CLONED: ["fireredtts2"]}
            assert await services.tts_engines([CLONED]) == {"fireredtts2"}
            assert await services.tts_engines(["joe"], engine="fireredtts2") == {"fireredtts2"}
            for _ in range(3):
                assert [c async for c in services.synthesize(tts_pb2.SynthesizeRequest(text="Hi.", voice=CLONED))]
                start = tts_pb2.SpeakStart(voice=CLONED, conversation_id="c1")
                assert [r async for r in services.speak(start, pieces, lambda: None)]
                dialogue = tts_pb2.DialogueRequest(script="[S1] Hi.", voices={1: CLONED})
                assert [r async for r in services.dialogue(dialogue)]
            # An engine named in the request is routed the same way, whatever the voice.
            named = tts_pb2.SynthesizeRequest(text="Hi.", voice="joe", engine="fireredtts2")
            assert [c async for c in services.synthesize(named)]
            assert piper.spoken == []
            assert both.spoken.count(f"Speak {CLONED}") == 3 and both.spoken.count(f"Synthesize {CLONED}") == 3
            # A built-in Piper voice still goes to the least-loaded instance.
            assert [c async for c in services.synthesize(tts_pb2.SynthesizeRequest(text="Hi.", voice="joe"))]
            assert piper.spoken == ["Synthesize joe"]

            # The cloning instance stops: at once voice_unavailable, never Piper's refusal.
            directory.instances["tts"]["b"].stopping = True
            for request in (
                services.synthesize(tts_pb2.SynthesizeRequest(text="Hi.", voice=CLONED)),
                services.speak(tts_pb2.SpeakStart(voice=CLONED), pieces, lambda: None),
                services.dialogue(tts_pb2.DialogueRequest(script="[S1] Hi.", voices={1: CLONED})),
                services.synthesize(named),
            ):
                started = time.monotonic()
                with pytest.raises(ServiceError) as refused:
                    [_ async for _ in request]
                assert refused.value.code is ErrorCode.VOICE_UNAVAILABLE, refused.value.message
                assert "fireredtts2" in refused.value.message and time.monotonic() - started < 1
            assert piper.spoken == ["Synthesize joe"]
            # Over HTTP: a 400 with the same code.
            error = from_service(refused.value)
            assert (error.status, error.code) == (400, "voice_unavailable")
            # Once the voice lists refresh (only Piper answers now), the check says why as well.
            assert await services.voices(fresh=True) == {"joe": ["piper"], CLONED: []}
            with pytest.raises(ServiceError, match="cloned voice") as refused:
                await services.tts_engines([CLONED])
            assert refused.value.code is ErrorCode.VOICE_UNAVAILABLE
        finally:
            await directory.close()


async def test_voices_of_different_engines_in_one_dialogue_are_left_to_the_instance_to_refuse() -> None:
    both = ScriptedTts(["piper", "fireredtts2"])
    async with grpc_server(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(both, s)) as address:
        directory = directory_of(("b", address, "piper,fireredtts2", 0))
        services = GrpcServices(directory, ModelServiceSettings(first_answer_timeout_s=5, idle_timeout_s=5))
        try:
            assert await services.tts_engines(["joe", CLONED]) == frozenset()
            assert await services.tts_engines(["nobody-knows"]) == frozenset()  # the instance says NOT_FOUND
            assert await services.tts_engines([]) == frozenset()
        finally:
            await directory.close()
