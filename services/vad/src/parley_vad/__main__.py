"""`python -m parley_vad`: serve VoiceActivity on gRPC."""

from __future__ import annotations

import grpc

from parley.server import ServiceRuntime, ServiceSpec, run_service
from parley.vad.v1 import vad_pb2, vad_pb2_grpc
from parley_vad.config import VadSettings
from parley_vad.engines.silero import SileroDetector, embedded_model_path
from parley_vad.servicer import VoiceActivityServicer


def build(settings: VadSettings, runtime: ServiceRuntime) -> ServiceSpec:
    servicer = VoiceActivityServicer(settings, runtime)

    def load_model() -> None:
        servicer.detector = SileroDetector(settings.model_path, settings.threads)

    def add_servicers(server: grpc.aio.Server) -> None:
        vad_pb2_grpc.add_VoiceActivityServicer_to_server(servicer, server)

    return ServiceSpec(
        kind="vad",
        grpc_services=[vad_pb2.DESCRIPTOR.services_by_name["VoiceActivity"].full_name],
        add_servicers=add_servicers,
        load_model=load_model,
        metadata={"engine": "silero", "model": str(settings.model_path or embedded_model_path())},
    )


def main() -> None:
    settings = VadSettings()
    run_service("vad", settings, lambda runtime: build(settings, runtime))


if __name__ == "__main__":
    main()
