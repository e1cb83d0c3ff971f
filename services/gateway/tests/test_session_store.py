"""The session store on a real NATS JetStream: a resume that comes before the store is bound waits for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from parley_gateway.conversation.session import new_session_id
from parley_gateway.web.session_store import SessionRecord, SessionStore
from tests.stack import free_port, start_nats


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server = start_nats(port, tmp_path)
    yield f"nats://127.0.0.1:{port}"
    server.kill()
    server.wait()


async def test_a_resume_before_the_store_is_bound_waits_and_finds_its_session(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        earlier = SessionStore(ttl_s=60)  # the gateway before its restart wrote the session
        await earlier.bind(nc)
        record = SessionRecord(
            id=new_session_id(), token_sha256="0" * 64, options={}, turns=[], next_seq=0, owner="gw_old", updated_at=0
        )
        await earlier.save(record, None)

        restarted = SessionStore(ttl_s=60)
        assert await restarted.load(record.id) is None  # unbound: it would say "not found"

        async def bind_a_moment_later() -> None:
            await asyncio.sleep(0.3)
            await restarted.bind(nc)

        binding = asyncio.create_task(bind_a_moment_later())
        started = time.monotonic()
        assert await restarted.wait_bound(5) is True
        assert time.monotonic() - started < 2, "the wait ends when the store is bound, not at its limit"
        found = await restarted.load(record.id)
        assert found is not None and found[0].id == record.id
        await binding
        assert await SessionStore(ttl_s=60).wait_bound(0.2) is False  # never bound: answers in time
    finally:
        await nc.close()
