"""NATS is not a single point of failure: with it down, conversations go on."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import xmlrpc.client
from typing import Any

import pytest
from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped]

from tests.conversation_client import ConversationClient
from tests.stack import Stack

pytestmark = pytest.mark.integration
OUTAGE_S = 11.0  # what used to make every new turn fail with service_unavailable


def supervisor(stack: Stack) -> Any:
    """The stack's supervisord, over its control socket (as supervisorctl talks to it)."""
    transport = SupervisorTransport(None, None, f"unix://{stack.state_dir.resolve()}/supervisor.sock")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def readiness(stack: Stack) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{stack.url}/readyz", timeout=2) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


async def one_turn(conv: ConversationClient, text: str) -> None:
    after = len(conv.received.events)
    await conv.send_event({"type": "text.input", "text": text})
    done = await conv.wait_for("response.done", timeout_s=60, after=after)
    assert done["status"] == "completed" and conv.received.of_type("error") == [], conv.received.of_type("error")


async def test_conversations_go_on_while_nats_is_down(stack: Stack) -> None:
    control = supervisor(stack)
    async with ConversationClient(stack.ws_url) as earlier:
        await asyncio.to_thread(control.stopProcess, "nats")
        stopped = time.monotonic()
        try:
            await asyncio.sleep(3.0)  # well past the 1 s polls and the 3.5 s instance TTL's start
            status, body = await asyncio.to_thread(readiness, stack)
            assert status == 200 and "nats" in body, body  # ready, and says how
            await one_turn(earlier, "Are you still there?")
            async with ConversationClient(stack.ws_url) as newcomer:  # a session started during the outage
                await one_turn(newcomer, "Hello, is anyone home?")
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - stopped)))
            await one_turn(earlier, "And now?")
        finally:
            await asyncio.to_thread(control.startProcess, "nats")
    # Back: the registry answers again and everything is found through it.
    deadline = time.monotonic() + 30
    while True:
        status, body = await asyncio.to_thread(readiness, stack)
        if status == 200 and "nats" not in body:
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.25)
    with urllib.request.urlopen(f"{stack.url}/v1/services") as response:  # noqa: ASYNC210 (loopback)
        found = json.load(response)
    assert all(any(i["ready"] and i["serving"] for i in found[kind]) for kind in ("vad", "asr", "llm", "tts")), found
