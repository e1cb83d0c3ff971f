"""`python -m parley_tts`: serve TextToSpeech on gRPC."""

from __future__ import annotations

import grpc

from parley.server import ServiceRuntime, ServiceSpec, run_service
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.engines.piper import PiperSynthesizer
from parley_tts.servicer import TextToSpeechServicer


def build(settings: TtsSettings, runtime: ServiceRuntime) -> ServiceSpec:
    servicer = TextToSpeechServicer(settings, runtime)

    def load_model() -> None:
        synthesizer = PiperSynthesizer(settings.piper_voices_dir, settings.threads)
        if settings.default_voice not in {v.id for v in synthesizer.voices()}:
            raise ValueError(f"PARLEY_TTS_DEFAULT_VOICE={settings.default_voice!r} is not a loaded voice")
        servicer.synthesizer = synthesizer

    def add_servicers(server: grpc.aio.Server) -> None:
        tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, server)

    return ServiceSpec(
        kind="tts",
        grpc_services=[tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name],
        add_servicers=add_servicers,
        load_model=load_model,
        metadata={"engine": settings.engine},
    )


def main() -> None:
    settings = TtsSettings()
    run_service("tts", settings, lambda runtime: build(settings, runtime))


if __name__ == "__main__":
    main()
