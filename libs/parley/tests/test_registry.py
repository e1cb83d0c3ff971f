"""Registration and discovery on a real nats-server, including a NATS restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from parley.registry import InstanceLoad, InstanceRecord, StreamSlots, connect, discover, register
from tests.stack import free_port, start_nats


@pytest.fixture
def nats_port() -> Iterator[int]:
    port = free_port()
    process = start_nats(port)
    yield port
    process.terminate()
    process.wait()


async def test_an_instance_is_found_with_its_address_and_load(nats_port: int) -> None:
    url = f"nats://127.0.0.1:{nats_port}"
    service_nc = await connect(url, "test-service")
    slots = StreamSlots(capacity=3, active=1, ready=True)
    await register(
        service_nc,
        kind="tts",
        version="0.1.0",
        address="10.1.2.3:50053",
        metadata={"engine": "piper"},
        load=slots.snapshot,
    )
    gateway_nc = await connect(url, "test-gateway")
    [record] = await discover(gateway_nc, "tts", 0.3)
    assert (record.address, record.engine, record.ready, record.active, record.capacity) == (
        "10.1.2.3:50053",
        "piper",
        True,
        1,
        3,
    )
    slots.active = 2  # load is read at request time
    [record] = await discover(gateway_nc, "tts", 0.3)
    assert record.active == 2
    assert await discover(gateway_nc, "asr", 0.2) == []
    await service_nc.close()
    await gateway_nc.close()


async def test_registration_survives_a_nats_restart() -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    first = start_nats(port)
    service_nc = await connect(url, "test-service")
    await register(
        service_nc,
        kind="vad",
        version="0.1.0",
        address="127.0.0.1:1",
        metadata={},
        load=StreamSlots(capacity=1, ready=True).snapshot,
    )
    # Stop the only NATS server and start a new one on the same port.
    first.terminate()
    await asyncio.to_thread(first.wait)
    replacement = start_nats(port)
    try:
        gateway_nc = await connect(url, "test-gateway")
        found: list[InstanceRecord] = []
        for _ in range(50):
            found = await discover(gateway_nc, "vad", 0.2)
            if found:
                break
        assert found, "the service did not re-register after NATS came back"
        await gateway_nc.close()
    finally:
        await service_nc.close()
        replacement.terminate()
        await asyncio.to_thread(replacement.wait)


def test_foreign_stats_replies_are_ignored() -> None:
    assert InstanceRecord.from_stats("tts", {"id": "x", "endpoints": []}) is None
    good = {
        "id": "abc",
        "version": "1.0.0",
        "metadata": {"grpc_address": "h:1"},
        "endpoints": [{"data": InstanceLoad(ready=False, active=0, capacity=2).model_dump()}],
    }
    record = InstanceRecord.from_stats("tts", good)
    assert record is not None and not record.ready
