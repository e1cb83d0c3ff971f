"""Sessions survive: a reconnect, a second socket, and the gateway process itself (JetStream KV)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from typing import Any

import pytest

from tests.conversation_client import ConversationClient
from tests.stack import Stack, listening_process

pytestmark = pytest.mark.integration


async def one_turn(conv: ConversationClient, text: str) -> dict[str, Any]:
    after = len(conv.received.events)
    await conv.send_event({"type": "text.input", "text": text})
    done = await conv.wait_for("response.done", timeout_s=60, after=after)
    assert done["status"] == "completed", done
    return done


def credentials(conv: ConversationClient) -> dict[str, str]:
    return {"session_id": conv.session["session_id"], "resume_token": conv.session["resume_token"]}


async def test_a_session_resumes_after_the_client_reconnects(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url, voice="joe") as first:
        assert first.session["resumed"] is False and len(first.session["resume_token"]) >= 16
        reply = await one_turn(first, "My name is Ada and I like sailing.")
        resume = credentials(first)
    # The socket dropped without session.end: the session waits to be resumed.
    async with ConversationClient(stack.ws_url, **resume) as second:
        started = second.session
        assert started["resumed"] is True and started["session_id"] == resume["session_id"]
        assert [t["role"] for t in started["history"]] == ["user", "assistant"]
        assert started["history"][0]["content"] == "My name is Ada and I like sailing."
        assert started["history"][1]["content"] == reply["text"]
        await one_turn(second, "What do I like?")
        await second.send_event({"type": "session.end"})
        await second.wait_for("session.ended")
    # Ended on purpose: gone.
    async with ConversationClient(stack.ws_url, start_session=False) as third:
        await third.send_event({"type": "session.start", **resume})
        error = await third.wait_for("error")
        assert error["code"] == "session_not_found"
        # The socket stays open for a new session.
        await third.send_event({"type": "session.start"})
        assert (await third.wait_for("session.started"))["resumed"] is False


async def test_a_wrong_resume_token_is_refused(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url) as owner:
        stolen = {"session_id": owner.session["session_id"], "resume_token": "x" * 32}
        async with ConversationClient(stack.ws_url, start_session=False) as thief:
            await thief.send_event({"type": "session.start", **stolen})
            assert (await thief.wait_for("error"))["code"] == "session_not_found"
        assert owner.received.of_type("session.ended") == []


async def test_resuming_from_a_second_socket_ends_the_first(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url) as stale:
        await one_turn(stale, "Remember the number seven.")
        async with ConversationClient(stack.ws_url, **credentials(stale)) as fresh:
            ended = await stale.wait_for("session.ended")
            assert ended["reason"] == "resumed_elsewhere"
            assert len(fresh.session["history"]) == 2
            await one_turn(fresh, "Which number?")


async def test_a_session_survives_the_gateway_being_killed_and_restarted(stack: Stack) -> None:
    async with ConversationClient(stack.ws_url) as before:
        reply = await one_turn(before, "The secret word is pineapple.")
        resume = credentials(before)
        await asyncio.sleep(0.5)  # the save after the turn
        os.kill(listening_process(stack.ports["gateway"]), signal.SIGKILL)
        with pytest.raises(ConnectionError):
            await before.wait_for("never", timeout_s=10)
    # supervisord starts a new gateway process; it finds the session in JetStream.
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{stack.url}/readyz", timeout=2) as response:  # noqa: ASYNC210
                if response.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the gateway did not come back"
        await asyncio.sleep(0.25)
    async with ConversationClient(stack.ws_url, **resume) as after:
        assert after.session["resumed"] is True and after.session["session_id"] == resume["session_id"]
        assert [t["content"] for t in after.session["history"]] == ["The secret word is pineapple.", reply["text"]]
        await one_turn(after, "What was the secret word?")
