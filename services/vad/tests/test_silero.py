"""The real Silero model, and the servicer over real gRPC."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable

import grpc
import numpy as np
import pytest

from parley.audio.v1.audio_pb2 import AudioChunk
from parley.pcm import Float32Array, pcm16_to_float
from parley.server import ServiceRuntime
from parley.testing import serving
from parley.vad.v1 import vad_pb2, vad_pb2_grpc
from parley_vad.config import VadSettings
from parley_vad.engines.silero import SileroDetector
from parley_vad.servicer import VoiceActivityServicer
from tests.speech import silence, speak


@pytest.fixture(scope="module")
def detector() -> SileroDetector:
    return SileroDetector()


def test_speech_scores_high_and_silence_low(detector: SileroDetector) -> None:
    speech = pcm16_to_float(speak("The quick brown fox jumps over the lazy dog."))
    quiet = np.zeros(16000, dtype=np.float32)
    score = detector.new_stream()
    n = detector.frame_samples
    speech_probs = [score(speech[i : i + n]) for i in range(0, speech.size - n, n)]
    quiet_probs = [score(quiet[i : i + n]) for i in range(0, quiet.size - n, n)]
    assert np.mean(speech_probs) > 0.6
    assert max(quiet_probs[5:]) < 0.2


async def chunks(pcm: bytes, rate: int, end: bool = True) -> AsyncIterator[AudioChunk]:
    step = rate // 10 * 2
    for i in range(0, len(pcm), step):
        yield AudioChunk(pcm=pcm[i : i + step], sample_rate=rate)
    if end:
        yield AudioChunk(end_of_stream=True)


class ThreadProbe:
    """Wraps the detector; records the threads its frames are scored on."""

    def __init__(self, inner: SileroDetector) -> None:
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.frame_samples = inner.frame_samples
        self.threads: set[str] = set()

    def new_stream(self) -> Callable[[Float32Array], float]:
        score = self.inner.new_stream()

        def probed(frame: Float32Array) -> float:
            self.threads.add(threading.current_thread().name)
            return score(frame)

        return probed


async def test_detect_over_grpc_at_another_sample_rate(detector: SileroDetector) -> None:
    # The end-of-turn model has tests of its own (test_end_of_turn.py).
    servicer = VoiceActivityServicer(VadSettings(turn_model="none"), ServiceRuntime("vad", 4))
    probe = ThreadProbe(detector)
    servicer.add(probe)  # type: ignore[arg-type]
    audio = silence(0.5, 24000) + speak("Hello there, how are you?", sample_rate=24000) + silence(1.0, 24000)
    async with serving(lambda s: vad_pb2_grpc.add_VoiceActivityServicer_to_server(servicer, s)) as channel:
        stub = vad_pb2_grpc.VoiceActivityStub(channel)
        events = [e async for e in stub.Detect(chunks(audio, 24000), metadata=(("parley-min-silence-ms", "300"),))]
        kinds = [e.kind for e in events]
        assert kinds[0] == vad_pb2.VadEvent.SPEECH_STARTED and kinds[-1] == vad_pb2.VadEvent.SPEECH_STOPPED
        events = [events[0], events[-1]]
        assert 0.0 <= events[0].timestamp_s < 0.6
        assert events[1].decided_at_s - events[1].timestamp_s == pytest.approx(0.3, abs=0.05)

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            async for _ in stub.Detect(chunks(b"\x00" * 3, 16000)):
                pass
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as bad_option:
            async for _ in stub.Detect(chunks(b"", 16000), metadata=(("parley-threshold", "7"),)):
                pass
        assert bad_option.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert servicer.runtime.slots.active == 0
    # Inference never ran on the event loop (which also answers NATS): only on the model's thread.
    assert probe.threads and threading.main_thread().name not in probe.threads, probe.threads
