"""gRPC clients calling the TTS service directly, knowing only its address."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from tests.stack import Stack

pytestmark = pytest.mark.integration


async def test_synthesize_streams_audible_speech(stack: Stack) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['tts']}") as channel:
        tts = tts_pb2_grpc.TextToSpeechStub(channel)
        voices = await tts.ListVoices(tts_pb2.ListVoicesRequest())
        assert voices.default_voice in {v.id for v in voices.voices}
        chunks = [
            chunk
            async for chunk in tts.Synthesize(
                tts_pb2.SynthesizeRequest(text="Hello from Parley. This is a test.", sample_rate=16000)
            )
        ]
        assert len(chunks) > 1, "audio should stream in several chunks"
        assert {c.sample_rate for c in chunks} == {16000}
        audio = np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2") / 32768.0
        assert 1.0 < audio.size / 16000 < 6.0
        assert np.sqrt(np.mean(audio**2)) > 0.02

        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            async for _ in tts.Synthesize(tts_pb2.SynthesizeRequest(text="hi", voice="nobody")):
                pass
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as empty:
            async for _ in tts.Synthesize(tts_pb2.SynthesizeRequest(text="   ")):
                pass
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("kind", ["vad", "asr", "llm", "tts"])
async def test_every_service_serves_health_and_reflection(stack: Stack, kind: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports[kind]}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in reflection.ServerReflectionInfo(iter([request])):
            names = {s.name for s in answer.list_services_response.service}
            assert any(name.startswith(f"parley.{kind}.v1.") for name in names), names
            break
