"""`python -m parley_asr`: serve SpeechRecognition on gRPC."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np

from parley.asr.v1 import asr_pb2, asr_pb2_grpc
from parley.assembly import log_progress
from parley.server import ServiceRuntime, ServiceSpec, run_service
from parley_asr.catalogue import choose_model
from parley_asr.config import AsrSettings
from parley_asr.engines.faster_whisper import FasterWhisperRecognizer
from parley_asr.servicer import SpeechRecognitionServicer, unsupported_language


def build(settings: AsrSettings, runtime: ServiceRuntime) -> ServiceSpec:
    servicer = SpeechRecognitionServicer(settings, runtime)
    loop = asyncio.get_running_loop()
    loaded: list[FasterWhisperRecognizer] = []

    def load_model() -> None:
        # An embedded model is found (assembled the first time) and checked once, for every copy.
        path = choose_model(settings.model, settings.model_path, settings.model_cache_dir, log_progress)
        for _ in range(settings.instances):
            loaded.append(
                FasterWhisperRecognizer(
                    path,
                    settings.device,
                    settings.compute_type,
                    settings.threads,
                    settings.beam_size,
                    settings.encoder_window_s,
                    settings.detection_candidates,
                    partial_beam_size=settings.partial_beam_size,
                )
            )
        # A language the model cannot transcribe would fail every stream (or never be detected): refuse to start.
        for setting, language in [
            ("PARLEY_ASR_DEFAULT_LANGUAGE", settings.default_language),
            *(("PARLEY_ASR_DETECT_LANGUAGES", code) for code in sorted(settings.detection_candidates)),
        ]:
            problem = language and unsupported_language(language, loaded[0].languages, servicer.model_name)
            if problem:
                raise ValueError(f"{setting}={language}: {problem}")

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
        metadata={"engine": "faster-whisper", "model": str(settings.model_path or settings.model)},
    )


def main() -> None:
    settings = AsrSettings()
    run_service("asr", settings, settings.max_streams, lambda runtime: build(settings, runtime))


if __name__ == "__main__":
    main()
