"""API keys, tokens, origins and security headers on the real gateway app (no services needed)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from parley_gateway.app import create_app
from parley_gateway.config import GatewaySettings
from parley_gateway.edge.access import Access

KEY = "k" * 24


def client(base_url: str = "http://gw.example:7860", **settings: object) -> TestClient:
    # No `with`: the lifespan (NATS) does not run; access control comes before any of that.
    # The test client's WebSockets say `Host: testserver`; HTTP goes to `base_url`'s name.
    settings.setdefault("allowed_hosts", "gw.example,testserver")
    return TestClient(create_app(GatewaySettings(**settings)), base_url=base_url)  # type: ignore[arg-type]


def websocket_refused(http: TestClient, headers: dict[str, str]) -> bool:
    try:
        with http.websocket_connect("/v1/conversation", headers=headers) as ws:
            ws.close()
    except WebSocketDisconnect as refused:
        assert refused.code == 1008
        return True
    return False


def test_tokens_expire_and_belong_to_their_keys() -> None:
    now = [1000.0]
    access = Access([KEY], [], token_ttl_s=60, clock=lambda: now[0])
    token, ttl = access.mint()
    assert ttl == 60 and access.valid_token(token) and not access.valid_key(token)
    assert not access.valid_token(token[:-2] + "xx") and not access.valid_token("garbage")
    assert not Access(["another-key-of-24-chars!"], [], 60, clock=lambda: now[0]).valid_token(token)
    now[0] += 61
    assert not access.valid_token(token)


def test_with_keys_every_route_but_health_and_the_page_shell_needs_one() -> None:
    http = client(api_keys=f"{KEY},{'q' * 20}")
    assert http.get("/healthz").status_code == 200
    assert http.get("/").status_code == 200 and http.get("/static/js/api.js").status_code == 200
    for path in ("/v1/voices", "/v1/services", "/readyz", "/metrics", "/docs", "/openapi.json", "/v1/monitor"):
        refused = http.get(path)
        assert refused.status_code == 401, path
        assert refused.json()["error"]["code"] == "unauthorized" and refused.headers["www-authenticate"] == "Bearer"
    assert http.get("/metrics", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    assert http.get("/metrics", headers={"x-api-key": "q" * 20}).status_code == 200
    assert http.get("/metrics", headers={"authorization": "Bearer wrong-key-wrong-key"}).status_code == 401

    assert http.post("/v1/auth/token").status_code == 401
    token = http.post("/v1/auth/token", headers={"authorization": f"Bearer {KEY}"}).json()["token"]
    assert http.get(f"/metrics?token={token}").status_code == 200
    assert http.post("/v1/auth/token", headers={"authorization": f"Bearer {token}"}).status_code == 401  # no renewal

    with pytest.raises(WebSocketDisconnect) as refused, http.websocket_connect("/v1/conversation"):
        pass
    assert refused.value.code == 1008
    with http.websocket_connect(f"/v1/conversation?token={token}") as ws:
        ws.close()


def test_keys_must_be_long() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        GatewaySettings(api_keys="short")


def test_a_websocket_from_another_site_is_refused_with_or_without_keys() -> None:
    http = client(allowed_origins="https://studio.example")
    for origin in ("http://evil.example", "http://testserver.evil.example", "null"):
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            http.websocket_connect("/v1/conversation", headers={"origin": origin}),
        ):
            pass
        assert refused.value.code == 1008, origin
    for origin in ("http://testserver", "https://studio.example", None):  # the test client says Host: testserver
        headers = {"origin": origin} if origin else {}
        with http.websocket_connect("/v1/conversation", headers=headers) as ws:
            ws.close()


def test_every_response_carries_the_security_headers() -> None:
    http = client()
    for path in ("/", "/healthz", "/static/js/main.js", "/v1/nowhere"):
        headers = http.get(path).headers
        assert "default-src 'self'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"
    assert "cdn.jsdelivr.net" in http.get("/docs").headers["content-security-policy"]


def test_dns_rebinding_is_refused_on_a_keyless_local_gateway() -> None:
    """A page on evil.example whose DNS now says 127.0.0.1: same-origin with itself, but not one of our names."""
    http = client(allowed_hosts="")  # what `make run` runs: no keys, no extra names
    for path in ("/v1/voices", "/v1/services", "/", "/healthz", "/static/js/main.js"):
        refused = http.get(path, headers={"host": "evil.example:7860"})
        assert refused.status_code == 400, path
        assert refused.json()["error"]["code"] == "unknown_host" and "PARLEY_GATEWAY_ALLOWED_HOSTS" in refused.text
        assert refused.headers["x-frame-options"] == "DENY"
    rebound = {"host": "evil.example:7860", "origin": "http://evil.example:7860"}
    assert websocket_refused(http, rebound)
    assert websocket_refused(http, {"host": "evil.example:7860"})  # no Origin: still not our name
    for host in ("127.0.0.1:7860", "localhost:7860", "[::1]:7860", "app.localhost:7860", "10.1.2.3:7860"):
        assert http.get("/healthz", headers={"host": host}).status_code == 200, host
        assert not websocket_refused(http, {"host": host, "origin": f"http://{host}"}), host


def test_the_configured_names_and_only_those_are_served() -> None:
    http = client(allowed_hosts="parley.example, .studio.example")
    for host in ("parley.example", "parley.example:8443", "studio.example", "a.studio.example:7860"):
        assert http.get("/healthz", headers={"host": host}).status_code == 200, host
        assert not websocket_refused(http, {"host": host, "origin": f"https://{host}"}), host
    for host in ("evil.example", "parley.example.evil.example", "xstudio.example", "", "bad host", "a:b:c"):
        assert http.get("/healthz", headers={"host": host}).status_code == 400, host
        assert websocket_refused(http, {"host": host}), host
    anything = client(allowed_hosts="*")
    assert anything.get("/healthz", headers={"host": "whatever.example"}).status_code == 200


def test_a_websocket_comes_only_from_the_gateways_own_page_on_one_of_its_names() -> None:
    http = client(allowed_hosts="parley.example")
    own = {
        "127.0.0.1:7860": "http://127.0.0.1:7860",  # the page loaded from this address and port
        "parley.example": "https://parley.example",  # a named host behind a proxy (port 443)
        "localhost:8080": "http://localhost:8080",  # a published port: the browser's own view of it
    }
    for host, origin in own.items():
        assert not websocket_refused(http, {"host": host, "origin": origin}), origin
    foreign = [
        ("127.0.0.1:7860", "http://203.0.113.9"),  # a page served from some other IP address
        ("10.0.0.5:7860", "http://10.0.0.5:9999"),  # the same address, another port: another site
        ("localhost:7860", "http://localhost:3000"),  # another local app's page
        ("localhost:7860", "http://evil.example"),
        ("parley.example", "http://parley.example.evil.example"),
    ]
    for host, origin in foreign:
        assert websocket_refused(http, {"host": host, "origin": origin}), origin
    anything = client(allowed_hosts="*")  # any Host (a proxy checks it), yet only the page's own origin
    assert websocket_refused(anything, {"host": "whatever.example", "origin": "http://evil.example"})
    assert not websocket_refused(anything, {"host": "whatever.example", "origin": "http://whatever.example"})
