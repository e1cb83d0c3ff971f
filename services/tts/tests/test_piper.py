"""The real Piper voice through the servicer over real gRPC."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from parley.server import ServiceRuntime
from parley.testing import serving
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.engines.base import UnknownVoice
from parley_tts.engines.piper import PiperSynthesizer
from parley_tts.servicer import TextToSpeechServicer


@pytest.fixture(scope="module")
def synthesizer() -> PiperSynthesizer:
    return PiperSynthesizer(None, 1)


def test_engine_speaks_a_sentence_at_a_time(synthesizer: PiperSynthesizer) -> None:
    [voice] = synthesizer.voices()
    assert (voice.id, voice.sample_rate, voice.language) == ("joe", 22050, "en_US")
    pieces = list(synthesizer.synthesize("First sentence here. And a second one.", "joe", 1.0))
    assert len(pieces) == 2
    audio = np.concatenate(pieces)
    assert audio.dtype == np.float32 and np.sqrt(np.mean(audio**2)) > 0.02
    fast = np.concatenate(list(synthesizer.synthesize("First sentence here. And a second one.", "joe", 1.5)))
    assert fast.size < audio.size * 0.8
    with pytest.raises(UnknownVoice):
        next(iter(synthesizer.synthesize("hi", "nobody", 1.0)))


async def test_synthesize_limits_and_errors(synthesizer: PiperSynthesizer) -> None:
    servicer = TextToSpeechServicer(TtsSettings(max_text_chars=50, chunk_ms=100), ServiceRuntime("tts", 2))
    servicer.synthesizer = synthesizer
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        chunks = [c async for c in stub.Synthesize(tts_pb2.SynthesizeRequest(text="Hello world.", sample_rate=48000))]
        assert all(c.sample_rate == 48000 for c in chunks)
        assert max(len(c.pcm) for c in chunks) <= 48000 * 2 // 10
        starts = [c.start_s for c in chunks]
        assert starts == sorted(starts) and starts[0] == 0.0
        # Text with nothing to pronounce ends the stream cleanly, with no audio.
        assert [c async for c in stub.Synthesize(tts_pb2.SynthesizeRequest(text="..."))] == []

        cases = [
            (tts_pb2.SynthesizeRequest(text="x" * 51), grpc.StatusCode.INVALID_ARGUMENT),
            (tts_pb2.SynthesizeRequest(text="hi", voice="nobody"), grpc.StatusCode.NOT_FOUND),
            (tts_pb2.SynthesizeRequest(text="hi", sample_rate=100), grpc.StatusCode.INVALID_ARGUMENT),
            (tts_pb2.SynthesizeRequest(text="hi", speed=9), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for request, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Synthesize(request):
                    pass
            assert refused.value.code() == code, request
    assert servicer.runtime.slots.active == 0
