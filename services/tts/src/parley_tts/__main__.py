"""`python -m parley_tts`: serve TextToSpeech on gRPC."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from parley.server import ServiceRuntime, ServiceSpec, run_service
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.engines.piper import PiperSynthesizer
from parley_tts.servicer import TextToSpeechServicer


def build(settings: TtsSettings, runtime: ServiceRuntime) -> ServiceSpec:
    servicer = TextToSpeechServicer(settings, runtime)
    loop = asyncio.get_running_loop()
    loaded: list[PiperSynthesizer] = []

    def load_model() -> None:
        for _ in range(settings.instances):
            synthesizer = PiperSynthesizer(settings.piper_voices_dir, settings.threads)
            if settings.default_voice not in {v.id for v in synthesizer.voices()}:
                raise ValueError(f"PARLEY_TTS_DEFAULT_VOICE={settings.default_voice!r} is not a loaded voice")
            loaded.append(synthesizer)

    def self_test() -> str:
        # A short phrase from every copy in the default voice: real, audible audio or no service.
        for synthesizer in loaded:
            audio = np.concatenate(
                [np.zeros(0, np.float32), *synthesizer.synthesize("Hello.", settings.default_voice, 1.0)]
            )
            if audio.size < 1000 or float(np.sqrt(np.mean(audio**2))) < 0.01:
                raise RuntimeError(f"the voice produced no audible speech ({audio.size} samples)")
            loop.call_soon_threadsafe(servicer.add, synthesizer)
        return f"{len(loaded)} instance(s) each spoke 'Hello.'"

    def add_servicers(server: grpc.aio.Server) -> None:
        tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, server)

    return ServiceSpec(
        kind="tts",
        grpc_services=[tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name],
        add_servicers=add_servicers,
        load_model=load_model,
        self_test=self_test,
        metadata={"engine": settings.engine},
    )


def main() -> None:
    settings = TtsSettings()
    run_service("tts", settings, settings.instances, lambda runtime: build(settings, runtime))


if __name__ == "__main__":
    main()
