"""`python -m parley_tts`: serve TextToSpeech on gRPC."""

from __future__ import annotations

import asyncio
import logging

import grpc
import numpy as np
from nats.aio.client import Client as NatsClient

from parley.models import ModelPool
from parley.server import ServiceRuntime, ServiceSpec, run_service
from parley.tts.v1 import tts_pb2, tts_pb2_grpc
from parley_tts.config import TtsSettings
from parley_tts.engines.base import SpeechSynthesizer, Utterance
from parley_tts.servicer import TextToSpeechServicer
from parley_tts.similarity import SpeakerEmbedder
from parley_tts.voices import VoiceStore

log = logging.getLogger("parley_tts")


def load_engines(settings: TtsSettings) -> list[SpeechSynthesizer]:
    """Every model copy of every engine the settings ask for (blocking)."""
    copies: list[SpeechSynthesizer] = []
    for engine in settings.engine_names:
        if engine == "piper":
            from parley_tts.engines.piper import PiperSynthesizer

            for _ in range(settings.instances):
                copies.append(PiperSynthesizer(settings.piper_voices_dir, settings.threads))
        elif engine == "fireredtts2":
            copies += load_fireredtts2(settings)
    return copies


def load_fireredtts2(settings: TtsSettings) -> list[SpeechSynthesizer]:
    # Imported here: torch and the model code are only needed where this engine runs.
    import torch

    from parley_tts.engines.fireredtts2 import FireRedTTS2Model, FireRedTTS2Recipe, FireRedTTS2Synthesizer

    device = torch.device(settings.fireredtts2_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        if not settings.fireredtts2_allow_cpu:
            raise RuntimeError(
                "the fireredtts2 engine needs a CUDA GPU and none is visible; run Piper only "
                "(PARLEY_TTS_ENGINES=piper), or set PARLEY_TTS_FIREREDTTS2_ALLOW_CPU=true (tests; far too slow)"
            )
        device = torch.device("cpu")
    if device.type == "cpu" and not settings.fireredtts2_allow_cpu:
        raise RuntimeError("PARLEY_TTS_FIREREDTTS2_DEVICE=cpu needs PARLEY_TTS_FIREREDTTS2_ALLOW_CPU=true")
    if settings.fireredtts2_cuda_graphs and device.type != "cuda":
        log.warning("PARLEY_TTS_FIREREDTTS2_CUDA_GRAPHS is for CUDA devices: the %s runs the eager step", device)
    graphs = settings.fireredtts2_cuda_graphs and device.type == "cuda"
    copies: list[SpeechSynthesizer] = []
    for index in range(settings.fireredtts2_copies):
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        log.info("loading FireRedTTS2 copy %d of %d on %s", index + 1, settings.fireredtts2_copies, device)
        model = FireRedTTS2Model.load(
            settings.fireredtts2_models_dir,
            str(device),
            checkpoint=settings.fireredtts2_checkpoint,
            bf16=settings.fireredtts2_bf16,
            frame_limit=settings.fireredtts2_frame_limit,
        )
        loaded = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        recipe = FireRedTTS2Recipe.from_settings(settings)
        # One synthesizer per stream: a pool worker thread each, sharing the copy's batched steps.
        handles = model.share(settings.fireredtts2_streams_per_copy, cuda_graphs=graphs)
        copies += [FireRedTTS2Synthesizer(handle, recipe=recipe) for handle in handles]
        if device.type == "cuda":
            # Measured after `share`, which allocates a shared copy's per-stream caches (the LLM's in full; the
            # codec's attention caches start small and double as a stream's speech grows).
            now = torch.cuda.memory_allocated(device)
            log.info(
                "FireRedTTS2 copy %d holds %.2f GiB of GPU memory (%.2f GiB of it for %d streams' caches)",
                index + 1,
                (now - before) / 2**30,
                (now - loaded) / 2**30,
                len(handles),
            )
    return copies


def build(settings: TtsSettings, runtime: ServiceRuntime) -> ServiceSpec:
    servicer = TextToSpeechServicer(settings, runtime)
    loop = asyncio.get_running_loop()
    loaded: list[SpeechSynthesizer] = []
    embedders: list[SpeakerEmbedder] = []

    def load_model() -> None:
        loaded.extend(load_engines(settings))
        voices = {v.id for copy in loaded for v in copy.voices()}
        if settings.default_voice not in voices:
            known = ", ".join(sorted(voices))
            raise ValueError(f"PARLEY_TTS_DEFAULT_VOICE={settings.default_voice!r} is not a loaded voice ({known})")
        embedders.append(SpeakerEmbedder())

    def self_test() -> str:
        # A short phrase from every copy in its first voice: real, audible audio or no service.
        for synthesizer in loaded:
            voice = synthesizer.voices()[0].id
            hello = Utterance("Hello.", voice)
            audio = np.concatenate([np.zeros(0, np.float32), *synthesizer.synthesize(hello, synthesizer.new_context())])
            if audio.size < 1000 or not np.isfinite(audio).all():
                raise RuntimeError(f"{synthesizer.engine} produced no speech ({audio.size} samples)")
            if synthesizer.engine == "piper" and float(np.sqrt(np.mean(audio**2))) < 0.01:
                raise RuntimeError(f"the voice produced no audible speech ({audio.size} samples)")
            loop.call_soon_threadsafe(servicer.engines.add, synthesizer)
        embedders[0].embed(np.zeros(16000, np.float32), 16000)
        loop.call_soon_threadsafe(add_embedder, embedders[0])
        return f"{len(loaded)} model copies each spoke 'Hello.'; the speaker embedder answered"

    def add_embedder(embedder: SpeakerEmbedder) -> None:
        pool: ModelPool[SpeakerEmbedder] = ModelPool("tts-embedder")
        pool.add(embedder)
        servicer.voices.embedder = pool

    async def open_voice_store(nc: NatsClient) -> None:
        servicer.voices.store = await VoiceStore.open(nc, settings.voices_bucket)
        log.info("voice store: JetStream bucket %s", settings.voices_bucket)

    def add_servicers(server: grpc.aio.Server) -> None:
        tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, server)

    return ServiceSpec(
        kind="tts",
        grpc_services=[tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name],
        add_servicers=add_servicers,
        load_model=load_model,
        self_test=self_test,
        metadata={"engine": ",".join(settings.engine_names)},
        on_nats=open_voice_store,
        max_receive_bytes=max(8 * 1024 * 1024, settings.max_reference_bytes + 1024 * 1024),
    )


def capacity(settings: TtsSettings) -> int:
    """Streams served at once: one per Piper copy; FireRedTTS2's copies times the streams each speaks at once."""
    engines = settings.engine_names
    firered = settings.fireredtts2_copies * settings.fireredtts2_streams_per_copy
    return settings.instances * ("piper" in engines) + firered * ("fireredtts2" in engines)


def main() -> None:
    settings = TtsSettings()
    run_service("tts", settings, capacity(settings), lambda runtime: build(settings, runtime))


if __name__ == "__main__":
    main()
