"""The real Piper voice through the servicer over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from parley.pcm import Float32Array
from parley.server import ServiceRuntime
from parley.testing import OverlapProbe, serving
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.engines.base import UnknownVoice, UnspeakableText, VoiceInfo
from parley_tts.engines.piper import PiperSynthesizer
from parley_tts.servicer import TextToSpeechServicer


class Probed:
    """The real synthesiser, with every request counted by an OverlapProbe."""

    engine = "piper"

    def __init__(self, inner: PiperSynthesizer) -> None:
        self.inner = inner
        self.probe = OverlapProbe()

    def voices(self) -> list[VoiceInfo]:
        return self.inner.voices()

    def synthesize(self, text: str, voice_id: str, speed: float) -> Iterator[Float32Array]:
        return self.probe.through(self.inner.synthesize(text, voice_id, speed))


@pytest.fixture(scope="module")
def synthesizer() -> PiperSynthesizer:
    return PiperSynthesizer(None, 1)


def servicer_for(*synthesizers: object, settings: TtsSettings | None = None) -> TextToSpeechServicer:
    settings = settings or TtsSettings(max_text_chars=50, chunk_ms=100)
    servicer = TextToSpeechServicer(settings, ServiceRuntime("tts", len(synthesizers), queue_limit=8))
    for synthesizer in synthesizers:
        servicer.add(synthesizer)  # type: ignore[arg-type]
    return servicer


async def speak(stub: tts_pb2_grpc.TextToSpeechStub, text: str, **fields: object) -> bytes:
    request = tts_pb2.SynthesizeRequest(text=text, **fields)  # type: ignore[arg-type]
    return b"".join([chunk.pcm async for chunk in stub.Synthesize(request)])


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


def test_text_the_voice_would_spell_out_is_refused_before_any_audio(synthesizer: PiperSynthesizer) -> None:
    # Scripts an English voice can only read by name, a long phrase per character.
    for text in ("你好，世界。今天天气很好。", "שלום עולם, מה שלומך היום", "𝕳𝖊𝖑𝖑𝖔 𝖋𝖗𝖎𝖊𝖓𝖉"):
        with pytest.raises(UnspeakableText, match="cannot read"):
            next(iter(synthesizer.synthesize(text, "joe", 1.0)))
    # Ordinary text with digits, numbers, prices and letter names is fine.
    for text in ("It costs $3.50, or 4 euros.", "Call 555 123 4567 before 10:30.", "In 1969, 600,000,000 watched."):
        assert list(synthesizer.synthesize(text, "joe", 1.0)), text


async def test_synthesize_limits_and_errors(synthesizer: PiperSynthesizer) -> None:
    servicer = servicer_for(synthesizer)
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
            (tts_pb2.SynthesizeRequest(text="\u200b\u0007 "), grpc.StatusCode.INVALID_ARGUMENT),
            (tts_pb2.SynthesizeRequest(text="hi", voice="nobody"), grpc.StatusCode.NOT_FOUND),
            (tts_pb2.SynthesizeRequest(text="hi", sample_rate=100), grpc.StatusCode.INVALID_ARGUMENT),
            (tts_pb2.SynthesizeRequest(text="hi", speed=9), grpc.StatusCode.INVALID_ARGUMENT),
            (tts_pb2.SynthesizeRequest(text="你好，世界。今天天气很好。"), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for request, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Synthesize(request):
                    pass
            assert refused.value.code() == code, request
    assert servicer.runtime.slots.active == 0


async def test_mathematical_letters_are_read_as_letters(synthesizer: PiperSynthesizer) -> None:
    """ "𝕳𝖊𝖑𝖑𝖔" once came out as ~11 s of spelled-out symbol names; NFKC makes it "Hello"."""
    servicer = servicer_for(synthesizer)
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        fancy = await speak(stub, "𝕳𝖊𝖑𝖑𝖔 𝖋𝖗𝖎𝖊𝖓𝖉", sample_rate=16000)
        plain = await speak(stub, "Hello friend", sample_rate=16000)
    # Piper's durations vary a little from call to call; spelled out it was over ten times longer.
    assert 0.7 * len(plain) < len(fancy) < 1.4 * len(plain), (len(fancy) / 32000, len(plain) / 32000)


async def test_rapid_cancel_then_request_never_shares_a_voice(synthesizer: PiperSynthesizer) -> None:
    probed = Probed(synthesizer)
    servicer = servicer_for(probed, settings=TtsSettings(chunk_ms=50))
    long_text = "This is a long sentence that keeps going for a while. " * 4
    async with serving(lambda s: tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, s)) as channel:
        stub = tts_pb2_grpc.TextToSpeechStub(channel)
        for cycle in range(200):
            call = stub.Synthesize(tts_pb2.SynthesizeRequest(text=long_text))
            if cycle % 4 == 0:
                async for _ in call:
                    break  # cut after the first audio
            else:
                await asyncio.sleep(0)
            call.cancel()
        after = await speak(stub, "Still here.")
    assert probed.probe.overlaps == 0 and probed.probe.entries >= 50
    assert len(after) > 22050, "the voice answers properly after 200 interruptions"
    assert servicer.pool.free == 1 and servicer.runtime.slots.active == 0
