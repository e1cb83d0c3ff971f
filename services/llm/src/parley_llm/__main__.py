"""`python -m parley_llm`: serve Conversation on gRPC."""

from __future__ import annotations

import asyncio

import grpc

from parley.assembly import log_progress
from parley.llm.v1 import llm_pb2, llm_pb2_grpc
from parley.server import ServiceRuntime, ServiceSpec, run_service
from parley_llm.catalogue import choose_model
from parley_llm.config import LlmSettings
from parley_llm.engines.base import ChatMessage, TextGenerator
from parley_llm.engines.llama_cpp import LlamaCppGenerator
from parley_llm.engines.llama_cpp_batched import LlamaCppBatchedGenerator
from parley_llm.engines.openai_compat import OpenAICompatibleGenerator
from parley_llm.servicer import ConversationServicer


def make_generators(settings: LlmSettings) -> list[TextGenerator]:
    """settings.instances copies of the model; an embedded model's file is found and checked once.

    A llama.cpp copy with parallel_sequences > 1 is the batched engine: one copy, several replies.
    """
    if settings.engine == "openai":
        return [
            OpenAICompatibleGenerator(
                settings.openai_base_url,
                settings.openai_api_key.get_secret_value(),
                settings.openai_model,
                settings.prompt_format,
                settings.request_timeout_s,
            )
            for _ in range(settings.instances)
        ]
    choice = choose_model(
        settings.model, settings.model_path, settings.prompt_format, settings.model_cache_dir, log_progress
    )
    if settings.parallel_sequences > 1:
        return [
            LlamaCppBatchedGenerator(
                choice.path,
                choice.prompt_format,
                settings.context_tokens,
                settings.threads,
                settings.gpu_layers,
                settings.parallel_sequences,
            )
            for _ in range(settings.instances)
        ]
    return [
        LlamaCppGenerator(
            choice.path, choice.prompt_format, settings.context_tokens, settings.threads, settings.gpu_layers
        )
        for _ in range(settings.instances)
    ]


def build(settings: LlmSettings, runtime: ServiceRuntime) -> ServiceSpec:
    servicer = ConversationServicer(settings, runtime)
    loop = asyncio.get_running_loop()

    loaded: list[TextGenerator] = []

    def load_model() -> None:
        loaded.extend(make_generators(settings))

    def self_test() -> str:
        # One real token from every copy: a build that cannot run on this CPU
        # crashes here, before the service ever says it is ready.
        for generator in loaded:
            deltas = list(generator.stream([ChatMessage("user", "Hello")], max_tokens=1, temperature=0.0))
            if not deltas or not deltas[-1].finish_reason:
                raise RuntimeError(f"the model produced no answer: {deltas}")
            # The pool lends streams: a copy is lent as often as it has sequences.
            for _ in range(settings.streams_per_copy):
                loop.call_soon_threadsafe(servicer.pool.add, generator)
        return f"{len(loaded)} instance(s) each generated a token, {settings.streams_per_copy} stream(s) each"

    def add_servicers(server: grpc.aio.Server) -> None:
        llm_pb2_grpc.add_ConversationServicer_to_server(servicer, server)

    return ServiceSpec(
        kind="llm",
        grpc_services=[llm_pb2.DESCRIPTOR.services_by_name["Conversation"].full_name],
        add_servicers=add_servicers,
        load_model=load_model,
        self_test=self_test,
        metadata={
            "engine": settings.engine,
            "model": settings.openai_model
            if settings.engine == "openai"
            else str(settings.model_path or settings.model),
        },
    )


def capacity(settings: LlmSettings) -> int:
    """Streams served at once, as reported on NATS: model copies x sequences per copy."""
    return settings.instances * settings.streams_per_copy


def main() -> None:
    settings = LlmSettings()
    run_service("llm", settings, capacity(settings), lambda runtime: build(settings, runtime))


if __name__ == "__main__":
    main()
