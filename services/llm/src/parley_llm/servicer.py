from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
from prometheus_client import Histogram

from parley.llm.v1 import llm_pb2, llm_pb2_grpc
from parley.models import ModelPool, PoolTimeout
from parley.server import ServiceRuntime
from parley_llm.config import LlmSettings
from parley_llm.engines.base import PREFILL, ChatMessage, TextGenerator
from parley_llm.prompt import spoken_turns
from parley_llm.shaping import SpeechShaper

FIRST_TOKEN_SECONDS = Histogram(
    "parley_llm_first_token_seconds", "Request to first token", buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5)
)
PREFILL_SECONDS = Histogram(
    "parley_llm_prefill_seconds",
    "Request to a prefill's answer (prefill_only): read into the cache, or skipped while other replies were decoded",
    buckets=(0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5),
)
TOKENS_PER_SECOND = Histogram("parley_llm_tokens_per_second", "Generation speed", buckets=(5, 10, 20, 40, 80, 160, 320))
ROLES = {"system", "user", "assistant"}


class ConversationServicer(llm_pb2_grpc.ConversationServicer):
    def __init__(self, settings: LlmSettings, runtime: ServiceRuntime) -> None:
        self.settings = settings
        self.runtime = runtime
        # The streams the model copies serve at once: a copy, or one sequence of a batched
        # copy (added once per sequence); a reply borrows one for its whole stream.
        self.pool: ModelPool[TextGenerator] = ModelPool("llm")

    def _messages(self, request: llm_pb2.GenerateRequest) -> list[ChatMessage] | str:
        """The validated conversation, or the reason it is refused."""
        if not request.messages:
            return "messages is empty"
        if sum(len(m.content) for m in request.messages) > self.settings.max_request_chars:
            return f"conversation exceeds {self.settings.max_request_chars} characters"
        messages = [ChatMessage(m.role, m.content) for m in request.messages]
        unknown = {m.role for m in messages} - ROLES
        if unknown:
            return f"unknown role(s) {sorted(unknown)}; use system, user or assistant"
        if messages[-1].role != "user" or not messages[-1].content.strip():
            return "the last message must be the user's, with words in it"
        messages = spoken_turns(messages)
        if not any(m.role == "system" for m in messages):
            messages.insert(0, ChatMessage("system", self.settings.system_prompt))
        return messages

    async def Generate(  # noqa: N802 (gRPC method name)
        self, request: llm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.TextDelta]:
        if not self.runtime.slots.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "LLM model is still loading")
        messages = self._messages(request)
        if isinstance(messages, str):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, messages)
            return
        max_tokens = request.max_tokens or self.settings.max_tokens
        if request.prefill_only:
            async for done in self._prefill(messages, max_tokens, context):
                yield done
            return
        temperature = request.temperature if request.temperature >= 0 else self.settings.temperature
        async with self.runtime.stream("Generate", context):
            started = time.perf_counter()
            first_at: float | None = None
            tokens = 0
            shaper = SpeechShaper() if self.settings.speech_shaping else None
            try:
                async with (
                    self.pool.lease(self.settings.queue_timeout_s) as model,
                    model.stream(lambda generator: generator.stream(messages, max_tokens, temperature)) as deltas,
                ):
                    async for delta in deltas:
                        if first_at is None:
                            first_at = time.perf_counter()
                            FIRST_TOKEN_SECONDS.observe(first_at - started)
                        tokens = delta.completion_tokens
                        text = delta.text
                        if shaper is not None:
                            text = shaper.push(text) + (shaper.flush() if delta.finish_reason else "")
                        if text or delta.finish_reason:
                            yield llm_pb2.TextDelta(
                                text=text,
                                finish_reason=delta.finish_reason,
                                completion_tokens=delta.completion_tokens,
                                prompt_tokens=delta.prompt_tokens,
                            )
            except PoolTimeout as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            if first_at is not None and tokens > 1:
                TOKENS_PER_SECOND.observe((tokens - 1) / max(1e-6, time.perf_counter() - first_at))

    async def _prefill(
        self, messages: list[ChatMessage], max_tokens: int, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.TextDelta]:
        """A conversation read into a model copy's cache (GenerateRequest.prefill_only): one delta when done.

        `max_tokens` as the reply will ask: a long history is cut to fit the same way."""
        if not self.settings.reads_prefills:
            yield llm_pb2.TextDelta(finish_reason=PREFILL)
            return
        async with self.runtime.stream("Prefill", context):
            started = time.perf_counter()
            try:
                async with (
                    self.pool.lease(self.settings.queue_timeout_s) as model,
                    model.stream(lambda generator: generator.prefill(messages, max_tokens)) as deltas,
                ):
                    async for delta in deltas:
                        if delta.finish_reason:
                            PREFILL_SECONDS.observe(time.perf_counter() - started)
                            yield llm_pb2.TextDelta(
                                finish_reason=delta.finish_reason, prompt_tokens=delta.prompt_tokens
                            )
            except PoolTimeout as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
