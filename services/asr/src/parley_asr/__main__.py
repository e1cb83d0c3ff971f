"""`python -m parley_asr`: serve SpeechRecognition on gRPC."""

from __future__ import annotations

import grpc

from parley.asr.v1 import asr_pb2, asr_pb2_grpc
from parley.server import ServiceRuntime, ServiceSpec, run_service
from parley_asr.config import AsrSettings
from parley_asr.engines.faster_whisper import FasterWhisperRecognizer, embedded_model_path
from parley_asr.servicer import SpeechRecognitionServicer


def build(settings: AsrSettings, runtime: ServiceRuntime) -> ServiceSpec:
    servicer = SpeechRecognitionServicer(settings, runtime)

    def load_model() -> None:
        servicer.recognizer = FasterWhisperRecognizer(
            settings.model_path,
            settings.device,
            settings.compute_type,
            settings.threads,
            settings.beam_size,
            settings.encoder_window_s,
        )

    def add_servicers(server: grpc.aio.Server) -> None:
        asr_pb2_grpc.add_SpeechRecognitionServicer_to_server(servicer, server)

    return ServiceSpec(
        kind="asr",
        grpc_services=[asr_pb2.DESCRIPTOR.services_by_name["SpeechRecognition"].full_name],
        add_servicers=add_servicers,
        load_model=load_model,
        metadata={"engine": "faster-whisper", "model": str(settings.model_path or embedded_model_path())},
    )


def main() -> None:
    settings = AsrSettings()
    run_service("asr", settings, lambda runtime: build(settings, runtime))


if __name__ == "__main__":
    main()
