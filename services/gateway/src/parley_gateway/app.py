"""The gateway's composition root: its parts wired together, and its HTTP and WebSocket surface.

    edge (access, limits, audit)  ─►  web (one ConversationSocket per socket, the SessionRegistry)
                                          ─►  conversation (ConversationSession, Reply, ...)
                                          ─►  routing (ServiceDirectory over NATS, GrpcServices)
    api (the HTTP API: /v1/audio/*, /v1/voices, /v1/dialogues, /v1/monitor)

Each part gets its own section of the settings (config.py), never the whole object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from nats.aio.client import Client as NatsClient
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from parley.registry import connect, keep_trying
from parley_gateway.api import auth, dialogues, monitor, speech, transcriptions, voices
from parley_gateway.api import errors as api_errors
from parley_gateway.api.dialogue_jobs import DialogueJobs
from parley_gateway.api.live_monitor import Monitor
from parley_gateway.config import GatewaySettings
from parley_gateway.edge.access import Access, AccessMiddleware
from parley_gateway.edge.audit import AuditLog, AuditMiddleware
from parley_gateway.edge.client_identity import ClientIdentity
from parley_gateway.edge.limits import RateLimitMiddleware, RequestLimits, SessionSlots
from parley_gateway.routing.discovery import ServiceDirectory
from parley_gateway.routing.model_services import GrpcServices
from parley_gateway.web.conversation_socket import ConversationSocket
from parley_gateway.web.session_registry import SessionRegistry
from parley_gateway.web.session_store import SessionStore

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.id = f"gw_{uuid.uuid4().hex[:12]}"
        self.nats: NatsClient | None = None
        self.directory: ServiceDirectory | None = None
        self.services: GrpcServices | None = None
        self.api_settings = settings.api()
        self.dialogues = DialogueJobs(self.api_settings.max_dialogues, self.api_settings.dialogue_keep_s)
        self.monitor = Monitor()
        access = settings.access()
        self.access = Access(
            list(access.keys), list(access.origins), access.token_ttl_s, allowed_hosts=list(access.hosts)
        )
        # Limits per client and per gateway (edge/limits.py), and the audit log.
        limits = settings.client_limits()
        self.clients = ClientIdentity(self.access, limits.trusted_proxies)
        self.slots = SessionSlots(limits.max_sessions, limits.max_sessions_per_client)
        self.request_limits = RequestLimits(limits.api_requests_per_minute, limits.api_uploads_per_minute)
        self.audit = AuditLog(settings.audit_log_path, settings.audit_content)
        self.store = SessionStore(settings.session_ttl_s)
        self.sessions = SessionRegistry(settings.conversation(), self.store, self.id)
        self.sockets = ConversationSocket(
            settings.connection(), self.sessions, self.clients, self.slots, self.audit, self.monitor.observe
        )
        self._tasks: list[asyncio.Task[Any]] = []

    @property
    def draining(self) -> bool:
        return self.sessions.draining

    async def start(self) -> None:
        if not self.access.enabled and self.settings.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "no API keys are set and the gateway listens on %s: anyone who reaches it can use it "
                "(set PARLEY_GATEWAY_API_KEYS)",
                self.settings.host,
            )
        self._tasks.append(asyncio.create_task(self._join_nats()))

    async def _join_nats(self) -> None:
        s = self.settings
        self.nats = await connect(s.nats_url, "parley-gateway", **s.nats_options())
        self.directory = ServiceDirectory(
            self.nats,
            s.discovery(),
            tls=s.grpc_channel_credentials() if s.grpc_tls_ca is not None else None,
        )
        self.services = self.sessions.services = GrpcServices(self.directory, s.model_services())
        await self.directory.watch_events()
        log.info("connected to NATS; discovering services")
        self._tasks.append(asyncio.create_task(keep_trying(self.store.bind, self.nats, "binding the session store")))
        await self.directory.run()

    async def drain(self) -> None:
        """Take no new session; end each live one once it is between turns; give up after `drain_s`."""
        await self.sessions.drain(self.settings.drain_s)

    async def stop(self) -> None:
        await self.sessions.close_all()
        await self.dialogues.close()
        for task in self._tasks:
            task.cancel()
        if self.directory is not None:
            await self.directory.close()
        if self.nats is not None and self.nats.is_connected:
            await self.nats.close()

    def missing(self) -> list[str]:
        """Kinds with no routable instance (NATS itself only before the first connection)."""
        if self.directory is None:
            return ["nats"]
        return self.directory.missing()

    def troubled(self) -> dict[str, dict[str, object]]:
        return self.directory.troubled() if self.directory is not None else {}


def create_app(settings: GatewaySettings) -> FastAPI:
    gateway = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        yield
        await gateway.stop()

    app = FastAPI(title="Parley gateway", lifespan=lifespan)
    app.state.gateway = gateway
    api_errors.install(app)
    # The last added runs first: audit (sees every answer), then the key check, then the rate limits.
    app.add_middleware(RateLimitMiddleware, limits=gateway.request_limits, clients=gateway.clients)
    app.add_middleware(AccessMiddleware, access=gateway.access)
    app.add_middleware(AuditMiddleware, audit=gateway.audit, clients=gateway.clients)
    for area in (auth, speech, transcriptions, voices, dialogues, monitor):
        app.include_router(area.router)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """503 naming the kinds with no ready instance, and the kinds that crashed or failed to start lately."""
        missing, troubled = gateway.missing(), gateway.troubled()
        body: dict[str, Any] = {"status": "draining" if gateway.draining else "not ready" if missing else "ready"}
        if missing:
            body["missing"] = missing
        if troubled:
            body["crashing"] = troubled
        if gateway.nats is not None and not gateway.nats.is_connected:
            body["nats"] = "reconnecting: routing to the instances known, checked over gRPC health"
        return JSONResponse(body, status_code=503 if missing or gateway.draining else 200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/services")
    async def services() -> dict[str, Any]:
        """Every known model-service instance, its address and its load; and recent crashes by kind."""
        if gateway.directory is None:
            return {}
        return {**gateway.directory.snapshot(), "crashing": gateway.troubled()}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.websocket("/v1/conversation")
    async def conversation(websocket: WebSocket) -> None:
        await gateway.sockets.serve(websocket)

    return app
