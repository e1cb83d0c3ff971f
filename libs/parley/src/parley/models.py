"""Model instances, the one thread each is used from, and how a call borrows one.

Model libraries (llama.cpp, Piper, CTranslate2, onnxruntime) block and are not
safe to call from two threads at once: one `Llama` used by two threads crashes
the process. So every model instance in a service lives in a `ModelPool`, and:

- each instance has its own worker thread; all work on it runs there, one job
  after another, so no two threads can ever be inside one instance. The one
  exception is a model object that is itself safe to call from many threads
  (the LLM's batched engine: its own scheduler thread alone touches llama.cpp,
  callers only queue work for it): it is added once per stream it serves, so
  the pool's entries, its `busy` gauge and its "all busy" refusals count
  streams, not copies;
- a call borrows an instance with `async with pool.lease(timeout_s) as lease`
  and waits, in arrival order, while all are busy (up to `timeout_s`);
- `lease.run(fn)` runs one blocking call, `lease.stream(fn)` pulls a blocking
  generator item by item; when the caller is cancelled (barge-in, a client gone)
  the generator is told to stop before its next item, and **the instance goes
  back to the pool only once its worker has really finished** — the release is
  triggered by the worker's own completion, not by the caller, so a cancelled
  or abandoned caller can never hand out a model that is still computing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import Gauge, Histogram

M = TypeVar("M")
T = TypeVar("T")
R = TypeVar("R")

MODELS_BUSY = Gauge("parley_models_busy", "Model instances lent out", ["kind"])
MODEL_WAIT_SECONDS = Histogram(
    "parley_model_wait_seconds",
    "Time a call waited for a free model instance",
    ["kind"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)

_DONE = object()


class PoolTimeout(Exception):
    """No instance became free in time."""


@dataclass(eq=False)
class _Instance(Generic[M]):
    model: M
    thread: concurrent.futures.ThreadPoolExecutor  # its one worker thread


class ModelPool(Generic[M]):
    """The model instances of one service; see the module docstring."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._instances: list[_Instance[M]] = []
        self._free: deque[_Instance[M]] = deque()
        self._waiters: deque[asyncio.Future[_Instance[M]]] = deque()

    @property
    def size(self) -> int:
        return len(self._instances)

    @property
    def free(self) -> int:
        return len(self._free)

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def add(self, model: M) -> None:
        """Put a loaded instance in service (call it on the event loop)."""
        instance = _Instance(
            model,
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{self.kind}-model-{len(self._instances)}"),
        )
        self._instances.append(instance)
        self._hand_over(instance)

    def _hand_over(self, instance: _Instance[M]) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(instance)
                return
        self._free.append(instance)
        MODELS_BUSY.labels(self.kind).set(self.size - self.free)

    async def _acquire(self, timeout_s: float | None) -> _Instance[M]:
        if self._free and not self.waiting:
            instance = self._free.popleft()
        else:
            if timeout_s is not None and timeout_s <= 0:
                raise PoolTimeout(f"all {self.size} {self.kind} model instances are busy")
            waiter: asyncio.Future[_Instance[M]] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                async with asyncio.timeout(timeout_s):
                    instance = await asyncio.shield(waiter)
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():
                    self._hand_over(waiter.result())  # handed to us as we gave up: pass it on
                else:
                    waiter.cancel()
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout(
                        f"all {self.size} {self.kind} model instances stayed busy for {timeout_s:g} s"
                    ) from None
                raise
            MODEL_WAIT_SECONDS.labels(self.kind).observe(loop.time() - started)
        MODELS_BUSY.labels(self.kind).set(self.size - self.free)
        return instance

    @contextlib.asynccontextmanager
    async def lease(self, timeout_s: float | None = None) -> AsyncIterator[Lease[M]]:
        """Borrow an instance, waiting up to `timeout_s` (None: forever; 0: not at all) for one."""
        instance = await self._acquire(timeout_s)
        lease = Lease(self, instance)
        try:
            yield lease
        finally:
            await lease.close()


class Lease(Generic[M]):
    """One instance, borrowed; its jobs run one at a time on the instance's thread."""

    def __init__(self, pool: ModelPool[M], instance: _Instance[M]) -> None:
        self._pool = pool
        self._instance = instance
        self._loop = asyncio.get_running_loop()
        self._job: concurrent.futures.Future[object] | None = None
        self._closed = False
        self._returned = False

    def _submit(self, work: Callable[[M], R]) -> concurrent.futures.Future[R]:
        if self._closed:
            raise RuntimeError("lease already returned")
        if self._job is not None and not self._job.done():
            raise RuntimeError("one job at a time per lease")
        instance = self._instance
        job = instance.thread.submit(work, instance.model)
        self._job = job  # type: ignore[assignment]
        job.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._maybe_return))
        return job

    def _maybe_return(self) -> None:
        if self._closed and not self._returned and (self._job is None or self._job.done()):
            self._returned = True
            self._pool._hand_over(self._instance)

    async def run(self, work: Callable[[M], R], stop: threading.Event | None = None) -> R:
        """`work(model)` on the instance's thread. Cancelled: sets `stop` and waits for `work` to return."""
        job = asyncio.wrap_future(self._submit(work))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            if stop is not None:
                stop.set()
            await _wait_through_cancellation(job)
            raise

    @contextlib.asynccontextmanager
    async def stream(self, make_iterator: Callable[[M], Iterator[T]]) -> AsyncIterator[AsyncIterator[T]]:
        """Items of `make_iterator(model)` as they come; leaving the block stops the generator and waits for it."""
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        loop = self._loop

        def pump(model: M) -> None:
            iterator = make_iterator(model)
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
                    close()  # llama.cpp and Piper stop computing here
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        async def items() -> AsyncGenerator[T]:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]

        job = asyncio.wrap_future(self._submit(pump))
        consumer = items()
        try:
            yield consumer
        finally:
            stop.set()
            await consumer.aclose()
            await _wait_through_cancellation(job)

    async def close(self) -> None:
        """Mark the lease returned; the instance goes back once its last job finished (awaited here)."""
        self._closed = True
        self._maybe_return()
        if self._job is not None and not self._job.done():
            await _wait_through_cancellation(asyncio.wrap_future(self._job))


async def _wait_through_cancellation(future: asyncio.Future[Any]) -> None:
    """Wait until `future` is done even if we are cancelled meanwhile; re-raise that cancellation after."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                break
            cancelled = True
        except BaseException:
            break  # its outcome is the job's business, reported elsewhere
    if not future.cancelled():
        future.exception()  # retrieved: its outcome was handled (or is moot) already
    if cancelled:
        raise asyncio.CancelledError
