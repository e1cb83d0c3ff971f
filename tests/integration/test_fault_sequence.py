"""Every part dies in turn, then NATS dies mid-reply: a reply still always ends.

Seen once: after the TTS, LLM, ASR and VAD were each SIGKILLed (and restarted by
supervisord), killing nats-server while a long reply streamed left that reply silent
with no `response.done` and no `error`, and a new session's long reply stayed silent
too. A reply must end (completed, cancelled, or failed with an error) within a bounded
time whatever dies under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.request
import xmlrpc.client
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import websockets
from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped]

from tests.stack import Stack, start_stack

pytestmark = pytest.mark.integration
IDLE_TIMEOUT_S = 6.0  # the gateway's PARLEY_GATEWAY_IDLE_TIMEOUT_S here: the longest silence a stream may keep
# How long a reply may go on once something died under it: the idle deadline, and a margin. (A lost
# connection alone would be noticed only by gRPC keepalive, 20-30 s on.)
REPLY_ENDS_WITHIN_S = IDLE_TIMEOUT_S + 6.0
ATTEMPTS = 5
TEXT_DONE_AFTER_S = 0.25  # no text delta this long: the LLM has finished the reply
MAX_PAUSE_S = 2.5  # a paused TTS stays within discovery's instance TTL (3.5 s)
LONG_REPLY = "Tell me a long story about a lighthouse keeper and a storm, with many details."


@pytest.fixture(scope="module")
def long_reply_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Its own stack: the sequence leaves it scarred (that is the point), no other test should share it."""
    try:
        env = {"PARLEY_GATEWAY_LLM_MAX_TOKENS": "400", "PARLEY_GATEWAY_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S)}
        running = start_stack(tmp_path_factory.mktemp("parley-faults"), env)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield running
    running.stop()


def supervisor(stack: Stack) -> Any:
    transport = SupervisorTransport(None, None, f"unix://{stack.state_dir.resolve()}/supervisor.sock")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor


def services_seen(stack: Stack) -> dict[str, Any] | None:
    """/readyz and /v1/services as the gateway sees them now (None: it did not answer)."""
    try:
        with urllib.request.urlopen(f"{stack.url}/readyz", timeout=2) as response:
            body = json.load(response)
        with urllib.request.urlopen(f"{stack.url}/v1/services", timeout=2) as response:
            found = json.load(response)
    except OSError:
        return None
    return {"ready": body.get("status") == "ready" and "nats" not in body, "instances": found}


def serving_ids(seen: dict[str, Any], kind: str) -> set[str]:
    return {i["id"] for i in seen["instances"].get(kind, []) if i["ready"] and i["serving"]}


async def wait_serving(stack: Stack, gone: dict[str, set[str]] | None = None, timeout_s: float = 60.0) -> None:
    """NATS is up and each kind has a serving instance; the instances in `gone` (killed) are forgotten."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = await asyncio.to_thread(services_seen, stack)
        if seen is not None and seen["ready"]:
            known = {kind: {i["id"] for i in seen["instances"].get(kind, [])} for kind in ("vad", "asr", "llm", "tts")}
            serving = all(serving_ids(seen, kind) for kind in known)
            if serving and not any(known[kind] & ids for kind, ids in (gone or {}).items()):
                return
        assert time.monotonic() < deadline, f"the stack did not come back in {timeout_s} s: {seen}\n{stack.log()}"
        await asyncio.sleep(0.25)


async def sigkill(stack: Stack, program: str, sig: signal.Signals = signal.SIGKILL) -> int:
    """SIGKILL a program (supervisord restarts it), as a crash would; its pid."""
    control = supervisor(stack)
    pid = int((await asyncio.to_thread(control.getProcessInfo, program))["pid"])
    assert pid, f"{program} is not running"
    os.kill(pid, sig)
    return pid


class Conversation:
    """A WebSocket conversation that records what arrives, and waits only with a deadline."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.arrived: list[float] = []  # time.monotonic() each event came
        self.audio_bytes = 0
        self.last_audio_at = 0.0
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in self.ws:
                if isinstance(message, bytes):
                    self.audio_bytes += len(message)
                    self.last_audio_at = time.monotonic()
                else:
                    self.events.append(json.loads(message))
                    self.arrived.append(time.monotonic())
                self._changed.set()

    async def send(self, **payload: Any) -> int:
        """Send an event; the index of the next event to arrive (to wait for answers to this one)."""
        after = len(self.events)
        await self.ws.send(json.dumps(payload))
        return after

    async def wait_for(self, types: set[str], after: int, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            for payload in self.events[after:]:
                if payload["type"] in types:
                    return payload
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._reader.done():
                seen = [e["type"] for e in self.events[after:]]
                raise AssertionError(f"no {sorted(types)} within {timeout_s:g} s; after it came {seen}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def wait_for_end(self, after: int, quiet_s: float, limit_s: float = 120.0) -> dict[str, Any]:
        """The reply's response.done; fails when nothing (no event, no audio) came for `quiet_s`.

        A long reply that still streams is alive, however long it takes; one that goes quiet must end.
        """
        started = time.monotonic()
        while True:
            with contextlib.suppress(AssertionError):
                return await self.wait_for({"response.done"}, after, 0.5)
            heard = [t for t, e in zip(self.arrived[after:], self.events[after:], strict=True) if e["type"] != "ping"]
            last = max([started, self.last_audio_at, *heard])
            quiet = time.monotonic() - last
            assert quiet < quiet_s, f"the reply went quiet for {quiet:.1f} s without ending: {self.events[after:][-5:]}"
            assert time.monotonic() - started < limit_s, f"the reply did not end in {limit_s:g} s"

    async def turn(self, text: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """One typed turn; its response.done (whatever its status)."""
        after = await self.send(type="text.input", text=text)
        return await self.wait_for({"response.done"}, after, timeout_s)

    async def close(self) -> None:
        self._reader.cancel()
        await self.ws.close()


@contextlib.asynccontextmanager
async def conversation(stack: Stack) -> AsyncIterator[Conversation]:
    async with websockets.connect(stack.ws_url, max_size=None) as ws:
        conv = Conversation(ws)
        after = await conv.send(type="session.start")
        await conv.wait_for({"session.started"}, after, 30)
        try:
            yield conv
        finally:
            await conv.close()


async def test_a_reply_ends_when_nats_dies_under_it_after_every_service_died_once(long_reply_stack: Stack) -> None:
    stack = long_reply_stack
    async with conversation(stack) as conv:
        assert (await conv.turn("Hello there."))["status"] == "completed"
        for program in ("tts", "llm", "asr", "vad"):
            seen = await asyncio.to_thread(services_seen, stack)
            assert seen is not None
            killed = serving_ids(seen, program)
            await sigkill(stack, program)
            await wait_serving(stack, gone={program: killed})  # supervisord restarted it; the gateway knows
            # Each turn ends (a reply may still fail: it must end, and say why).
            after = len(conv.events)
            done = await conv.turn(f"Are you there after the {program} restart?")
            assert done["status"] == "completed" or any(e["type"] == "error" for e in conv.events[after:])

        # A long reply, and NATS dies once its audio flows.
        after = await conv.send(type="text.input", text=LONG_REPLY)
        await conv.wait_for({"response.audio.started"}, after, 60)
        await sigkill(stack, "nats")
        end = await conv.wait_for_end(after, REPLY_ENDS_WITHIN_S)
        if end["status"] != "completed":  # a failed reply says why
            assert [e for e in conv.events[after:] if e["type"] == "error"], conv.events[after:]

        # The same session answers the next turn, and a new session's long reply is heard.
        assert (await conv.turn("Still with me?", timeout_s=30))["status"] in ("completed", "failed")
    await wait_serving(stack)
    async with conversation(stack) as fresh:
        heard_before = fresh.audio_bytes
        after = await fresh.send(type="text.input", text=LONG_REPLY)
        await fresh.wait_for({"response.audio.started"}, after, 30)
        done = await fresh.wait_for({"response.done"}, after, 60)
        assert done["status"] == "completed" and fresh.audio_bytes > heard_before, done

        # Last, the TTS pauses while the LLM writes the whole reply, speaks its first sentence, and
        # wedges (stopped, its connection open): the reply still ends, within the idle deadline.
        for _ in range(ATTEMPTS):
            end = await reply_with_tts_wedged_after_its_first_sentence(stack, fresh)
            if end is not None:
                break
            await wait_serving(stack)
        assert end is not None, f"no reply was caught with its later sentences unspoken ({ATTEMPTS} tries)"
        assert end["status"] == "failed", end


async def reply_with_tts_wedged_after_its_first_sentence(stack: Stack, conv: Conversation) -> dict[str, Any] | None:
    """A long reply whose TTS holds still until the LLM wrote all of it, then wedges after one sentence.

    Its end, or None when its audio was all out before the TTS stopped (try again). The TTS stream
    has then read every sentence and the end marker, and answered one: the case that once had
    no deadline at all, so such a reply never ended.
    """
    after = await conv.send(type="text.input", text=LONG_REPLY)
    await conv.wait_for({"response.created"}, after, 30)
    paused = await sigkill(stack, "tts", signal.SIGSTOP)
    try:
        paused_at = time.monotonic()
        while time.monotonic() - paused_at < MAX_PAUSE_S:  # the LLM is done once its deltas stop
            deltas = [
                t
                for t, e in zip(conv.arrived[after:], conv.events[after:], strict=True)
                if e["type"] == "response.text.delta"
            ]
            if deltas and time.monotonic() - deltas[-1] > TEXT_DONE_AFTER_S:
                break
            await asyncio.sleep(0.02)
    finally:
        os.kill(paused, signal.SIGCONT)
    await conv.wait_for({"response.audio.started"}, after, 30)
    os.kill(paused, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        end = await conv.wait_for({"response.done"}, after, REPLY_ENDS_WITHIN_S)
    finally:
        os.kill(paused, signal.SIGCONT)
    if end["status"] == "completed" and time.monotonic() - stopped < 1.0:
        return None  # its last audio was on the way already
    errors = [e for e in conv.events[after:] if e["type"] == "error"]
    assert end["status"] == "completed" or errors, conv.events[after:]
    return end
