from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from parley.threads import iterate_in_thread


async def test_items_arrive_in_order() -> None:
    assert [x async for x in iterate_in_thread(lambda: iter(range(5)))] == [0, 1, 2, 3, 4]


async def test_errors_reach_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        async for _ in iterate_in_thread(failing):
            pass


async def test_cancelling_the_consumer_stops_the_generator() -> None:
    closed = threading.Event()
    produced: list[int] = []

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                time.sleep(0.01)
                produced.append(n)
                yield n
                n += 1
        finally:
            closed.set()

    async def consume() -> None:
        async for _ in iterate_in_thread(endless):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # By the time the cancelled consumer returns, the model loop has stopped.
    assert closed.is_set()
    count = len(produced)
    await asyncio.sleep(0.05)
    assert len(produced) == count
