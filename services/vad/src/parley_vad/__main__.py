"""`python -m parley_vad`: serve VoiceActivity on gRPC."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np

from parley.server import ServiceRuntime, ServiceSpec, run_service
from parley.vad.v1 import vad_pb2, vad_pb2_grpc
from parley_vad.config import VadSettings
from parley_vad.engines.silero import SileroDetector, embedded_model_path
from parley_vad.engines.smart_turn import SmartTurnDetector, read_verified_model
from parley_vad.servicer import VoiceActivityServicer


def build(settings: VadSettings, runtime: ServiceRuntime) -> ServiceSpec:
    servicer = VoiceActivityServicer(settings, runtime)
    loop = asyncio.get_running_loop()
    loaded: list[SileroDetector] = []
    turn_copies: list[SmartTurnDetector] = []

    def load_model() -> None:
        loaded.append(SileroDetector(settings.model_path, settings.threads))
        if settings.turn_model != "none":
            model = read_verified_model(settings.turn_model_path)  # checked once, loaded into every copy
            turn_copies.extend(SmartTurnDetector(model, settings.turn_threads) for _ in range(settings.turn_copies))

    def self_test() -> str:
        [detector] = loaded
        score = detector.new_stream()
        probability = score(np.zeros(detector.frame_samples, dtype=np.float32))
        if not 0.0 <= probability <= 1.0:
            raise RuntimeError(f"the VAD model gave {probability} for a silent frame")
        did = [f"scored a silent frame: {probability:.3f}"]
        for copy in turn_copies:
            if copy.sample_rate != detector.sample_rate:  # it hears the very audio the VAD model scored
                raise RuntimeError(
                    f"the end-of-turn model takes {copy.sample_rate} Hz, the VAD {detector.sample_rate} Hz"
                )
            started = time.perf_counter()
            completion = copy.completion(np.zeros(copy.sample_rate, dtype=np.float32))
            if not 0.0 <= completion <= 1.0:
                raise RuntimeError(f"the end-of-turn model gave {completion} for a second of silence")
            did.append(
                f"judged a second of silence: {completion:.3f} in {(time.perf_counter() - started) * 1000:.0f} ms"
            )

        def put_in_service() -> None:
            # Together, so that no stream is served with the VAD model but without its turn model.
            servicer.add(detector)
            for copy in turn_copies:
                servicer.add_turn_detector(copy)

        loop.call_soon_threadsafe(put_in_service)
        return "; ".join(did)

    def add_servicers(server: grpc.aio.Server) -> None:
        vad_pb2_grpc.add_VoiceActivityServicer_to_server(servicer, server)

    return ServiceSpec(
        kind="vad",
        grpc_services=[vad_pb2.DESCRIPTOR.services_by_name["VoiceActivity"].full_name],
        add_servicers=add_servicers,
        load_model=load_model,
        self_test=self_test,
        metadata={
            "engine": "silero",
            "model": str(settings.model_path or embedded_model_path()),
            "turn_model": settings.turn_model,
        },
    )


def main() -> None:
    settings = VadSettings()
    run_service("vad", settings, settings.max_streams, lambda runtime: build(settings, runtime))


if __name__ == "__main__":
    main()
