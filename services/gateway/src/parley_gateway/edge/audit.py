"""The audit log: one JSON line per thing a client did, on the logger `parley.audit`.

    {"ts": "2026-11-22T09:41:57.123Z", "event": "session.start", "client": "key:3f2a9c01b7de", "session_id": ...}

`client` is who (`key:<id>`, a hash of the API key, or `ip:<address>`, see limits.py);
`event` is what: `ws.connect` (`outcome` accepted or refused, `status`), `ws.close` (`code`,
`duration_ms`), `session.start`, `session.end` (`reason`, `duration_ms`, `errors`),
`session.refused` (`code`), `http` (`method`, `path`, `status`, `duration_ms`). Health probes
and the page's static files are left out. Never audio, never a query string (it may hold a
token), and no text unless `PARLEY_GATEWAY_AUDIT_CONTENT` is on (`text.input`, `transcript`,
`response`). `PARLEY_GATEWAY_AUDIT_LOG_PATH` sends the lines to a file of their own.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from datetime import UTC, datetime
from typing import Any

from parley_gateway.edge.client_identity import ClientIdentity

LOGGER = "parley.audit"
QUIET_PATHS = ("/healthz", "/readyz", "/favicon.ico")
QUIET_PREFIXES = ("/static/",)
MAX_PATH_CHARS = 200


class AuditLog:
    def __init__(self, path: str = "", content: bool = False) -> None:
        self.content = content
        self.logger = logging.getLogger(LOGGER)
        self.logger.setLevel(logging.INFO)  # an audit trail does not follow the log level
        for handler in [h for h in self.logger.handlers if getattr(h, "parley_audit", False)]:
            self.logger.removeHandler(handler)
            handler.close()
        self.logger.propagate = not path
        if path:
            handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")  # follows logrotate
            handler.setFormatter(logging.Formatter("%(message)s"))
            handler.parley_audit = True  # type: ignore[attr-defined]
            self.logger.addHandler(handler)

    def record(self, event: str, client: str, **fields: Any) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = {"ts": now, "event": event, "client": client}
        line.update({name: value for name, value in fields.items() if value is not None})
        self.logger.info(json.dumps(line, ensure_ascii=False, separators=(",", ":")))

    def said(self, event: str, client: str, **fields: Any) -> None:
        """A line with what someone said or typed: written only with `audit_content` on."""
        if self.content:
            self.record(event, client, **fields)


def since_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


class AuditMiddleware:
    """ASGI middleware (outermost): an `http` line per request, `ws.connect`/`ws.close` per WebSocket."""

    def __init__(self, app: Any, audit: AuditLog, clients: ClientIdentity) -> None:
        self.app = app
        self.audit = audit
        self.clients = clients

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = self.clients.of(scope)
        path: str = scope["path"]
        if scope["type"] == "http" and (path in QUIET_PATHS or path.startswith(QUIET_PREFIXES)):
            await self.app(scope, receive, send)
            return
        path = path[:MAX_PATH_CHARS]
        started = time.monotonic()
        status: int | None = None
        accepted = False
        close_code: int | None = None

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status, accepted, close_code
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "websocket.accept":
                accepted = True
                self.audit.record("ws.connect", client, path=path, outcome="accepted")
            elif kind == "websocket.close":
                close_code = message.get("code", 1000)
                if not accepted:  # refused at the handshake (HTTP 403)
                    self.audit.record("ws.connect", client, path=path, outcome="refused", status=403)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if scope["type"] == "http":
                self.audit.record(
                    "http",
                    client,
                    method=scope["method"],
                    path=path,
                    status=status or 500,
                    duration_ms=since_ms(started),
                )
            elif accepted:
                self.audit.record("ws.close", client, code=close_code, duration_ms=since_ms(started))
