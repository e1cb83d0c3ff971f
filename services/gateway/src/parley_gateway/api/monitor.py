"""The monitor's data, pushed: `GET /v1/monitor/stream` (server-sent events, one snapshot a second)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

router = APIRouter(tags=["monitor"])

INTERVAL_S = 1.0


def snapshot(request: Request) -> dict[str, Any]:
    gateway = request.app.state.gateway
    services: dict[str, Any] = {}
    if gateway.directory is not None:
        services = {**gateway.directory.snapshot(), "crashing": gateway.troubled()}
    result: dict[str, Any] = gateway.monitor.snapshot(services, len(gateway.sessions))
    result["missing"] = gateway.missing()
    return result


@router.get("/v1/monitor")
async def monitor_now(request: Request) -> dict[str, Any]:
    """One snapshot: services and their load, sessions, recent turns' stage timings, errors, CPU, memory, GPUs."""
    return snapshot(request)


@router.get("/v1/monitor/stream", response_class=StreamingResponse)
async def monitor_stream(request: Request) -> StreamingResponse:
    """The same snapshot every second as server-sent events (`data: {...}`), until the client leaves."""

    async def events() -> AsyncIterator[str]:
        while not await request.is_disconnected():
            yield f"data: {json.dumps(snapshot(request))}\n\n"
            await asyncio.sleep(INTERVAL_S)

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
