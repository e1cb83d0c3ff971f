"""Service registration on NATS, as NATS micro services (ADR-32).

Every model-service instance registers as `parley-<kind>` with its gRPC address
in the service metadata and its readiness/load in the STATS reply, so that any
gateway (or the monitor) finds every instance with one `$SRV.STATS.parley-<kind>`
request. nats-py re-subscribes after a reconnect, so a NATS restart only makes
instances invisible for the time it is down.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service
from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

KINDS = ("vad", "asr", "llm", "tts")


def micro_name(kind: str) -> str:
    return f"parley-{kind}"


def stats_subject(kind: str) -> str:
    return f"$SRV.STATS.{micro_name(kind)}"


EVENTS_SUBJECT = "parley.service"
# Trailer on the UNAVAILABLE that a draining instance answers a new stream with: the caller
# tries another instance and must not take the refusal for a crash.
DRAINING_TRAILER = "parley-draining"


class InstanceLoad(BaseModel):
    """What an instance reports about itself in its STATS reply."""

    ready: bool
    active: int  # streams admitted: being served or waiting for a model
    capacity: int  # streams served at once
    queue_limit: int = 0  # streams admitted beyond `capacity`, waiting
    # Stopping: finishing the streams it has, taking no new one. It stays registered
    # until they are done, so gateways keep their channel to it open meanwhile.
    draining: bool = False


class ServiceEvent(BaseModel):
    """An instance's life on `parley.service.<event>.<kind>`: started, failed (to load) or stopping.

    An instance that disappears without `stopping`, or starts again at an
    address whose last instance never said `stopping`, has crashed.
    """

    event: str  # "started" | "failed" | "stopping"
    kind: str
    id: str
    address: str
    error: str = ""


async def publish_event(nc: NatsClient, record: ServiceEvent) -> None:
    await nc.publish(f"{EVENTS_SUBJECT}.{record.event}.{record.kind}", record.model_dump_json().encode())
    await nc.flush(timeout=2)


class InstanceRecord(BaseModel):
    """One live instance as a gateway sees it."""

    id: str
    kind: str
    address: str
    version: str
    engine: str = ""  # the engines it runs, comma-separated ("piper,fireredtts2")
    tls: bool = False  # its gRPC port serves TLS only
    ready: bool
    active: int
    capacity: int
    queue_limit: int = 0
    draining: bool = False

    @classmethod
    def from_stats(cls, kind: str, reply: dict[str, Any]) -> InstanceRecord | None:
        """Parse a `$SRV.STATS` reply; None for replies that are not ours."""
        try:
            metadata = reply.get("metadata") or {}
            load = InstanceLoad.model_validate(reply["endpoints"][0]["data"])
            return cls(
                id=reply["id"],
                kind=kind,
                address=metadata["grpc_address"],
                version=reply.get("version", ""),
                engine=metadata.get("engine", ""),
                tls=metadata.get("grpc_tls") == "true",
                ready=load.ready,
                active=load.active,
                capacity=load.capacity,
                queue_limit=load.queue_limit,
                draining=load.draining,
            )
        except (KeyError, IndexError, TypeError, ValidationError):
            return None


@dataclass
class StreamSlots:
    """Counts the streams an instance runs against its capacity and queue."""

    capacity: int
    queue_limit: int = 0
    active: int = 0
    ready: bool = False
    draining: bool = False

    @property
    def full(self) -> bool:
        return self.active >= self.capacity + self.queue_limit

    def snapshot(self) -> InstanceLoad:
        return InstanceLoad(
            ready=self.ready and not self.draining,
            active=self.active,
            capacity=self.capacity,
            queue_limit=self.queue_limit,
            draining=self.draining,
        )


async def connect(url: str, name: str, **options: Any) -> NatsClient:
    """Connect, retrying forever, and keep reconnecting forever afterwards.

    `options` are credentials and TLS for `nats.connect` (`CommonSettings.nats_options()`).
    """

    async def on_error(exc: Exception) -> None:
        log.warning("NATS: %s", exc or type(exc).__name__)

    async def on_disconnect() -> None:
        log.warning("NATS: disconnected, reconnecting")

    async def on_reconnect() -> None:
        log.info("NATS: reconnected")

    return await nats.connect(
        servers=[server.strip() for server in url.split(",")],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        **options,
    )


async def register(
    nc: NatsClient,
    *,
    kind: str,
    version: str,
    address: str,
    metadata: dict[str, str],
    load: Callable[[], InstanceLoad],
) -> Service:
    """Register this instance; its STATS reply carries `load()` at request time."""

    def stats_handler(_endpoint: EndpointStats) -> dict[str, Any]:
        return load().model_dump()

    service = await add_service(
        nc,
        name=micro_name(kind),
        version=version,
        description=f"Parley {kind} service",
        metadata={"grpc_address": address, "kind": kind, **metadata},
        stats_handler=stats_handler,
    )

    # micro reports stats_handler data per endpoint, so every instance has one:
    # a `load` request answered with the same JSON.
    async def load_endpoint(request: Request) -> None:
        await request.respond(load().model_dump_json().encode())

    await service.add_endpoint(name="load", subject=f"parley.{kind}.{service.id}.load", handler=load_endpoint)
    log.info("registered on NATS as %s (id %s, gRPC %s)", micro_name(kind), service.id, address)
    return service


async def discover(nc: NatsClient, kind: str, window_s: float) -> list[InstanceRecord]:
    """Ask every instance of `kind` for its stats and collect replies for `window_s`."""
    inbox = nc.new_inbox()
    replies: list[InstanceRecord] = []

    async def collect(msg: Any) -> None:
        try:
            record = InstanceRecord.from_stats(kind, json.loads(msg.data))
        except ValueError:
            record = None
        if record is not None:
            replies.append(record)

    subscription = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(stats_subject(kind), b"", reply=inbox)
        await asyncio.sleep(window_s)
    finally:
        await subscription.unsubscribe()
    return replies


async def keep_trying(set_up: Callable[[NatsClient], Awaitable[None]], nc: NatsClient, what: str) -> None:
    """Run `set_up(nc)` (bind JetStream buckets, ...) until it succeeds, backing off up to 30 s.

    JetStream may be off or NATS away: the caller serves on without what it sets up meanwhile.
    """
    delay = 1.0
    while True:
        try:
            await set_up(nc)
            return
        except Exception as exc:  # retried; logged, never fatal
            log.warning("%s failed (retrying in %.0f s): %s: %s", what, delay, type(exc).__name__, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
