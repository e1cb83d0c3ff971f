"""The real embedded model (the default unless PARLEY_LLM_MODEL says) through the servicer over real gRPC."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from parley.llm.v1 import llm_pb2, llm_pb2_grpc
from parley.server import ServiceRuntime
from parley.testing import OverlapProbe, serving
from parley_llm.catalogue import choose_model
from parley_llm.config import LlmSettings
from parley_llm.engines.base import ChatMessage, Delta
from parley_llm.engines.llama_cpp import LlamaCppGenerator
from parley_llm.servicer import ConversationServicer


class Probed:
    """The real engine, with every stream counted by an OverlapProbe (llama.cpp would crash on overlap)."""

    def __init__(self, inner: LlamaCppGenerator) -> None:
        self.inner = inner
        self.probe = OverlapProbe()

    def stream(self, messages: list[ChatMessage], max_tokens: int, temperature: float) -> Iterator[Delta]:
        return self.probe.through(self.inner.stream(messages, max_tokens, temperature))


@pytest.fixture(scope="module")
def generator() -> LlamaCppGenerator:
    settings = LlmSettings()  # the default model, or the one PARLEY_LLM_MODEL(_PATH) names
    choice = choose_model(settings.model, settings.model_path, "auto")
    return LlamaCppGenerator(choice.path, choice.prompt_format, 2048, 0, 0)


def ask(text: str, max_tokens: int = 0) -> llm_pb2.GenerateRequest:
    return llm_pb2.GenerateRequest(
        messages=[llm_pb2.Message(role="user", content=text)], max_tokens=max_tokens, temperature=0.0
    )


def servicer_for(model: object, settings: LlmSettings | None = None) -> ConversationServicer:
    servicer = ConversationServicer(settings or LlmSettings(), ServiceRuntime("llm", 1, queue_limit=4))
    servicer.pool.add(model)  # type: ignore[arg-type]
    servicer.runtime.slots.ready = True
    return servicer


async def test_generate_streams_and_refuses_bad_requests(generator: LlamaCppGenerator) -> None:
    servicer = servicer_for(generator)
    async with serving(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(servicer, s)) as channel:
        stub = llm_pb2_grpc.ConversationStub(channel)
        deltas = [d async for d in stub.Generate(ask("What is the capital of France?"))]
        assert "".join(d.text for d in deltas).strip()
        assert deltas[-1].finish_reason in {"stop", "length"}

        wizard = llm_pb2.GenerateRequest(messages=[llm_pb2.Message(role="wizard", content="hi")])
        for bad in (llm_pb2.GenerateRequest(), wizard):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in stub.Generate(bad):
                    pass
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_rapid_cancel_then_request_never_shares_the_model(generator: LlamaCppGenerator) -> None:
    """200 replies cut at once or after their first token, each followed at once by the next.

    The model goes back to the pool only after its worker stopped: no two threads in one
    Llama (which crashes the process), and the reply after a cancel is a real answer.
    """
    probed = Probed(generator)
    servicer = servicer_for(probed)
    story = ask("Tell me a very long story about a dragon.", max_tokens=300)
    async with serving(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(servicer, s)) as channel:
        stub = llm_pb2_grpc.ConversationStub(channel)
        for cycle in range(200):
            call = stub.Generate(story)
            if cycle % 2:
                async for _ in call:
                    break  # cut after the first token, as a barge-in does
            else:
                await asyncio.sleep(0)  # cut before it even started
            call.cancel()
        # The interrupted model answers the next request properly (it once came back empty).
        deltas = [d async for d in stub.Generate(ask("Say hello.", max_tokens=8))]
    assert probed.probe.overlaps == 0, f"{probed.probe.overlaps} times two threads were inside the model"
    assert probed.probe.entries >= 100
    assert "".join(d.text for d in deltas).strip(), deltas
    assert servicer.pool.free == 1
    assert servicer.runtime.slots.active == 0


async def test_a_busy_model_queues_requests_and_a_full_queue_refuses(generator: LlamaCppGenerator) -> None:
    servicer = servicer_for(generator, LlmSettings(queue_timeout_s=30))
    servicer.runtime.slots.queue_limit = 1  # one served, one waiting, the third refused
    async with serving(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(servicer, s)) as channel:
        stub = llm_pb2_grpc.ConversationStub(channel)
        first = stub.Generate(ask("Tell me a long story.", max_tokens=40))
        await anext(aiter(first))
        second = asyncio.create_task(_text(stub.Generate(ask("Say hi.", max_tokens=4))))
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _text(stub.Generate(ask("And me?", max_tokens=4)))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "full" in (refused.value.details() or "")
        await _text(first)
        assert (await second).strip(), "the queued request was served once the model was free"


async def _text(call: grpc.aio.UnaryStreamCall) -> str:  # type: ignore[type-arg]
    return "".join([d.text async for d in call])
