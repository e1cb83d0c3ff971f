"""The gateway's service calls: fail-over to another instance, and deadlines per message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from parley.llm.v1 import llm_pb2, llm_pb2_grpc
from parley.registry import InstanceRecord, ServiceEvent
from parley.testing import grpc_server
from parley_gateway.config import DiscoverySettings, ModelServiceSettings
from parley_gateway.protocol import ErrorCode
from parley_gateway.routing.discovery import Instance, ServiceDirectory
from parley_gateway.routing.model_services import GrpcServices, ServiceError
from tests.stack import free_port


class ScriptedLlm(llm_pb2_grpc.ConversationServicer):
    def __init__(self, name: str, refuse: grpc.StatusCode | None = None) -> None:
        self.name = name
        self.refuse = refuse
        self.calls = 0

    async def Generate(  # noqa: N802
        self, request: llm_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[llm_pb2.TextDelta]:
        self.calls += 1
        if self.refuse is not None:
            await context.abort(self.refuse, f"{self.name} refuses")
        yield llm_pb2.TextDelta(text=f"from {self.name}", finish_reason="stop")


def directory_of(*addresses: tuple[str, str, int]) -> ServiceDirectory:
    directory = ServiceDirectory(nc=None, settings=DiscoverySettings(1, 0.1, 3, 300))  # type: ignore[arg-type]
    for instance_id, address, active in addresses:
        record = InstanceRecord(
            id=instance_id, kind="llm", address=address, version="0", ready=True, active=active, capacity=1
        )
        directory.instances["llm"][instance_id] = Instance(record, last_seen=time.monotonic(), serving=True)
    return directory


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [message async for message in stream]


REQUEST = llm_pb2.GenerateRequest(messages=[llm_pb2.Message(role="user", content="hi")])


async def test_a_full_instance_hands_the_stream_to_another() -> None:
    full, free = ScriptedLlm("full", refuse=grpc.StatusCode.RESOURCE_EXHAUSTED), ScriptedLlm("free")
    async with (
        grpc_server(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(full, s)) as full_address,
        grpc_server(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(free, s)) as free_address,
    ):
        # The full one reports less load, so it is tried first.
        directory = directory_of(("a", full_address, 0), ("b", free_address, 1))
        services = GrpcServices(directory, ModelServiceSettings(first_answer_timeout_s=5, idle_timeout_s=5))
        deltas = await collect(services.generate(REQUEST))
        await directory.close()
    assert [d.text for d in deltas] == ["from free"]
    assert (full.calls, free.calls) == (1, 1)
    assert "a" in directory.instances["llm"], "a full instance is not forgotten, only skipped"


async def test_a_gone_instance_is_forgotten_and_the_next_one_answers() -> None:
    alive = ScriptedLlm("alive")
    async with grpc_server(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(alive, s)) as address:
        directory = directory_of(("gone", f"127.0.0.1:{free_port()}", 0), ("alive", address, 1))
        services = GrpcServices(directory, ModelServiceSettings(first_answer_timeout_s=5, idle_timeout_s=5))
        deltas = await collect(services.generate(REQUEST))
        await directory.close()
    assert [d.text for d in deltas] == ["from alive"]
    assert "gone" not in directory.instances["llm"]


async def test_when_every_instance_is_full_the_error_says_so() -> None:
    full = ScriptedLlm("full", refuse=grpc.StatusCode.RESOURCE_EXHAUSTED)
    async with grpc_server(lambda s: llm_pb2_grpc.add_ConversationServicer_to_server(full, s)) as address:
        directory = directory_of(("a", address, 0))
        services = GrpcServices(directory, ModelServiceSettings(first_answer_timeout_s=5, idle_timeout_s=5))
        with pytest.raises(ServiceError) as failed:
            await collect(services.generate(REQUEST))
        await directory.close()
    assert failed.value.code is ErrorCode.SERVICE_UNAVAILABLE and "full" in failed.value.message


async def test_a_service_that_keeps_crashing_is_named_in_the_error() -> None:
    directory = directory_of()
    for n in range(3):
        directory.on_event(ServiceEvent(event="started", kind="llm", id=f"i{n}", address="10.0.0.1:50052"))
    services = GrpcServices(directory, ModelServiceSettings(first_answer_timeout_s=5, idle_timeout_s=5))
    with pytest.raises(ServiceError) as failed:
        await collect(services.generate(REQUEST))
    assert failed.value.code is ErrorCode.SERVICE_CRASHED
    assert "crashed 2 time(s)" in failed.value.message, failed.value.message
    assert directory.troubled()["llm"]["crashes"] == 2


def test_clean_stops_and_failed_loads_are_not_crashes() -> None:
    directory = directory_of()
    directory.on_event(ServiceEvent(event="started", kind="tts", id="a", address="h:1"))
    directory.on_event(ServiceEvent(event="stopping", kind="tts", id="a", address="h:1"))
    directory.on_event(ServiceEvent(event="started", kind="tts", id="b", address="h:1"))
    assert directory.troubled() == {}
    directory.on_event(ServiceEvent(event="failed", kind="tts", id="b", address="h:1", error="no such voice"))
    assert directory.troubled()["tts"]["failed_starts"] == 1
    assert "no such voice" in str(directory.troubled()["tts"]["last_problem"])


async def paced(delays: list[float], then_hang: bool = False) -> AsyncIterator[int]:
    for n, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield n
    if then_hang:
        await asyncio.sleep(3600)


async def timed(stream: AsyncIterator[int]) -> tuple[list[int], ServiceError | None, float]:
    started, got = time.monotonic(), []
    try:
        async for n in stream:
            got.append(n)
    except ServiceError as exc:
        return got, exc, time.monotonic() - started
    return got, None, time.monotonic() - started


def deadlines(owed_since: Callable[[], float | None], stream: AsyncIterator[int]) -> AsyncIterator[int]:
    services = GrpcServices(directory_of(), ModelServiceSettings(first_answer_timeout_s=0.6, idle_timeout_s=0.3))
    return services._with_deadlines("tts", stream, owed_since)


async def test_a_long_answer_is_fine_as_long_as_each_message_comes_in_time() -> None:
    now = time.monotonic()
    got, error, took = await timed(deadlines(lambda: now, paced([0.1] * 12)))
    assert error is None and got == list(range(12)) and took > 1.0  # longer than every deadline


async def test_a_silent_service_times_out_per_message() -> None:
    now = time.monotonic()
    got, error, took = await timed(deadlines(lambda: now, paced([0.05, 0.05], then_hang=True)))
    assert got == [0, 1] and error is not None and error.code is ErrorCode.SERVICE_TIMEOUT
    assert 0.3 <= took < 0.9
    later = time.monotonic()
    got, error, took = await timed(deadlines(lambda: later, paced([], then_hang=True)))
    assert error is not None and 0.6 <= took < 1.2  # the first answer may take longer (a queue)


async def test_nothing_is_owed_before_the_request_is_complete() -> None:
    ended_at: list[float] = []
    owed = lambda: ended_at[0] if ended_at else None  # noqa: E731
    stream = deadlines(owed, paced([], then_hang=True))
    task = asyncio.create_task(timed(stream))
    await asyncio.sleep(1.0)  # the user is still speaking: no deadline runs
    assert not task.done()
    ended_at.append(time.monotonic())  # the end marker leaves now
    got, error, took = await task
    assert got == []
    assert error is not None and error.code is ErrorCode.SERVICE_TIMEOUT and took >= 1.6
