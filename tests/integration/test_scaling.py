"""A second instance joins through NATS, takes load, and is forgotten when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.conversation_client import ConversationClient
from tests.speech import silence, speak
from tests.stack import Stack, free_port, listening_process

pytestmark = pytest.mark.integration


def services(stack: Stack) -> dict[str, Any]:
    with urllib.request.urlopen(f"{stack.url}/v1/services") as response:
        return dict(json.load(response))


def tts_instances(stack: Stack) -> list[dict[str, object]]:
    return list(services(stack)["tts"])


def extra_tts(stack: Stack, port: int, **env: str) -> dict[str, str]:
    """The environment of one more TTS instance joining the stack's NATS."""
    return {
        **os.environ,
        "PARLEY_NATS_URL": stack.nats_url,
        "PARLEY_TTS_PORT": str(port),
        "PARLEY_TTS_METRICS_PORT": "0",
        "PARLEY_TTS_INSTANCES": "1",
        "PARLEY_STATE_DIR": str(stack.state_dir),
        **env,
    }


async def until(stack: Stack, check: Callable[[dict[str, Any]], bool], timeout_s: float) -> None:
    """Poll /v1/services until `check` holds for it."""
    deadline = time.monotonic() + timeout_s
    while not check(found := await asyncio.to_thread(services, stack)):
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {found}"
        await asyncio.sleep(0.25)


def crashing(found: dict[str, Any], kind: str) -> dict[str, Any]:
    return dict(found["crashing"].get(kind, {}))


async def wait_for_instances(stack: Stack, count: int, timeout_s: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [i for i in await asyncio.to_thread(tts_instances, stack) if i["ready"]]
        if len(found) == count:
            return found
        await asyncio.sleep(0.25)
    raise AssertionError(f"expected {count} ready tts instances, have {await asyncio.to_thread(tts_instances, stack)}")


async def test_a_second_tts_instance_joins_and_a_killed_one_is_forgotten(stack: Stack) -> None:
    env = extra_tts(stack, free_port())
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


async def test_an_instance_that_dies_and_comes_back_is_reported_as_crashing(stack: Stack) -> None:
    """What a crash loop looks like from the gateway: started, gone without a goodbye, started again."""
    env = extra_tts(stack, free_port())
    for _ in range(2):
        extra = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "parley_tts", env=env, stderr=subprocess.DEVNULL
        )
        await wait_for_instances(stack, 2, timeout_s=60)
        extra.send_signal(signal.SIGKILL)
        await extra.wait()
    await until(stack, lambda found: crashing(found, "tts").get("crashes", 0) >= 2, timeout_s=15)
    with urllib.request.urlopen(f"{stack.url}/readyz") as response:  # noqa: ASYNC210 (instant, loopback)
        ready = json.load(response)
    # Still ready (the stack's own instance serves), and it says what keeps crashing.
    assert ready["status"] == "ready" and ready["crashing"]["tts"]["crashes"] >= 2, ready


async def test_an_instance_that_cannot_load_says_why(stack: Stack) -> None:
    env = extra_tts(stack, free_port(), PARLEY_TTS_DEFAULT_VOICE="nobody")
    broken = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley_tts", env=env, stderr=subprocess.DEVNULL
    )
    assert await asyncio.wait_for(broken.wait(), timeout=60) != 0
    await until(stack, lambda found: "nobody" in str(crashing(found, "tts").get("last_problem")), timeout_s=15)
    assert crashing(await asyncio.to_thread(services, stack), "tts")["failed_starts"] >= 1


async def test_eight_users_speaking_at_once_all_get_answers(stack: Stack) -> None:
    """Busy services queue the streams (or send them elsewhere): no user's turn is dropped."""
    questions = [
        "What is the capital city of France?",
        "How many days are there in a week?",
        "What is the weather usually like in summer?",
        "Tell me a fun fact about elephants.",
        "What time does the sun usually set?",
        "How do I make a cup of green tea?",
        "Where is the nearest train station?",
        "Why is the sky blue during the day?",
    ]

    async def user(index: int, question: bytes) -> dict[str, Any]:
        async with ConversationClient(stack.ws_url) as conv:
            await conv.stream_audio(silence(0.2 + 0.1 * index), realtime=True)
            await conv.stream_audio(question, realtime=True)
            mic = asyncio.create_task(conv.stream_audio(silence(60.0), realtime=True))
            try:
                done = await conv.wait_for("response.done", timeout_s=90)
            finally:
                mic.cancel()
            return {"done": done, "errors": conv.received.of_type("error"), "audio": len(conv.received.audio)}

    spoken = [speak(q) for q in questions]
    results = await asyncio.gather(*(user(i, pcm) for i, pcm in enumerate(spoken)))
    assert [r["errors"] for r in results] == [[]] * 8
    assert all(r["done"]["status"] == "completed" and r["audio"] for r in results), results


async def test_a_gateway_stopped_with_sigterm_lets_the_live_turn_finish(stack: Stack, tmp_path: Path) -> None:
    """Draining: no new session; the live one gets its whole reply, then `session.ended` and 1012 (reconnect)."""
    port = free_port()
    env = {
        **os.environ,
        "PARLEY_NATS_URL": stack.nats_url,
        "PARLEY_GATEWAY_PORT": str(port),
        "PARLEY_STATE_DIR": str(tmp_path),
        "PARLEY_GATEWAY_DRAIN_S": "60",
    }
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "parley_gateway", env=env, stderr=subprocess.DEVNULL
    )
    url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/conversation"
    try:
        await until_ready(url, lambda status, _: status == 200, timeout_s=60)
        async with ConversationClient(ws_url) as conv:
            await conv.send_event({"type": "text.input", "text": "Tell me a short story about a cat and a boat."})
            await conv.wait_for("response.audio.started", timeout_s=60)
            gateway.send_signal(signal.SIGTERM)
            await until_ready(url, lambda status, body: status == 503 and body["status"] == "draining", timeout_s=10)
            async with websockets.connect(ws_url) as late:
                refused = json.loads(await late.recv())
                assert refused["code"] == "gateway_draining", refused
                with pytest.raises(websockets.ConnectionClosed):
                    await late.recv()
                assert late.close_code == 1012
            done = await conv.wait_for("response.done", timeout_s=60)
            ended = await conv.wait_for("session.ended", timeout_s=30)
            assert done["status"] == "completed" and conv.received.audio
            assert ended["reason"] == "gateway_draining"
            await asyncio.wait_for(conv.ws.wait_closed(), timeout=5)
            assert conv.ws.close_code == 1012
            assert conv.received.of_type("error") == []
        assert await asyncio.wait_for(gateway.wait(), timeout=30) == 0
    finally:
        if gateway.returncode is None:
            gateway.kill()
            await gateway.wait()


async def until_ready(url: str, check: Callable[[int, dict[str, Any]], bool], timeout_s: float) -> None:
    """Poll /readyz until `check(status, body)` holds."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                response = await http.get(f"{url}/readyz")
                if check(response.status_code, response.json()):
                    return
            assert time.monotonic() < deadline, f"/readyz not as expected within {timeout_s} s"
            await asyncio.sleep(0.1)


async def test_a_tts_instance_killed_mid_reply_is_replaced_and_the_next_turn_works(stack: Stack) -> None:
    """With a second instance present, the reply goes on there from the sentence that was cut."""
    env = extra_tts(stack, free_port())
    extra = await asyncio.create_subprocess_exec(sys.executable, "-m", "parley_tts", env=env, stderr=subprocess.DEVNULL)
    try:
        await wait_for_instances(stack, 2, timeout_s=60)
        async with ConversationClient(stack.ws_url) as conv:
            await conv.send_event(
                {"type": "text.input", "text": "Tell me a long story about a lighthouse keeper and a storm."}
            )
            await conv.wait_for("response.audio.started", timeout_s=60)
            holder = next(i for i in await asyncio.to_thread(tts_instances, stack) if i["held_by_gateway"])
            os.kill(listening_process(int(str(holder["address"]).rpartition(":")[2])), signal.SIGKILL)
            killed_at = time.perf_counter()  # the clock ConversationClient stamps arrivals with
            done = await conv.wait_for("response.done", timeout_s=90)
            errors = conv.received.of_type("error")
            # Either the reply was finished by the other instance, or it failed clearly and at once.
            if done["status"] != "completed":
                assert errors and conv.arrival("error") - killed_at < 1.0, (done, errors)
            else:
                assert errors == [], errors
            after = len(conv.received.events)
            await conv.send_event({"type": "text.input", "text": "Thank you."})
            assert (await conv.wait_for("response.done", timeout_s=60, after=after))["status"] == "completed"
    finally:
        if extra.returncode is None:
            extra.kill()
            await extra.wait()
        # If the stack's own instance was the one killed, supervisord restarts it: leave it serving.
        own = f"127.0.0.1:{stack.ports['tts']}"
        await until(stack, lambda found: any(i["address"] == own and i["serving"] for i in found["tts"]), 60)
        await until(stack, lambda found: all(i["address"] == own for i in found["tts"]), 15)
