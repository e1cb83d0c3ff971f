"""The reply's prompt read while the user speaks: one prefill at a time, the newest words next."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from parley.llm.v1 import llm_pb2
from parley_gateway.conversation.prefill import PromptPrefill
from parley_gateway.protocol import ErrorCode
from parley_gateway.routing.model_services import ServiceError


class SlowLlm:
    """Answers each prefill once the test lets it."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.finish = asyncio.Event()
        self.cancelled = 0
        self.fail = False

    async def generate(self, request: llm_pb2.GenerateRequest) -> AsyncIterator[llm_pb2.TextDelta]:
        assert request.prefill_only
        self.asked.append(request.messages[-1].content)
        if self.fail:
            raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE, "no LLM instance")
        try:
            await self.finish.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finish.clear()
        yield llm_pb2.TextDelta(finish_reason="prefill")


def prefill_for(llm: SlowLlm) -> PromptPrefill:
    def request_for(text: str) -> llm_pb2.GenerateRequest:
        return llm_pb2.GenerateRequest(messages=[llm_pb2.Message(role="user", content=text)])

    return PromptPrefill(llm, request_for)  # type: ignore[arg-type]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_prefill_at_a_time_and_only_the_newest_words_next() -> None:
    llm = SlowLlm()
    prefill = prefill_for(llm)
    prefill.heard(" What")
    await settle()
    prefill.heard("What time")  # while "What" is read
    prefill.heard("What time is")
    await settle()
    assert llm.asked == ["What"]
    llm.finish.set()
    await settle()
    assert llm.asked == ["What", "What time is"]
    llm.finish.set()
    await settle()
    prefill.heard("What time is")  # the same words again: read already
    prefill.heard("")
    await settle()
    assert llm.asked == ["What", "What time is"]
    await prefill.close()


async def test_a_starting_reply_takes_over_the_prefill_being_read_and_drops_what_waited() -> None:
    llm = SlowLlm()
    prefill = prefill_for(llm)
    assert prefill.hand_over() is None  # nothing read: the reply need not wait
    prefill.heard("What")
    await settle()
    prefill.heard("What time")
    reading = prefill.hand_over()
    assert reading is not None and not reading.done()
    llm.finish.set()
    await asyncio.wait_for(reading, 1)
    await settle()
    assert llm.cancelled == 0 and llm.asked == ["What"]  # "What time" was dropped
    prefill.heard("What")  # the next turn may say the same words: they are read again
    await settle()
    assert llm.asked == ["What", "What"]
    await prefill.close()
    assert llm.cancelled == 1


async def test_a_failed_prefill_leaves_the_next_to_go() -> None:
    llm = SlowLlm()
    llm.fail = True
    prefill = prefill_for(llm)
    prefill.heard("What")
    await settle()
    llm.fail = False
    prefill.heard("What time")
    await settle()
    assert llm.asked == ["What", "What time"]
    await prefill.close()
