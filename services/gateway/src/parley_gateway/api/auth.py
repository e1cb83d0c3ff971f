"""`POST /v1/auth/token`: a short-lived token for the browser, minted from an API key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from parley_gateway.api.errors import ApiError
from parley_gateway.edge.access import Access

router = APIRouter(tags=["auth"])


@router.post("/v1/auth/token")
async def mint_token(request: Request) -> dict[str, Any]:
    """A token for places a browser cannot put a header (`?token=` on the WebSocket, EventSource, media URLs).

    Needs an API key itself (a token cannot renew itself, so a leaked one dies at its expiry).
    """
    access: Access = request.app.state.gateway.access
    key = Access.credential(request.headers)
    if access.enabled and not access.valid_key(key):
        raise ApiError(401, "a token is minted from an API key (Authorization: Bearer <key>)", "unauthorized")
    token, ttl = access.mint(key if access.enabled else "")
    return {"token": token, "expires_in": ttl, "required": access.enabled}
