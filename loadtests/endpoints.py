"""Where a load test sends its traffic, and with which credentials.

Plain urllib and no gevent here, so that tests can import it without monkey-patching their own process.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any


def auth_headers(api_key: str) -> dict[str, str]:
    """The header every HTTP route wants when the gateway has `PARLEY_GATEWAY_API_KEYS`; none for an open one."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _request(host: str, path: str, api_key: str, method: str = "GET", timeout_s: float = 10.0) -> Any:
    request = urllib.request.Request(
        host.rstrip("/") + path, method=method, headers=auth_headers(api_key), data=b"" if method == "POST" else None
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def mint_token(host: str, api_key: str) -> str:
    """A short-lived token for the WebSocket's `?token=` (`POST /v1/auth/token`), so the key stays out of URLs."""
    return str(_request(host, "/v1/auth/token", api_key, method="POST")["token"])


def conversation_url(host: str, token: str = "") -> str:
    """`http(s)://host[:port]` → `ws(s)://host[:port]/v1/conversation[?token=…]`."""
    parts = urllib.parse.urlsplit(host.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = urllib.parse.urlencode({"token": token}) if token else ""
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + "/v1/conversation", query, ""))


def discover_tts(host: str, api_key: str) -> str:
    """The gRPC address of a ready TTS instance, as the gateway's `/v1/services` lists it.

    The address is the one the instance advertises on NATS: right for a local stack or a pod
    network, but possibly unreachable from a load generator elsewhere (then pass --tts-address).
    """
    services = _request(host, "/v1/services", api_key)
    instances = [i for i in services.get("tts", []) if i.get("ready") and not i.get("stopping")]
    if not instances:
        raise RuntimeError(f"no ready TTS instance in {host}/v1/services; pass --tts-address")
    # The least busy one, as the gateway would pick: a load test should not pile onto one instance.
    return str(min(instances, key=lambda i: i.get("active", 0))["address"])
