"""A second instance joins through NATS, takes load, and is forgotten when it dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from parley_gateway.client import ConversationClient
from tests.stack import Stack, free_port

pytestmark = pytest.mark.integration


def tts_instances(stack: Stack) -> list[dict[str, object]]:
    with urllib.request.urlopen(f"{stack.url}/v1/services") as response:
        return list(json.load(response)["tts"])


async def wait_for_instances(stack: Stack, count: int, timeout_s: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [i for i in await asyncio.to_thread(tts_instances, stack) if i["ready"]]
        if len(found) == count:
            return found
        await asyncio.sleep(0.25)
    raise AssertionError(f"expected {count} ready tts instances, have {await asyncio.to_thread(tts_instances, stack)}")


async def test_a_second_tts_instance_joins_and_a_killed_one_is_forgotten(stack: Stack) -> None:
    env = dict(os.environ)
    env.update(
        PARLEY_NATS_URL=stack.nats_url,
        PARLEY_TTS_PORT=str(free_port()),
        PARLEY_TTS_METRICS_PORT="0",
        PARLEY_STATE_DIR=str(stack.state_dir),
    )
    extra = await asyncio.create_subprocess_exec(sys.executable, "-m", "parley_tts", env=env, stderr=subprocess.DEVNULL)
    try:
        instances = await wait_for_instances(stack, 2, timeout_s=60)
        assert len({i["address"] for i in instances}) == 2
        # Kill it without a goodbye: the gateway must notice through NATS alone.
        extra.send_signal(signal.SIGKILL)
        await extra.wait()
        started = time.monotonic()
        [survivor] = await wait_for_instances(stack, 1, timeout_s=10)
        assert survivor["address"] == f"127.0.0.1:{stack.ports['tts']}"
        assert time.monotonic() - started < 8
        # Conversations go on, on the instance that is left.
        async with ConversationClient(stack.ws_url) as conv:
            await conv.send_event({"type": "text.input", "text": "Are you still there?"})
            done = await conv.wait_for("response.done", timeout_s=60)
        assert done["status"] == "completed" and conv.received.audio
    finally:
        if extra.returncode is None:
            extra.kill()
            await extra.wait()
