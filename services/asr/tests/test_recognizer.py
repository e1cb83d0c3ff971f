"""The real embedded Whisper model, and the servicer over real gRPC."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from parley.asr.v1 import asr_pb2_grpc
from parley.audio.v1.audio_pb2 import AudioChunk
from parley.pcm import Float32Array, pcm16_to_float
from parley.server import ServiceRuntime
from parley.testing import serving
from parley_asr.config import AsrSettings
from parley_asr.engines.base import Recognition
from parley_asr.engines.faster_whisper import FasterWhisperRecognizer
from parley_asr.servicer import SpeechRecognitionServicer
from tests.speech import silence, speak


@pytest.fixture(scope="module")
def recognizer() -> FasterWhisperRecognizer:
    return FasterWhisperRecognizer(None, "cpu", "int8", 0, 1, encoder_window_s=10)


@pytest.mark.parametrize("window_s", [10.0, 30.0])
def test_transcribes_with_short_and_stock_encoder_windows(recognizer: FasterWhisperRecognizer, window_s: float) -> None:
    recognizer.encoder_window_s = window_s
    try:
        result = recognizer.transcribe(pcm16_to_float(speak("Please turn on the kitchen lights.")), None)
    finally:
        recognizer.encoder_window_s = 10.0
    assert "kitchen" in result.text.lower() and "lights" in result.text.lower()
    # English only: nothing to detect, English for sure.
    assert (result.language, result.language_probability, recognizer.languages) == ("en", 1.0, {"en"})
    assert 0.6 < result.confidence <= 1.0, "clear speech, heard right: sure of its words"


def test_the_words_do_not_depend_on_the_silence_after_them(recognizer: FasterWhisperRecognizer) -> None:
    """The window past the audio is silence, as Whisper's reference code pads it: the same words whether the
    gateway ended the stream 100 ms into the silence after them or 300 ms (with zero-valued features, as
    faster-whisper pads, "about elephants" came out four ways)."""
    words = speak("Tell me a fun fact about elephants.")
    recognizer.beam_size = AsrSettings().beam_size  # the service's finals
    try:
        # After the VAD's 300 ms of padding before the speech, as the gateway sends it.
        heard = {
            tail_s: recognizer.transcribe(pcm16_to_float(silence(0.3) + words + silence(tail_s)), None)
            for tail_s in (0.1, 0.13, 0.2, 0.3)
        }
    finally:
        recognizer.beam_size = 1
    assert len({result.text for result in heard.values()}) == 1, heard
    assert "fun fact" in heard[0.1].text.lower()


def test_words_from_unclear_speech_have_less_confidence(recognizer: FasterWhisperRecognizer) -> None:
    """The same sentence played backwards: Whisper still writes words, and says it is unsure of them."""
    speech = pcm16_to_float(speak("Please turn on the kitchen lights."))
    clear = recognizer.transcribe(speech, None)
    unclear = recognizer.transcribe(np.ascontiguousarray(speech[::-1]), None)
    assert unclear.text and 0 < unclear.confidence < 0.6 < clear.confidence, (unclear, clear)


def test_utterances_longer_than_the_window_are_whole(recognizer: FasterWhisperRecognizer) -> None:
    audio = pcm16_to_float(
        speak(
            "Please book a table for two at the Italian place near the station, and tell them we might be late. "
            "After that, remind me to call my mother about the weekend trip to the mountains."
        )
    )
    assert audio.size / 16000 > recognizer.encoder_window_s
    text = recognizer.transcribe(audio, None).text.lower()
    assert "table" in text and "mother" in text and "mountains" in text, text


async def audio(pcm: bytes, end: bool) -> AsyncIterator[AudioChunk]:
    for i in range(0, len(pcm), 3200):
        yield AudioChunk(pcm=pcm[i : i + 3200], sample_rate=16000)
    if end:
        yield AudioChunk(end_of_stream=True)


async def test_transcribe_stream_and_its_end_marker(recognizer: FasterWhisperRecognizer) -> None:
    servicer = SpeechRecognitionServicer(AsrSettings(max_utterance_s=5), ServiceRuntime("asr", 2))
    servicer.add(recognizer)
    speech = speak("What time is it in Tokyo?")
    async with serving(lambda s: asr_pb2_grpc.add_SpeechRecognitionServicer_to_server(servicer, s)) as channel:
        stub = asr_pb2_grpc.SpeechRecognitionStub(channel)
        results = [r async for r in stub.Transcribe(audio(speech, end=True))]
        assert [r.is_final for r in results] == [False] * (len(results) - 1) + [True]
        assert "tokyo" in results[-1].text.lower() and 0 < results[-1].confidence <= 1
        assert results[-1].audio_duration_s == pytest.approx(len(speech) / 32000, abs=0.01)

        # A stream that ends without its marker was cancelled: no result at all.
        assert [r async for r in stub.Transcribe(audio(speech, end=False))] == []

        with pytest.raises(grpc.aio.AioRpcError) as too_long:
            async for _ in stub.Transcribe(audio(bytes(32000 * 6), end=True)):
                pass
        assert too_long.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert servicer.runtime.slots.active == 0


def test_stable_prefix_ignores_case_and_punctuation() -> None:
    from parley_asr.servicer import stable_prefix

    assert stable_prefix("What is the", "what is the capital") == "what is the"
    assert stable_prefix("What in the cup", "What is the capital") == "What"
    assert stable_prefix("", "Hello") == ""


class SlowPartials:
    """A fake recogniser whose first decode (a partial), on any of the copies sharing `calls`, runs until stopped."""

    sample_rate = 16000
    multilingual = False
    languages = frozenset({"en"})

    def __init__(self, shared: list[int] | None = None) -> None:
        self.shared = shared if shared is not None else [0]
        self.calls = 0
        self.first_stopped = threading.Event()

    def transcribe(
        self, audio: Float32Array, language: str | None, stop: threading.Event | None = None, final: bool = True
    ) -> Recognition:
        self.calls += 1
        self.shared[0] += 1
        if self.shared[0] == 1:
            assert stop is not None
            if stop.wait(timeout=10):
                self.first_stopped.set()
            return Recognition("partial", "en")
        return Recognition(f"final of {audio.size / 16000:.1f} s", "en")


async def test_the_end_of_an_utterance_stops_its_partial_decode() -> None:
    """The final is not queued behind a partial that nobody will read any more."""
    fake = SlowPartials()
    servicer = SpeechRecognitionServicer(AsrSettings(partial_interval_s=0.2), ServiceRuntime("asr", 2))
    servicer.add(fake)  # type: ignore[arg-type]
    async with serving(lambda s: asr_pb2_grpc.add_SpeechRecognitionServicer_to_server(servicer, s)) as channel:
        stub = asr_pb2_grpc.SpeechRecognitionStub(channel)

        async def utterance() -> AsyncIterator[AudioChunk]:
            for _ in range(10):  # 1 s in 100 ms chunks: a partial starts after 200 ms
                yield AudioChunk(pcm=bytes(3200), sample_rate=16000)
                await asyncio.sleep(0.01)
            yield AudioChunk(end_of_stream=True)

        started = time.monotonic()
        results = [r async for r in stub.Transcribe(utterance(), metadata=(("parley-partials", "1"),))]
    assert fake.first_stopped.is_set(), "the partial was left running"
    assert time.monotonic() - started < 3
    assert [r.text for r in results] == ["final of 1.0 s"]
    assert servicer.pool.free == 1


async def test_a_partial_never_takes_the_last_free_copy() -> None:
    """With two copies and one busy, a partial is skipped and a final runs: a final never waits behind a partial."""
    calls = [0]
    servicer = SpeechRecognitionServicer(AsrSettings(), ServiceRuntime("asr", 4))
    servicer.add(SlowPartials(calls))  # type: ignore[arg-type]
    servicer.add(SlowPartials(calls))  # type: ignore[arg-type]
    calls[0] = 1  # every decode from now on answers at once
    audio = np.zeros(16000, dtype=np.float32)
    async with servicer.pool.lease():  # another stream is decoding on one copy
        assert await servicer._decode(audio, None, final=False) is None
        final = await servicer._decode(audio, None, final=True)
        assert final is not None and final.text == "final of 1.0 s"
    assert (await servicer._decode(audio, None, final=False)) is not None  # both free: a partial may run

    alone = SpeechRecognitionServicer(AsrSettings(), ServiceRuntime("asr", 4))
    alone.add(SlowPartials([1]))  # type: ignore[arg-type]
    assert (await alone._decode(audio, None, final=False)) is not None  # one copy: partials may use it
