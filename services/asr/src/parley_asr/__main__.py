"""`python -m parley_asr`: serve SpeechRecognition on gRPC."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from parley.asr.v1 import asr_pb2, asr_pb2_grpc
from parley.server import ServiceRuntime, ServiceSpec, run_service
from parley_asr.config import AsrSettings
from parley_asr.engines.faster_whisper import FasterWhisperRecognizer, embedded_model_path
from parley_asr.servicer import SpeechRecognitionServicer


def build(settings: AsrSettings, runtime: ServiceRuntime) -> ServiceSpec:
    servicer = SpeechRecognitionServicer(settings, runtime)
    loop = asyncio.get_running_loop()
    loaded: list[FasterWhisperRecognizer] = []

    def load_model() -> None:
        for _ in range(settings.instances):
            loaded.append(
                FasterWhisperRecognizer(
                    settings.model_path,
                    settings.device,
                    settings.compute_type,
                    settings.threads,
                    settings.beam_size,
                    settings.encoder_window_s,
                )
            )

    def self_test() -> str:
        # A real decode of one second of faint noise on every copy: encoder and decoder both run.
        noise = np.random.default_rng(0).normal(0, 0.01, 16000).astype(np.float32)
        for recognizer in loaded:
            recognizer.transcribe(noise, "en" if not recognizer.multilingual else None)
            loop.call_soon_threadsafe(servicer.add, recognizer)
        return f"{len(loaded)} instance(s) each decoded 1 s of audio"

    def add_servicers(server: grpc.aio.Server) -> None:
        asr_pb2_grpc.add_SpeechRecognitionServicer_to_server(servicer, server)

    return ServiceSpec(
        kind="asr",
        grpc_services=[asr_pb2.DESCRIPTOR.services_by_name["SpeechRecognition"].full_name],
        add_servicers=add_servicers,
        load_model=load_model,
        self_test=self_test,
        metadata={"engine": "faster-whisper", "model": str(settings.model_path or embedded_model_path())},
    )


def main() -> None:
    settings = AsrSettings()
    run_service("asr", settings, settings.max_streams, lambda runtime: build(settings, runtime))


if __name__ == "__main__":
    main()
