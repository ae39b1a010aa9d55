"""The HTTP surfaces' bearer token: one check for the /v1 API, the dashboard and the
ksqlDB-shaped view routes, so no route of the views service answers without it."""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = ["bearer_headers", "require_token"]

_BEARER = HTTPBearer(auto_error=False, description="ONCEFLOW_API_TOKEN, when it is set")


def require_token(token: str | None) -> Any:
    """A dependency that asks for `Authorization: Bearer <token>` when a token is set."""
    def check(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                     Depends(_BEARER)] = None) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a bearer token is needed: Authorization: Bearer <token> "
                                     "(ONCEFLOW_API_TOKEN)")
    return Depends(check)


def bearer_headers(token: str | None) -> dict[str, str]:
    """What a client of these surfaces sends for `token` (nothing when none is set)."""
    return {"Authorization": f"Bearer {token}"} if token else {}
