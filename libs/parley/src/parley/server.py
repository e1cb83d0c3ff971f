"""The one way a Parley model service starts, serves and stops.

`run_service` gives every service the same life cycle:

1. bind the gRPC server at once, with health NOT_SERVING and reflection on,
   so probes and grpcurl work while the model loads;
2. register on NATS in the background (ready=false until loaded);
3. load the model in a worker thread, logging progress every few seconds,
   then run one tiny real inference with it (`self_test`): a build that
   crashes or a model that cannot answer never reports ready;
4. flip health to SERVING and the NATS load record to ready;
5. on SIGTERM/SIGINT, drain: report NOT_SERVING and `draining` on NATS (gateways
   stop routing to it at once), refuse new streams with UNAVAILABLE (a gateway
   retries them elsewhere), give the streams in flight up to `grace_s` to
   finish, and only then leave NATS and exit. Leaving NATS last matters: a
   gateway that no longer sees an instance closes its channel to it, which
   would cut the very streams the grace period is for.

It also says on NATS when it starts, fails to load and stops
(`parley.registry.ServiceEvent`), so a gateway can tell an instance that
keeps crashing from one that was never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NatsClient
from prometheus_client import Counter, Gauge, start_http_server

from parley import __version__
from parley.logs import setup_logging
from parley.registry import DRAINING_TRAILER, ServiceEvent, StreamSlots, connect, keep_trying, publish_event, register
from parley.settings import ServiceSettings

log = logging.getLogger(__name__)

MODEL_LOAD_SECONDS = Gauge("parley_model_load_seconds", "Seconds the model took to load", ["kind"])
STREAMS_ACTIVE = Gauge("parley_streams_active", "Streams being served", ["kind"])
STREAMS_TOTAL = Counter("parley_streams_total", "Streams served, by outcome", ["kind", "method", "outcome"])
READY = Gauge("parley_ready", "1 once the model is loaded and the service is SERVING", ["kind"])

PROGRESS_EVERY_S = 5.0

# Keepalive pings from gateways must be allowed or the server answers GOAWAY.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC binds with SO_REUSEPORT by default: two services given the same port would both listen
    # on it and share its connections (a TTS call landing on the ASR). One port, one server.
    ("grpc.so_reuseport", 0),
]


@dataclass
class ServiceSpec:
    """What a service plugs into the common life cycle."""

    kind: str
    # Fully-qualified gRPC service names, for health and reflection.
    grpc_services: list[str]
    # Adds the servicer(s) to the server.
    add_servicers: Callable[[grpc.aio.Server], None]
    # Blocking model load; runs in a worker thread.
    load_model: Callable[[], None]
    # One tiny real inference with what load_model loaded (a token, a short
    # phrase, a VAD frame); raises if the model cannot serve. Returns what it
    # did, for the log. Runs in the same worker thread, after load_model.
    self_test: Callable[[], str]
    # Extra NATS metadata (engine, model, ...).
    metadata: dict[str, str] = field(default_factory=dict)
    # Called once NATS answers, with the connection (e.g. to bind JetStream buckets); an error
    # is logged and retried, never fatal: the model serves without what it sets up.
    on_nats: Callable[[NatsClient], Awaitable[None]] | None = None
    # Largest request message (uploads need more than the 8 MiB default).
    max_receive_bytes: int = 8 * 1024 * 1024


class ServiceRuntime:
    """Shared state a servicer needs: its stream slots and metric labels.

    `capacity` streams are served at once (one per model instance for the
    LLM and TTS); up to `queue_limit` more are admitted and wait, in order,
    for a free model. Both are reported on NATS, so gateways route by real
    free capacity and only a full instance refuses a stream.
    """

    def __init__(self, kind: str, capacity: int, queue_limit: int = 0) -> None:
        self.kind = kind
        self.slots = StreamSlots(capacity=capacity, queue_limit=queue_limit)
        self.idle = asyncio.Event()  # no stream in flight (what draining waits for)
        self.idle.set()

    @contextlib.asynccontextmanager
    async def stream(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Hold one stream slot for the duration of a call; count its outcome.

        A call that finds every slot and queue place taken is refused with
        RESOURCE_EXHAUSTED (a gateway then tries another instance).
        """
        if self.slots.draining:
            STREAMS_TOTAL.labels(self.kind, method, "draining").inc()
            context.set_trailing_metadata(((DRAINING_TRAILER, "1"),))
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"this {self.kind} instance is stopping; try another instance"
            )
        if self.slots.full:
            STREAMS_TOTAL.labels(self.kind, method, "busy").inc()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.kind} instance is full: {self.slots.capacity} streams served and "
                f"{self.slots.queue_limit} waiting",
            )
        self.slots.active += 1
        self.idle.clear()
        STREAMS_ACTIVE.labels(self.kind).inc()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.slots.active -= 1
            if not self.slots.active:
                self.idle.set()
            STREAMS_ACTIVE.labels(self.kind).dec()
            STREAMS_TOTAL.labels(self.kind, method, outcome).inc()


def _load_and_test(kind: str, spec: ServiceSpec) -> None:
    spec.load_model()
    started = time.monotonic()
    did = spec.self_test()
    log.info("%s self-test passed in %.2f s: %s", kind, time.monotonic() - started, did)


async def _load_with_progress(kind: str, spec: ServiceSpec) -> float:
    started = time.monotonic()
    log.info("loading %s model", kind)
    task = asyncio.create_task(asyncio.to_thread(_load_and_test, kind, spec))
    while True:
        done, _ = await asyncio.wait({task}, timeout=PROGRESS_EVERY_S)
        if done:
            task.result()
            break
        log.info("still loading %s model (%.0f s)", kind, time.monotonic() - started)
    elapsed = time.monotonic() - started
    MODEL_LOAD_SECONDS.labels(kind).set(elapsed)
    log.info("%s model loaded in %.1f s", kind, elapsed)
    return elapsed


async def serve(settings: ServiceSettings, runtime: ServiceRuntime, spec: ServiceSpec) -> None:
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host)
        log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)

    server = grpc.aio.server(options=[*SERVER_OPTIONS, ("grpc.max_receive_message_length", spec.max_receive_bytes)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    spec.add_servicers(server)
    reflection.enable_server_reflection([*spec.grpc_services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    for name in ["", *spec.grpc_services]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    credentials = settings.grpc_server_credentials()
    bind = f"{settings.host}:{settings.port}"
    try:
        port = server.add_insecure_port(bind) if credentials is None else server.add_secure_port(bind, credentials)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen on {bind}: the port is in use or the address is not this host's") from exc
    await server.start()
    address = settings.advertised_address(port)
    log.info(
        "gRPC %s listening on %s:%d%s (advertised as %s)",
        spec.kind,
        settings.host,
        port,
        "" if credentials is None else " with TLS",
        address,
    )
    metadata = {**spec.metadata, "grpc_tls": "true" if credentials is not None else "false"}

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    nats_client: NatsClient | None = None
    instance_id = ""

    async def announce(event: str, error: str = "") -> None:
        if nats_client is not None and nats_client.is_connected and instance_id:
            record = ServiceEvent(event=event, kind=spec.kind, id=instance_id, address=address, error=error)
            with contextlib.suppress(Exception):  # best effort: NATS may be down
                await publish_event(nats_client, record)

    async def join_nats() -> None:
        nonlocal nats_client, instance_id
        nats_client = await connect(settings.nats_url, f"parley-{spec.kind}", **settings.nats_options())
        service = await register(
            nats_client,
            kind=spec.kind,
            version=__version__,
            address=address,
            metadata=metadata,
            load=runtime.slots.snapshot,
        )
        instance_id = service.id
        await announce("started")
        if spec.on_nats is not None:
            await keep_trying(spec.on_nats, nats_client, "NATS set-up")

    registration = asyncio.create_task(join_nats())
    loading = asyncio.create_task(_load_with_progress(spec.kind, spec))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is None:
        runtime.slots.ready = True
        READY.labels(spec.kind).set(1)
        for name in ["", *spec.grpc_services]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s ready", spec.kind)
        await stop.wait()
    elif loading.done():
        error = f"{type(loading.exception()).__name__}: {loading.exception()}"
        log.error("%s model failed to load or self-test: %s", spec.kind, error)
        with contextlib.suppress(Exception, asyncio.CancelledError):  # NATS may be unreachable: log only
            await asyncio.wait_for(asyncio.shield(registration), timeout=2)  # so the failure can be told
        await announce("failed", error)

    failed = loading.done() and not loading.cancelled() and loading.exception() is not None
    await drain(settings, runtime, spec.kind, health_servicer, announce, failed)
    registration.cancel()
    if nats_client is not None and nats_client.is_connected:
        await nats_client.drain()  # deregisters: only now do gateways forget this instance
    await server.stop(1.0)
    loading.cancel()
    if failed:
        raise SystemExit(1)


async def drain(
    settings: ServiceSettings,
    runtime: ServiceRuntime,
    kind: str,
    health_servicer: health.aio.HealthServicer,
    announce: Callable[[str], Awaitable[None]],
    failed: bool,
) -> None:
    """Take no new stream, and give those in flight up to `grace_s` to finish, still registered."""
    started = time.monotonic()
    runtime.slots.draining = True  # the NATS load record says so from the next poll on
    READY.labels(kind).set(0)
    await health_servicer.enter_graceful_shutdown()
    if not failed:
        await announce("stopping")  # gateways stop routing here at once, before their next poll
    log.info("draining: %d stream(s) in flight, up to %.0f s to finish", runtime.slots.active, settings.grace_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(runtime.idle.wait(), timeout=settings.grace_s)
    if runtime.slots.active:
        log.warning("grace period over: cutting %d stream(s) still running", runtime.slots.active)
    else:
        log.info("drained in %.1f s", time.monotonic() - started)


def run_service(
    kind: str, settings: ServiceSettings, capacity: int, build: Callable[[ServiceRuntime], ServiceSpec]
) -> None:
    """Entry point of every model service's `__main__`: `capacity` streams served at once."""
    setup_logging(kind, settings.log_level)
    runtime = ServiceRuntime(kind, capacity, settings.max_queue)

    async def main() -> None:
        # build() runs inside the loop so servicers may capture it.
        await serve(settings, runtime, build(runtime))

    asyncio.run(main())
