"""Test helpers shared by the services' unit tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import grpc

from parley.server import SERVER_OPTIONS


@contextlib.asynccontextmanager
async def serving(add_servicer: Callable[[grpc.aio.Server], None]) -> AsyncIterator[grpc.aio.Channel]:
    """A real gRPC server on a free loopback port, and a channel to it."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    add_servicer(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(0)
