"""`python -m parley_vad`: serve VoiceActivity on gRPC."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from parley.server import ServiceRuntime, ServiceSpec, run_service
from parley.vad.v1 import vad_pb2, vad_pb2_grpc
from parley_vad.config import VadSettings
from parley_vad.engines.silero import SileroDetector, embedded_model_path
from parley_vad.servicer import VoiceActivityServicer


def build(settings: VadSettings, runtime: ServiceRuntime) -> ServiceSpec:
    servicer = VoiceActivityServicer(settings, runtime)
    loop = asyncio.get_running_loop()
    loaded: list[SileroDetector] = []

    def load_model() -> None:
        loaded.append(SileroDetector(settings.model_path, settings.threads))

    def self_test() -> str:
        [detector] = loaded
        score = detector.new_stream()
        probability = score(np.zeros(detector.frame_samples, dtype=np.float32))
        if not 0.0 <= probability <= 1.0:
            raise RuntimeError(f"the VAD model gave {probability} for a silent frame")
        loop.call_soon_threadsafe(servicer.add, detector)
        return f"scored a silent frame: {probability:.3f}"

    def add_servicers(server: grpc.aio.Server) -> None:
        vad_pb2_grpc.add_VoiceActivityServicer_to_server(servicer, server)

    return ServiceSpec(
        kind="vad",
        grpc_services=[vad_pb2.DESCRIPTOR.services_by_name["VoiceActivity"].full_name],
        add_servicers=add_servicers,
        load_model=load_model,
        self_test=self_test,
        metadata={"engine": "silero", "model": str(settings.model_path or embedded_model_path())},
    )


def main() -> None:
    settings = VadSettings()
    run_service("vad", settings, settings.max_streams, lambda runtime: build(settings, runtime))


if __name__ == "__main__":
    main()
