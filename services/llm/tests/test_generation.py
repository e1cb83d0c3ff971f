"""The real embedded Gemma model through the servicer over real gRPC."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from parley.llm.v1 import llm_pb2, llm_pb2_grpc
from parley.server import ServiceRuntime
from parley.testing import serving
from parley_llm.config import LlmSettings
from parley_llm.engines.llama_cpp import LlamaCppGenerator
from parley_llm.servicer import ConversationServicer


@pytest.fixture(scope="module")
def generator() -> LlamaCppGenerator:
    return LlamaCppGenerator(None, "auto", 2048, 0, 0)


def ask(text: str, max_tokens: int = 0) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(
        messages=[llm_pb2.Message(role="user", content=text)], max_tokens=max_tokens, temperature=0.0
    )


async def test_generate_streams_and_a_cancelled_stream_frees_the_model(generator: LlamaCppGenerator) -> None:
    servicer = ConversationServicer(LlmSettings(), ServiceRuntime("llm", 4))
    servicer.instances.put_nowait(generator)
    servicer.runtime.slots.ready = True
    async with serving(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(servicer, s)) as channel:
        stub = llm_pb2_grpc.ConversationStub(channel)
        deltas = [d async for d in stub.Generate(ask("What is the capital of France?"))]
        assert "".join(d.text for d in deltas).strip()
        assert deltas[-1].finish_reason in {"stop", "length"}

        # Cancel a long reply after its first token: the single model instance
        # must be back in the pool at once, and the next request served.
        call = stub.Generate(ask("Tell me a very long story about a dragon.", max_tokens=400))
        async for _ in call:
            break
        call.cancel()
        for _ in range(100):
            if servicer.instances.qsize() == 1:
                break
            await asyncio.sleep(0.01)
        assert servicer.instances.qsize() == 1, "the cancelled stream still holds the model"
        started = time.perf_counter()
        async for _ in stub.Generate(ask("Hello!", max_tokens=5)):
            break
        assert time.perf_counter() - started < 2.0

        wizard = llm_pb2.GenerateRequest(messages=[llm_pb2.Message(role="wizard", content="hi")])
        for bad in (llm_pb2.GenerateRequest(), wizard):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Generate(bad):
                    pass
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
