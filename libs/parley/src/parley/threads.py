"""Run a blocking generator (a model's token or audio loop) off the event loop.

Model libraries stream through plain Python generators that block between
items. `iterate_in_thread` pulls such a generator in a worker thread and hands
items to the event loop as they come. When the consumer stops early (the gRPC
call is cancelled on barge-in), the worker sees the stop flag before its next
item, closes the generator — which makes llama.cpp and Piper stop computing —
and the consumer waits for that, so the model is free again when it returns.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


async def iterate_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def pump() -> None:
        iterator = make_iterator()
        try:
            for item in iterator:
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except BaseException as exc:  # handed to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    worker = loop.run_in_executor(None, pump)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        # Wait for the model to really stop, even when we are being cancelled.
        await asyncio.shield(worker)
