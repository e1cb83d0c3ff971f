"""Finds model-service instances through NATS and routes streams to them.

Every `discovery_interval_s` the directory asks `$SRV.STATS.parley-<kind>`
and keeps what answers. A new stream goes to the ready instance with the
lowest load, counting both what the instance reported and the streams this
gateway opened since. An instance that stops answering polls for
`instance_ttl_s`, or refuses a connection, is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from nats.aio.client import Client as NatsClient

from parley.registry import KINDS, InstanceRecord, discover

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    # Notice a lost host within ~30 s even when no call is active.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]


class NoInstance(Exception):
    def __init__(self, kind: str) -> None:
        super().__init__(f"no ready {kind} service instance")
        self.kind = kind


@dataclass
class Instance:
    record: InstanceRecord
    last_seen: float
    # Streams this gateway opened since the instance last reported its load.
    opened_since_report: int = 0
    # Streams this gateway holds open on it right now.
    held: int = 0
    channel: grpc.aio.Channel | None = field(default=None, repr=False)

    @property
    def load(self) -> float:
        return (self.record.active + self.opened_since_report) / max(1, self.record.capacity)


class ServiceDirectory:
    def __init__(self, nc: NatsClient, interval_s: float, window_s: float, ttl_s: float) -> None:
        self.nc = nc
        self.interval_s = interval_s
        self.window_s = window_s
        self.ttl_s = ttl_s
        self.instances: dict[str, dict[str, Instance]] = {kind: {} for kind in KINDS}
        self._closing: set[asyncio.Task[None]] = set()  # channel closes under way

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception:  # NATS down or reconnecting: keep what we know until it expires
                log.debug("discovery poll failed", exc_info=True)
                self._expire(time.monotonic())
            await asyncio.sleep(max(0.0, self.interval_s - self.window_s))

    async def poll(self) -> None:
        results = await asyncio.gather(*(discover(self.nc, kind, self.window_s) for kind in KINDS))
        now = time.monotonic()
        for kind, records in zip(KINDS, results, strict=True):
            known = self.instances[kind]
            for record in records:
                instance = known.get(record.id)
                if instance is None:
                    log.info("found %s instance %s at %s", kind, record.id, record.address)
                    known[record.id] = Instance(record, now)
                else:
                    instance.record, instance.last_seen, instance.opened_since_report = record, now, 0
        self._expire(now)

    def _expire(self, now: float) -> None:
        for kind, known in self.instances.items():
            for instance_id in [i for i, inst in known.items() if now - inst.last_seen > self.ttl_s]:
                self.forget(kind, instance_id, "stopped answering")

    def forget(self, kind: str, instance_id: str, why: str) -> None:
        instance = self.instances[kind].pop(instance_id, None)
        if instance is not None:
            log.warning("forgetting %s instance %s at %s: %s", kind, instance_id, instance.record.address, why)
            if instance.channel is not None:
                task = asyncio.get_running_loop().create_task(instance.channel.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    def ready(self, kind: str) -> list[Instance]:
        return [i for i in self.instances[kind].values() if i.record.ready]

    def missing(self) -> list[str]:
        return [kind for kind in KINDS if not self.ready(kind)]

    def pick(self, kind: str, exclude: frozenset[str] = frozenset()) -> Instance:
        candidates = [i for i in self.ready(kind) if i.record.id not in exclude]
        if not candidates:
            raise NoInstance(kind)
        return min(candidates, key=lambda i: (i.load, i.held))

    @contextlib.asynccontextmanager
    async def lease(self, kind: str, exclude: frozenset[str] = frozenset()) -> AsyncIterator[Instance]:
        """The least-loaded instance, counted as busy while the caller streams to it."""
        instance = self.pick(kind, exclude)
        if instance.channel is None:
            instance.channel = grpc.aio.insecure_channel(instance.record.address, options=CHANNEL_OPTIONS)
        instance.opened_since_report += 1
        instance.held += 1
        try:
            yield instance
        finally:
            instance.held -= 1

    def snapshot(self) -> dict[str, list[dict[str, object]]]:
        return {
            kind: [
                {
                    **i.record.model_dump(),
                    "held_by_gateway": i.held,
                    "seen_s_ago": round(time.monotonic() - i.last_seen, 2),
                }
                for i in known.values()
            ]
            for kind, known in self.instances.items()
        }

    async def close(self) -> None:
        for known in self.instances.values():
            for instance in known.values():
                if instance.channel is not None:
                    await instance.channel.close()
