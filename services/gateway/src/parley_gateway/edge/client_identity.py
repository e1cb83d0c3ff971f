"""Who a client is, for limits and the audit log.

A client is its API key when keys are on (`key:<id>`, a hash: the key itself is never kept
or logged), else its IP address (`ip:<address>`; an IPv6 client is its /64, what one host
usually holds). X-Forwarded-For counts only from a peer in `PARLEY_GATEWAY_TRUSTED_PROXIES`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from parley_gateway.edge.access import Access

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Where a request's client id is kept in its ASGI scope, once worked out.
SCOPE_KEY = "parley.client"


class ClientIdentity:
    """Who a request or socket is: `key:<id>` for a valid key or a token minted from one, else `ip:<address>`."""

    def __init__(self, access: Access, trusted_proxies: Sequence[IPNetwork] = ()) -> None:
        self.access = access
        self.trusted = list(trusted_proxies)

    def of(self, scope: MutableMapping[str, Any]) -> str:
        """The client of an ASGI scope (worked out once, then kept in the scope)."""
        known = scope.get(SCOPE_KEY)
        if isinstance(known, str):
            return known
        headers = _headers(scope)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        key = self.access.key_id(headers, query)
        client = f"key:{key}" if key else f"ip:{self.address(scope)}"
        scope[SCOPE_KEY] = client
        return client

    def address(self, scope: Mapping[str, Any]) -> str:
        peer = scope.get("client")
        address = _ip(peer[0] if peer else "")
        if address is not None and self._trusted(address):
            hops = [hop.strip() for value in _all(scope, b"x-forwarded-for") for hop in value.split(",")]
            # Right to left: each trusted proxy names the one before it; the first other address is the client.
            for hop in reversed(hops):
                found = _ip(hop)
                if found is None:
                    break
                address = found
                if not self._trusted(found):
                    break
        if address is None:
            return "unknown"
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        return str(address)

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.trusted)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _headers(scope: Mapping[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _all(scope: Mapping[str, Any], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == name]
