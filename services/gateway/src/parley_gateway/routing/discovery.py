"""Finds model-service instances through NATS and routes streams to them.

Every `discovery_interval_s` the directory asks `$SRV.STATS.parley-<kind>`
and keeps what answers. A new stream goes to the ready instance with the
lowest load, counting both what the instance reported and the streams this
gateway opened since; an instance whose queue is full is skipped. An instance
that stops answering polls for `instance_ttl_s`, or refuses a connection, is
forgotten.

Trust, and draining: a newly registered instance takes streams only once its
own gRPC health check answers SERVING at the address it registered (anything
that can publish on NATS could otherwise announce a dead or foreign address
and stall every turn routed there). An instance that says it is stopping (its
`stopping` event, or `draining` in its load record) gets no new stream at once;
the streams this gateway holds on it keep their channel until they end, even
after the instance has left NATS.

Engines: a TTS instance lists the engines it runs in its NATS metadata
(`engine`, comma-separated: "piper,fireredtts2"). A stream that needs one of
some engines (a cloned voice, an engine named in the request) goes only to an
instance that runs one; when instances are ready but none runs one, `pick`
says so (`NoInstance.engines`), so the caller can answer at once that the
voice is unavailable rather than try an instance that would refuse it.

It also listens to the instances' life events (`parley.service.*`): an
instance that vanishes without saying it is stopping, or starts again where
the last one never said goodbye, crashed. `ServiceHealth` keeps those crashes
and load failures per kind, so `/readyz` and the sessions' errors can say
"the llm service keeps crashing" instead of "nothing is available".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.aio.client import Client as NatsClient

from parley.registry import EVENTS_SUBJECT, KINDS, InstanceRecord, ServiceEvent, discover
from parley_gateway.config import DiscoverySettings

log = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    # Notice a lost host within ~30 s even when no call is active.
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]
HEALTH_CHECK_TIMEOUT_S = 2.0
VERIFY_WAIT_S = 0.5  # how long a poll waits for the health checks it started
SERVING = health_pb2.HealthCheckResponse.SERVING


class NoInstance(Exception):
    """No instance to route to; `engines` is set when instances are ready but none runs one of those."""

    def __init__(self, kind: str, engines: frozenset[str] = frozenset()) -> None:
        runs = f" that runs {' or '.join(sorted(engines))}" if engines else ""
        super().__init__(f"no ready {kind} service instance{runs}")
        self.kind = kind
        self.engines = engines


@dataclass
class Instance:
    record: InstanceRecord
    last_seen: float
    # Streams this gateway opened since the instance last reported its load.
    opened_since_report: int = 0
    # Streams this gateway holds open on it right now.
    held: int = 0
    channel: grpc.aio.Channel | None = field(default=None, repr=False)
    # Its gRPC health answered SERVING at the registered address: only then is it routed to.
    serving: bool = False
    # It said it is stopping: no new stream, the held ones finish.
    stopping: bool = False
    # No longer in the directory; its channel closes when the last held stream ends.
    forgotten: bool = False

    @property
    def routable(self) -> bool:
        return self.record.ready and self.serving and not (self.stopping or self.record.draining)

    @property
    def engines(self) -> frozenset[str]:
        """The engines it runs, from its NATS metadata (comma-separated)."""
        return frozenset(name for name in self.record.engine.split(",") if name)

    def runs(self, engines: frozenset[str]) -> bool:
        """It runs one of `engines` (any instance does when none is asked for)."""
        return not engines or not engines.isdisjoint(self.engines)

    @property
    def admitted(self) -> int:
        return self.record.active + self.opened_since_report

    @property
    def load(self) -> float:
        return self.admitted / max(1, self.record.capacity)

    @property
    def full(self) -> bool:
        return self.admitted >= self.record.capacity + self.record.queue_limit


@dataclass
class ServiceHealth:
    """Crashes and load failures of one kind of service, as seen from here."""

    window_s: float
    crashes: deque[float] = field(default_factory=deque)
    failures: deque[float] = field(default_factory=deque)
    last_problem: str = ""

    def _trim(self, now: float) -> None:
        for times in (self.crashes, self.failures):
            while times and now - times[0] > self.window_s:
                times.popleft()

    def crashed(self, why: str) -> None:
        self.crashes.append(time.monotonic())
        self.last_problem = why

    def failed(self, error: str) -> None:
        self.failures.append(time.monotonic())
        self.last_problem = f"failed to start: {error}"

    def troubled(self) -> bool:
        self._trim(time.monotonic())
        return bool(self.crashes or self.failures)

    def describe(self) -> dict[str, object]:
        self._trim(time.monotonic())
        return {
            "crashes": len(self.crashes),
            "failed_starts": len(self.failures),
            "window_s": self.window_s,
            "last_problem": self.last_problem,
        }

    def summary(self, kind: str) -> str:
        self._trim(time.monotonic())
        parts = []
        if self.crashes:
            parts.append(f"crashed {len(self.crashes)} time(s)")
        if self.failures:
            parts.append(f"failed to start {len(self.failures)} time(s)")
        return f"the {kind} service {' and '.join(parts)} in the last {self.window_s:.0f} s ({self.last_problem})"


class ServiceDirectory:
    def __init__(self, nc: NatsClient, settings: DiscoverySettings, tls: grpc.ChannelCredentials | None = None) -> None:
        interval_s, window_s, ttl_s = settings.interval_s, settings.window_s, settings.instance_ttl_s
        health_window_s = settings.health_window_s
        self.nc = nc
        # What a channel to an instance that serves TLS trusts (None: the system roots).
        self.tls = tls
        self._verifying: set[str] = set()  # instance ids whose health check is under way
        self.nats_away = False  # our NATS connection is down: instances are checked over gRPC health
        self._checks: set[asyncio.Task[None]] = set()
        self.interval_s = interval_s
        self.window_s = window_s
        self.ttl_s = ttl_s
        self.instances: dict[str, dict[str, Instance]] = {kind: {} for kind in KINDS}
        self.health: dict[str, ServiceHealth] = {kind: ServiceHealth(health_window_s) for kind in KINDS}
        # Per address, the last instance that started there and whether it said goodbye.
        self._started: dict[str, tuple[str, bool]] = {}
        self._crashed: set[str] = set()  # instance ids already counted as crashed
        self._closing: set[asyncio.Task[None]] = set()  # channel closes under way

    async def watch_events(self) -> None:
        """Follow the instances' life events (subscribes; returns at once)."""
        await self.nc.subscribe(f"{EVENTS_SUBJECT}.>", cb=self._on_event)

    async def _on_event(self, msg: Any) -> None:
        try:
            record = ServiceEvent.model_validate_json(msg.data)
        except ValueError:
            return
        self.on_event(record)

    def on_event(self, record: ServiceEvent) -> None:
        if record.kind not in self.health:
            return
        health = self.health[record.kind]
        if record.event == "stopping":
            instance = self.instances[record.kind].get(record.id)
            if instance is not None:
                instance.stopping = True
                log.info("%s instance %s at %s is draining", record.kind, record.id, record.address)
        if record.event == "started":
            previous = self._started.get(record.address)
            if previous is not None and not previous[1] and previous[0] != record.id:
                self._count_crash(record.kind, previous[0], f"restarted at {record.address} without a clean stop")
            self._started[record.address] = (record.id, False)
        elif record.event == "stopping":
            self._started[record.address] = (record.id, True)
        elif record.event == "failed":
            self._started[record.address] = (record.id, True)  # its failure is reported, not a crash
            health.failed(record.error)
            log.warning(
                "%s instance %s at %s failed to start: %s", record.kind, record.id, record.address, record.error
            )

    def _count_crash(self, kind: str, instance_id: str, why: str) -> None:
        if instance_id in self._crashed:
            return
        self._crashed.add(instance_id)
        self.health[kind].crashed(why)
        log.warning("%s instance %s crashed: %s", kind, instance_id, why)

    def _said_goodbye(self, instance: Instance) -> bool:
        started = self._started.get(instance.record.address)
        return started is not None and started == (instance.record.id, True)

    async def run(self) -> None:
        while True:
            try:
                if not self.nc.is_connected:
                    raise ConnectionError("NATS is not connected")
                await self.poll()
                self.nats_away = False
            except Exception:  # NATS down or reconnecting: the instances we know still serve
                log.debug("discovery poll failed", exc_info=True)
                if not self.nats_away:
                    self.nats_away = True
                    log.warning("NATS is away: routing to the instances known, checked over gRPC health")
                await self.check_known()
            await asyncio.sleep(max(0.0, self.interval_s - self.window_s))

    async def check_known(self) -> None:
        """While NATS is away, ask every known instance's gRPC health instead of the registry.

        One that answers SERVING stays routable (and fresh); one that does not is skipped until
        it does, but not forgotten: silence in NATS says nothing while NATS itself is down.
        When NATS returns, the polls take over, and an instance that died meanwhile expires.
        """
        known = [i for instances in self.instances.values() for i in instances.values() if not i.forgotten]

        async def check(instance: Instance) -> None:
            try:
                serving = await self._health(instance, HEALTH_CHECK_TIMEOUT_S / 2) == SERVING
            except grpc.aio.AioRpcError:
                serving = False
            if serving != instance.serving:
                log.warning(
                    "%s instance %s at %s %s",
                    instance.record.kind,
                    instance.record.id,
                    instance.record.address,
                    "is back" if serving else "does not answer health: skipped",
                )
            instance.serving = serving
            if serving:
                instance.last_seen = time.monotonic()
                # Without load reports, what this gateway holds there is the best estimate.
                instance.opened_since_report = 0
                instance.record = instance.record.model_copy(update={"active": instance.held})

        await asyncio.gather(*(check(instance) for instance in known))

    async def poll(self) -> None:
        results = await asyncio.gather(*(discover(self.nc, kind, self.window_s) for kind in KINDS))
        now = time.monotonic()
        checks: list[asyncio.Task[None]] = []
        for kind, records in zip(KINDS, results, strict=True):
            known = self.instances[kind]
            for record in records:
                instance = known.get(record.id)
                if instance is None:
                    log.info("found %s instance %s at %s", kind, record.id, record.address)
                    instance = known[record.id] = Instance(record, now)
                else:
                    instance.record, instance.last_seen, instance.opened_since_report = record, now, 0
                if record.ready and not instance.serving and record.id not in self._verifying:
                    checks.append(self._verify(instance))
        self._expire(now)
        if checks:  # a healthy instance is routable after this very poll; a dead address holds it briefly
            await asyncio.wait(checks, timeout=VERIFY_WAIT_S)

    def _verify(self, instance: Instance) -> asyncio.Task[None]:
        """Ask the instance's own gRPC health whether it serves; routable only once it says SERVING."""
        self._verifying.add(instance.record.id)

        async def check() -> None:
            record = instance.record
            try:
                status = await self._health(instance, HEALTH_CHECK_TIMEOUT_S)
                instance.serving = status == SERVING
                if instance.serving:
                    log.info("%s instance %s at %s is SERVING: routing to it", record.kind, record.id, record.address)
                else:
                    log.warning(
                        "%s instance %s registered ready but its health says %s",
                        record.kind,
                        record.id,
                        health_pb2.HealthCheckResponse.ServingStatus.Name(status),
                    )
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "%s instance %s registered at %s but its gRPC health does not answer there (%s): not routing to it",
                    record.kind,
                    record.id,
                    record.address,
                    exc.code().name,
                )
            finally:
                self._verifying.discard(record.id)

        task = asyncio.get_running_loop().create_task(check())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        return task

    async def _health(self, instance: Instance, timeout_s: float) -> int:
        """The instance's own gRPC health status at its registered address (raises if it does not answer)."""
        stub = health_pb2_grpc.HealthStub(self.channel(instance))
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        return int(reply.status)

    def channel(self, instance: Instance) -> grpc.aio.Channel:
        """The instance's channel, opened on first use (TLS when it registered as serving TLS)."""
        if instance.channel is None:
            address = instance.record.address
            if instance.record.tls:
                credentials = self.tls or grpc.ssl_channel_credentials()
                instance.channel = grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
            else:
                instance.channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return instance.channel

    def _expire(self, now: float, crashed: bool = True) -> None:
        for kind, known in self.instances.items():
            for instance_id in [i for i, inst in known.items() if now - inst.last_seen > self.ttl_s]:
                self.forget(kind, instance_id, "stopped answering", crashed)

    def forget(self, kind: str, instance_id: str, why: str, crashed: bool = True) -> None:
        """Drop an instance; unless it said goodbye (or `crashed` is False), that counts as a crash."""
        instance = self.instances[kind].pop(instance_id, None)
        if instance is not None:
            log.warning("forgetting %s instance %s at %s: %s", kind, instance_id, instance.record.address, why)
            if crashed and not self._said_goodbye(instance):
                self._count_crash(kind, instance_id, f"{why} without a clean stop")
            instance.forgotten = True
            if not instance.held:  # else the last stream to end closes it
                self._close_channel(instance)

    def _close_channel(self, instance: Instance) -> None:
        if instance.channel is not None:
            task = asyncio.get_running_loop().create_task(instance.channel.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            instance.channel = None

    def ready(self, kind: str, engines: frozenset[str] = frozenset()) -> list[Instance]:
        """Instances a new stream may go to; with `engines`, only those running one of them."""
        return [i for i in self.instances[kind].values() if i.routable and i.runs(engines)]

    def missing(self) -> list[str]:
        return [kind for kind in KINDS if not self.ready(kind)]

    def troubled(self) -> dict[str, dict[str, object]]:
        """Kinds that crashed or failed to start recently, with what is known."""
        return {kind: health.describe() for kind, health in self.health.items() if health.troubled()}

    def pick(
        self, kind: str, exclude: frozenset[str] = frozenset(), prefer: str = "", engines: frozenset[str] = frozenset()
    ) -> Instance:
        """The least-loaded ready instance; `prefer` (one that holds this caller's context) if it has room.

        With `engines`, only an instance that runs one of them: if instances are ready but none
        does, NoInstance carries the engines (the request cannot be served here, however long it waits).
        """
        able = self.ready(kind, engines)
        if engines and not able and self.ready(kind):
            raise NoInstance(kind, engines)
        candidates = [i for i in able if i.record.id not in exclude]
        if not candidates:
            raise NoInstance(kind)
        preferred = next((i for i in candidates if i.record.id == prefer), None)
        if preferred is not None and not preferred.full:
            return preferred
        # A full instance would refuse; if all are full, the least loaded may have room by now.
        open_ = [i for i in candidates if not i.full] or candidates
        return min(open_, key=lambda i: (i.load, i.held))

    @contextlib.asynccontextmanager
    async def lease(
        self, kind: str, exclude: frozenset[str] = frozenset(), prefer: str = "", engines: frozenset[str] = frozenset()
    ) -> AsyncIterator[Instance]:
        """The least-loaded instance (or `prefer`; one running one of `engines`), counted as busy while in use."""
        instance = self.pick(kind, exclude, prefer, engines)
        self.channel(instance)
        instance.opened_since_report += 1
        instance.held += 1
        try:
            yield instance
        finally:
            instance.held -= 1
            if instance.forgotten and not instance.held:
                self._close_channel(instance)

    def snapshot(self) -> dict[str, list[dict[str, object]]]:
        """Every known instance, by kind."""
        return {
            kind: [
                {
                    **i.record.model_dump(),
                    "engines": sorted(i.engines),
                    "held_by_gateway": i.held,
                    "serving": i.serving,
                    "stopping": i.stopping or i.record.draining,
                    "seen_s_ago": round(time.monotonic() - i.last_seen, 2),
                }
                for i in known.values()
            ]
            for kind, known in self.instances.items()
        }

    async def close(self) -> None:
        for task in list(self._checks):
            task.cancel()
        for known in self.instances.values():
            for instance in known.values():
                if instance.channel is not None:
                    await instance.channel.close()
