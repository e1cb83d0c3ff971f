"""The model pool: one thread per instance, in-order waiting, and no instance handed out while it computes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from parley.models import ModelPool, PoolTimeout
from parley.testing import OverlapProbe


class ProbeModel:
    """A fake model whose every use is counted by an OverlapProbe."""

    def __init__(self, name: str = "m") -> None:
        self.name = name
        self.probe = OverlapProbe()
        self.closed = threading.Event()

    def tokens(self, count: int, delay_s: float = 0.002) -> Iterator[int]:
        try:
            with self.probe.entered():
                for n in range(count):
                    time.sleep(delay_s)  # computing, as llama.cpp would, between tokens
                    yield n
        finally:
            self.closed.set()

    def work(self, seconds: float, stop: threading.Event | None = None) -> str:
        with self.probe.entered():
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                time.sleep(0.001)
            return self.name


def pool_of(*models: ProbeModel) -> ModelPool[ProbeModel]:
    pool: ModelPool[ProbeModel] = ModelPool("test")
    for model in models:
        pool.add(model)
    return pool


async def test_items_arrive_in_order_and_errors_reach_the_caller() -> None:
    pool = pool_of(ProbeModel())
    async with pool.lease() as lease, lease.stream(lambda m: m.tokens(5)) as items:
        assert [x async for x in items] == [0, 1, 2, 3, 4]

    def failing(_: ProbeModel) -> Iterator[int]:
        yield 1
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        async with pool.lease() as lease, lease.stream(failing) as items:
            async for _ in items:
                pass
    assert pool.free == 1


async def test_a_cancelled_stream_stops_the_model_before_the_instance_is_free() -> None:
    model = ProbeModel()
    pool = pool_of(model)

    async def consume() -> None:
        async with pool.lease() as lease, lease.stream(lambda m: m.tokens(10_000)) as items:
            async for _ in items:
                pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # By the time the cancelled caller is gone, the generator was closed and the instance is back.
    assert model.closed.is_set() and model.probe.inside == 0
    assert pool.free == 1


async def test_an_abandoned_stream_keeps_its_instance_until_the_worker_stopped() -> None:
    """The LLM bug: a caller that walks away without closing must not free a computing model."""
    model = ProbeModel()
    pool = pool_of(model)
    lease_cm = pool.lease()
    lease = await lease_cm.__aenter__()
    stream_cm = lease.stream(lambda m: m.tokens(60, delay_s=0.005))
    items = await stream_cm.__aenter__()
    await anext(items)
    # The caller forgets the stream (never closes it) but returns the lease as if done.
    closing = asyncio.create_task(lease.close())
    await asyncio.sleep(0.02)
    assert model.probe.inside == 1 and pool.free == 0, "handed back while the model still computes"
    await closing  # waits for the worker: the generator runs to its end since nobody stopped it
    assert model.probe.inside == 0 and pool.free == 1
    await stream_cm.__aexit__(None, None, None)


async def test_rapid_cancel_then_request_never_overlaps_on_one_instance() -> None:
    models = [ProbeModel("a"), ProbeModel("b")]
    pool = pool_of(*models)

    async def cycle(i: int) -> None:
        async def consume() -> None:
            async with pool.lease(timeout_s=10) as lease, lease.stream(lambda m: m.tokens(1000)) as items:
                async for _ in items:
                    pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.001 * (i % 5))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    await asyncio.gather(*(cycle(i) for i in range(200)))
    assert [m.probe.overlaps for m in models] == [0, 0]
    # Each instance only ever ran on its own worker thread.
    assert [m.probe.thread_names for m in models] in (
        [{"test-model-0_0"}, {"test-model-1_0"}],
        [set(), {"test-model-1_0"}],
        [{"test-model-0_0"}, set()],
    ), [m.probe.thread_names for m in models]
    assert pool.free == 2


async def test_leaving_a_stream_early_frees_the_lease_for_its_next_job() -> None:
    model = ProbeModel()
    pool = pool_of(model)
    async with pool.lease() as lease:
        async with lease.stream(lambda m: m.tokens(10_000)) as items:
            await anext(items)
        # The generator was stopped and waited for: the same lease can run again at once.
        assert model.closed.is_set() and model.probe.inside == 0
        assert await lease.run(lambda m: m.work(0)) == "m"


async def test_callers_wait_in_order_and_time_out() -> None:
    pool = pool_of(ProbeModel())
    order: list[int] = []

    async def use(n: int) -> None:
        async with pool.lease(timeout_s=5) as lease:
            order.append(n)
            await lease.run(lambda m: m.work(0.02))

    await asyncio.gather(*(use(n) for n in range(4)))
    assert order == [0, 1, 2, 3]

    async with pool.lease() as lease:
        busy = asyncio.create_task(lease.run(lambda m: m.work(0.3)))
        with pytest.raises(PoolTimeout):
            async with pool.lease(timeout_s=0):
                pass
        started = time.monotonic()
        with pytest.raises(PoolTimeout, match="busy"):
            async with pool.lease(timeout_s=0.1):
                pass
        assert time.monotonic() - started < 0.25
        await busy
    assert pool.free == 1 and pool.waiting == 0


async def test_a_cancelled_run_sets_stop_and_waits_for_the_work() -> None:
    model = ProbeModel()
    pool = pool_of(model)
    stop = threading.Event()

    async def run() -> str:
        async with pool.lease() as lease:
            return await lease.run(lambda m: m.work(30, stop), stop)

    task = asyncio.create_task(run())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stop.is_set() and model.probe.inside == 0 and pool.free == 1
    assert time.monotonic() - started < 1


async def test_a_waiter_cancelled_as_it_is_served_passes_the_instance_on() -> None:
    pool = pool_of(ProbeModel())
    async with pool.lease() as lease:
        first = asyncio.create_task(_hold(pool))
        second = asyncio.create_task(_hold(pool))
        await asyncio.sleep(0.01)
        await lease.run(lambda m: m.work(0.01))
    # The instance went to `first` as we left; cancel it right then.
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert await asyncio.wait_for(second, 2) == "m"
    assert pool.free == 1


async def _hold(pool: ModelPool[ProbeModel]) -> str:
    async with pool.lease(timeout_s=5) as lease:
        return await lease.run(lambda m: m.work(0.01))
