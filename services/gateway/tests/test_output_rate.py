"""`output_sample_rate`: the session's reply audio rate, said in session.started and kept on resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from parley_gateway.app import Gateway
from parley_gateway.config import GatewaySettings
from parley_gateway.protocol import SessionStart
from parley_gateway.web.session_registry import Connection


class VoicesOnly:
    """The model services as far as opening a session asks them (its voice is checked)."""

    async def voices(self, fresh: bool = False) -> dict[str, list[str]] | None:
        return {"joe": ["piper"]}

    async def detect(self, audio: object, metadata: object) -> AsyncIterator[object]:
        await asyncio.Event().wait()  # no speech in these tests
        yield None

    async def tts_engines(self, voices: Iterable[str], engine: str = "") -> frozenset[str]:
        return frozenset()


class Outbox:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any] | bytes) -> None:
        if isinstance(message, dict):
            self.events.append(message)

    async def close(self) -> None:
        pass

    def connection(self) -> Connection:
        return Connection(websocket=None, outbox=self)  # type: ignore[arg-type]


def start(**fields: Any) -> SessionStart:
    return SessionStart.model_validate({"type": "session.start", **fields})


async def test_session_started_says_the_rate_asked_for_and_a_resume_keeps_it() -> None:
    gateway = Gateway(GatewaySettings(output_sample_rate=24000))
    gateway.sessions.services = VoicesOnly()  # type: ignore[assignment]
    first = Outbox()
    session = await gateway.sessions.open(start(output_sample_rate=16000), first.connection())
    [started] = first.events
    assert started["output_sample_rate"] == 16000 and session.output_sample_rate == 16000
    # The client comes back on another socket without naming a rate: the session keeps its own.
    again = Outbox()
    resume = start(session_id=session.id, resume_token=started["resume_token"])
    resumed = await gateway.sessions.open(resume, again.connection())
    [restarted] = again.events
    assert restarted["resumed"] is True and restarted["output_sample_rate"] == 16000
    assert resumed.output_sample_rate == 16000
    for live in (session, resumed):
        await live.close()


async def test_session_started_says_the_gateway_rate_by_default() -> None:
    gateway = Gateway(GatewaySettings(output_sample_rate=22050))
    gateway.sessions.services = VoicesOnly()  # type: ignore[assignment]
    outbox = Outbox()
    session = await gateway.sessions.open(start(), outbox.connection())
    assert outbox.events[0]["output_sample_rate"] == 22050
    live = gateway.sessions.live(session)
    assert live is not None and live.stored is not None
    assert live.stored.record.options["output_sample_rate"] == 22050  # kept for a resume elsewhere
    await session.close()
