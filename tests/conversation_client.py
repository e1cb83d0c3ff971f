"""A Python client of `/v1/conversation`, for tests, benchmarks and scripts.

async with ConversationClient("ws://127.0.0.1:7860/v1/conversation") as conv:
    await conv.stream_audio(pcm16_at_16k, realtime=True)
    done = await conv.wait_for("response.done")
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

FRAME_MS = 100


@dataclass
class Received:
    """Everything the server sent, with arrival times (time.perf_counter)."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    audio: list[tuple[float, bytes]] = field(default_factory=list)

    def types(self) -> list[str]:
        return [e["type"] for _, e in self.events]

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == type_]

    def audio_bytes(self) -> bytes:
        return b"".join(chunk for _, chunk in self.audio)


class ConversationClient:
    def __init__(
        self, url: str, start_session: bool = True, headers: dict[str, str] | None = None, **session_options: Any
    ) -> None:
        self.url = url
        self.headers = headers or {}  # e.g. Authorization: Bearer <key> (a browser puts a token in the URL instead)
        self.start_session = start_session
        self.session_options = session_options
        self.received = Received()
        self.session: dict[str, Any] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> ConversationClient:
        self._ws = await websockets.connect(self.url, max_size=None, additional_headers=self.headers)
        self._reader = asyncio.create_task(self._read())
        if self.start_session:
            await self.send_event({"type": "session.start", **self.session_options})
            self.session = await self.wait_for("session.started")
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None, "use `async with`"
        return self._ws

    async def _read(self) -> None:
        async for message in self.ws:
            now = time.perf_counter()
            if isinstance(message, bytes):
                self.received.audio.append((now, message))
            else:
                self.received.events.append((now, json.loads(message)))
            self._changed.set()

    async def send_event(self, payload: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(payload))

    async def send_raw(self, payload: str | bytes) -> None:
        await self.ws.send(payload)

    async def stream_audio(self, pcm: bytes, sample_rate: int = 16000, realtime: bool = True) -> float:
        """Send PCM16 audio in 100 ms frames, paced like a microphone; returns when the last frame left."""
        frame_bytes = sample_rate * 2 * FRAME_MS // 1000
        started = time.perf_counter()
        for index, offset in enumerate(range(0, len(pcm), frame_bytes)):
            if realtime:
                delay = started + index * FRAME_MS / 1000 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await self.ws.send(pcm[offset : offset + frame_bytes])
        return time.perf_counter()

    async def wait_for(self, type_: str, timeout_s: float = 30.0, after: int = 0) -> dict[str, Any]:
        """The first event of `type_` at index >= `after`; raises TimeoutError."""
        deadline = time.perf_counter() + timeout_s
        while True:
            for _, payload in self.received.events[after:]:
                if payload["type"] == type_:
                    return payload
            if self._reader is not None and self._reader.done():
                raise ConnectionError(f"connection closed before {type_}")
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                errors = self.received.of_type("error")
                raise TimeoutError(f"no {type_} within {timeout_s} s; got {self.received.types()}; errors: {errors}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))

    def arrival(self, type_: str) -> float:
        """When the first event of `type_` arrived."""
        return next(t for t, e in self.received.events if e["type"] == type_)
