"""Test helpers shared by the services' unit tests."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import grpc

from parley.server import SERVER_OPTIONS

T = TypeVar("T")


class OverlapProbe:
    """Counts the moments two threads are inside what it wraps; tests wrap model engines in it."""

    def __init__(self) -> None:
        self.inside = 0
        self.overlaps = 0
        self.entries = 0
        self.thread_names: set[str] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        with self._lock:
            self.inside += 1
            self.entries += 1
            self.overlaps += self.inside > 1
            self.thread_names.add(threading.current_thread().name)
        try:
            yield
        finally:
            with self._lock:
                self.inside -= 1

    def through(self, items: Iterator[T]) -> Iterator[T]:
        """`items`, counted as inside from the first item to the generator's end or close."""
        with self.entered():
            yield from items


@contextlib.asynccontextmanager
async def grpc_server(add_servicer: Callable[[grpc.aio.Server], None]) -> AsyncIterator[str]:
    """A real gRPC server on a free loopback port; yields its address."""
    server = grpc.aio.server(options=[*SERVER_OPTIONS, ("grpc.max_receive_message_length", 32 * 1024 * 1024)])
    add_servicer(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def serving(add_servicer: Callable[[grpc.aio.Server], None]) -> AsyncIterator[grpc.aio.Channel]:
    """A real gRPC server on a free loopback port, and a channel to it."""
    async with grpc_server(add_servicer) as address, grpc.aio.insecure_channel(address) as channel:
        yield channel


def chunked(text: str, rng: random.Random, longest: int) -> list[str]:
    """`text` cut into random pieces of 1..`longest` characters, as a model's stream might deliver it."""
    pieces: list[str] = []
    while text:
        size = rng.randint(1, longest)
        pieces.append(text[:size])
        text = text[size:]
    return pieces
