"""Who may use the gateway: API keys, short-lived tokens for the browser, WebSocket origins, security headers.

A public pod is reachable by anyone with its URL, so with `PARLEY_GATEWAY_API_KEYS` set:

- every HTTP route but `/healthz` and the page's own files (`/`, `/static/*`: the shell
  that asks for the key, which holds nothing else) needs a key, as `Authorization: Bearer
  <key>` (what the OpenAI SDK sends) or `X-API-Key`, or a token;
- a **token** is minted from a key by `POST /v1/auth/token` and expires (`token_ttl_s`);
  the browser puts it where it cannot set headers (the WebSocket, EventSource, media
  URLs) as `?token=`, so the key itself never appears in a URL or a proxy log. Tokens
  are HMACs over their expiry and their key's `key_id` (a hash: per-client limits count
  a browser as the key it got its token from) with a secret derived from the keys, so
  every gateway with the same keys accepts them and a removed key's tokens die with it;
- the WebSocket's `Origin`, when a browser sends one, must be one of the gateway's own
  origins or in `PARLEY_GATEWAY_ALLOWED_ORIGINS`: a page on another site cannot ride a
  visitor's network position or stored token into a conversation (cross-site WebSocket
  hijacking). This holds with or without keys.

With or without keys, every request (HTTP and WebSocket) must be addressed to one of the
gateway's own names (`Host`): an IP address, `localhost` (and `*.localhost`), or a name in
`PARLEY_GATEWAY_ALLOWED_HOSTS` (`runpod/start.sh` adds the pod's proxy name). A web page on
any other name is refused even when its DNS points at the gateway: that is DNS rebinding,
where a page the visitor opened re-resolves its own domain to 127.0.0.1 and so becomes
"same-origin" with a keyless local gateway. An IP address in `Host` is safe, as a browser
sends one only when the page's own URL holds it. The gateway's own origins come from the
same list: an origin is the gateway's own when its host is one of those names and it is
exactly the name and port the request was sent to (`*` in the list opens `Host`, never this).

Every response carries the security headers (CSP, nosniff, frame and referrer policy).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/healthz", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
# The page loads only its own files; media may be blob: URLs it made; nothing may frame it.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self' blob:; "
    "connect-src 'self'; worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# FastAPI's /docs loads Swagger UI from its CDN; it gets a CSP that allows exactly that.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
    "frame-ancestors 'none'"
)
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


def security_headers(path: str) -> dict[str, str]:
    return {
        "content-security-policy": DOCS_CSP if path in DOCS_PATHS else PAGE_CSP,
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
    }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def key_id(key: str) -> str:
    """A short stable name for an API key that does not reveal it (per-client limits, the audit log)."""
    return hashlib.sha256(b"parley-key-id\0" + key.encode()).hexdigest()[:12]


_KEY_ID = re.compile(r"^[0-9a-f]{12}$")


def _split(url: str) -> SplitResult | None:
    try:
        parsed = urlsplit(url)
        parsed.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return None
    return parsed


def _is_ip(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        return False
    return True


class AllowedHosts:
    """The names a request may be addressed to (`Host`), against DNS rebinding.

    Always: IP addresses, `localhost` and `*.localhost` (browsers resolve those to loopback
    themselves). Configured: exact names, `.example.com` for a domain and its subdomains, `*`
    for any name (behind a proxy that checks `Host` itself). Ports do not matter: a rebinding
    page is told apart by its name.
    """

    def __init__(self, names: list[str]) -> None:
        cleaned = {name.strip().lower().rstrip(".") for name in names if name.strip()}
        self.any = "*" in cleaned
        self.exact = {name for name in cleaned if not name.startswith(".")} | {"localhost"}
        self.domains = tuple({name for name in cleaned if name.startswith(".")} | {".localhost"})

    def named(self, hostname: str) -> bool:
        """Whether a host name (not an IP address) is one of the gateway's own."""
        hostname = hostname.lower().rstrip(".")
        return self.any or hostname in self.exact or f".{hostname}".endswith(self.domains)

    def allows(self, host_header: str | None) -> bool:
        """Whether a request's `Host` (`name[:port]`, `[v6]:port`) names this gateway."""
        parsed = _split(f"//{host_header or ''}")
        if parsed is None or not parsed.hostname:
            return False
        return _is_ip(parsed.hostname) or self.named(parsed.hostname)


class Access:
    def __init__(
        self,
        keys: list[str],
        allowed_origins: list[str],
        token_ttl_s: float,
        clock: Callable[[], float] = time.time,
        allowed_hosts: list[str] | None = None,
    ) -> None:
        self.keys = [key for key in keys if key]
        self.hosts = AllowedHosts(allowed_hosts or [])
        self.allowed_origins = {origin.rstrip("/").lower() for origin in allowed_origins if origin}
        self.token_ttl_s = token_ttl_s
        self.clock = clock
        self._secret = hashlib.sha256(b"parley-token\0" + b"\0".join(sorted(k.encode() for k in self.keys))).digest()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @staticmethod
    def is_public(path: str) -> bool:
        return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)

    def valid_key(self, candidate: str) -> bool:
        # compare_digest: the time taken does not tell how much of a guess was right.
        return any(hmac.compare_digest(candidate.encode(), key.encode()) for key in self.keys)

    def mint(self, key: str = "") -> tuple[str, int]:
        """A token `<expiry>.<key id>.<signature>`: it names (by `key_id`) the key it was minted from."""
        expires = int(self.clock() + self.token_ttl_s)
        body = f"{expires}.{key_id(key)}" if key else str(expires)
        return f"{body}.{self._sign(body)}", int(self.token_ttl_s)

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())

    def _token_body(self, token: str) -> str | None:
        """`<expiry>[.<key id>]` of a valid, unexpired token; None otherwise."""
        body, _, signature = token.rpartition(".")
        expires, _, kid = body.partition(".")
        if not expires.isdigit() or int(expires) < self.clock() or (kid and not _KEY_ID.match(kid)):
            return None
        return body if hmac.compare_digest(signature.encode(), self._sign(body).encode()) else None

    def valid_token(self, token: str) -> bool:
        return self._token_body(token) is not None

    def key_id(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        """The `key_id` of the key a request is made with, directly or by a token; None when open or unknown."""
        if not self.enabled:
            return None
        for credential in (self.credential(headers), query.get("token", "")):
            if not credential:
                continue
            if self.valid_key(credential):
                return key_id(credential)
            body = self._token_body(credential)
            if body is not None:
                return body.partition(".")[2] or None
        return None

    @staticmethod
    def credential(headers: Mapping[str, str]) -> str:
        """What a request presents as its key or token: `Authorization: Bearer …`, else `X-API-Key`."""
        bearer = headers.get("authorization", "")
        return bearer[7:].strip() if bearer.lower().startswith("bearer ") else headers.get("x-api-key", "")

    def allowed(self, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        """Whether a request carries a valid key (header) or token (header or ?token=); always when open."""
        if not self.enabled:
            return True
        credential = self.credential(headers)
        if credential and (self.valid_key(credential) or self.valid_token(credential)):
            return True
        token = query.get("token", "")
        return bool(token) and self.valid_token(token)

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """A browser's WebSocket from this gateway's own page, or from an allowed origin; non-browsers send none.

        `host` is the request's `Host`, already checked against the gateway's names (`hosts.allows`).
        """
        if not origin:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        parsed = _split(origin)
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
            return False
        # The page's own origin: the very name and port the request was sent to, itself one of the
        # gateway's names (checked before this). Another port on the same host is another site.
        return self.hosts.allows(parsed.netloc) and parsed.netloc == (host or "").lower()


class AccessMiddleware:
    """ASGI middleware: refuses what `Access` refuses, and adds the security headers to every response."""

    def __init__(self, app: Any, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        host = headers.get("host", "")
        if scope["type"] == "websocket":
            host_ok = self.access.hosts.allows(host)
            origin_ok = host_ok and self.access.origin_allowed(headers.get("origin"), host)
            if not origin_ok or not self.access.allowed(headers, query):
                why = f"Host {host!r}" if not host_ok else "origin " + headers.get("origin", "")
                log.warning("WebSocket %s refused: %s", path, why if not origin_ok else "no key")
                await receive()  # websocket.connect; closing before accepting answers HTTP 403
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        if not self.access.hosts.allows(host):
            log.warning("%s refused: Host %r is not one of this gateway's names", path, host)
            message = (
                f"this gateway does not answer to the name {host!r}: add it to PARLEY_GATEWAY_ALLOWED_HOSTS "
                "(IP addresses, localhost and the names listed there are always accepted)"
            )
            await self._refuse(send, path, 400, "unknown_host", message, [])
            return
        if not self.access.is_public(path) and not self.access.allowed(headers, query):
            message = "an API key is needed: Authorization: Bearer <key> (PARLEY_GATEWAY_API_KEYS)"
            await self._refuse(send, path, 401, "unauthorized", message, [(b"www-authenticate", b"Bearer")])
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._headers(path, list(message.get("headers", [])))}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _refuse(
        self, send: Any, path: str, status: int, code: str, message: str, extra: list[tuple[bytes, bytes]]
    ) -> None:
        """An OpenAI-style JSON error, with the security headers."""
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
        headers = self._headers(path, [*extra, (b"content-type", b"application/json")])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps({"error": error}).encode()})

    @staticmethod
    def _headers(path: str, existing: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        present = {name.lower() for name, _ in existing}
        added = [(k.encode(), v.encode()) for k, v in security_headers(path).items() if k.encode() not in present]
        return existing + added
