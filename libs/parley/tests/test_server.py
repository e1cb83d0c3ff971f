"""The gRPC server options every service uses."""

from __future__ import annotations

import grpc
import pytest

from parley.server import SERVER_OPTIONS


async def test_a_second_server_cannot_take_a_port_a_service_listens_on() -> None:
    first = grpc.aio.server(options=SERVER_OPTIONS)
    port = first.add_insecure_port("127.0.0.1:0")
    await first.start()
    try:
        second = grpc.aio.server(options=SERVER_OPTIONS)
        with pytest.raises(RuntimeError, match="Failed to bind"):
            second.add_insecure_port(f"127.0.0.1:{port}")
    finally:
        await first.stop(None)
