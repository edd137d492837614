"""Bearer-token auth of the curation API and the model endpoint.

Tokens are checked against HMAC digests under the deployment's token salt (services.settings
keeps only those). Owner ids, what job records keep for a token, are HMACs under a second salt
kept in Redis itself (`deployment_salt`), so they survive restarts exactly as long as the
records they name. Browser sessions, the other way into /ui/ and /docs, are services.ui_auth's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # settings imports this module (token_digest): no import back at run time
    from services.settings import ApiConfig


def token_digest(token: str, salt: str) -> str:
    return hmac.new(bytes.fromhex(salt), b"check:" + token.encode(), hashlib.sha256).hexdigest()


def owner_id(token: str, salt: bytes) -> str:
    """What job records keep for a token; `salt` is the job store's (deployment_salt)."""
    return hmac.new(salt, b"owner:" + token.encode(), hashlib.sha256).hexdigest()[:32]


def deployment_salt(redis_url: str, key: str) -> bytes:
    """The salt stored under `key`, drawn by whichever replica asks first (SET NX)."""
    import redis

    r = redis.Redis.from_url(redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        r.set(key, secrets.token_hex(32), nx=True)
        return bytes.fromhex(r.get(key).decode())
    finally:
        r.close()


def bearer_error(authorization: str | None, api: ApiConfig) -> str | None:
    """Why this Authorization header is refused, or None for a valid token."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return "missing bearer token: send 'Authorization: Bearer <token>'"
    if not api.token_salt:
        return "invalid bearer token"
    digest = token_digest(token, api.token_salt)
    if not any(hmac.compare_digest(digest, d) for d in api.token_digests):
        return "invalid bearer token"
    return None


def bearer_token(authorization: str) -> str:
    """The token of an Authorization header that bearer_error accepted."""
    return authorization.partition(" ")[2].strip()


class BearerAuth:
    """ASGI middleware: 401 for every request without a valid token, routed or not (an
    unknown path reveals nothing either), except GET on `open_paths` (relative to the app's
    root_path). It sits outside everything, so a refused body is never read.

    `session`, when given, is the browser's way in (services.ui_routes.UiAuth): on the paths its
    `covers(method, path)` names, a request without a valid token goes to its
    `gate(scope, receive, send, app)`, which lets a valid session through and answers the rest
    itself. Every other path stays bearer-only."""

    def __init__(self, app: Any, api: ApiConfig, open_paths: tuple[str, ...] = (), session: Any = None):
        self.app, self.api, self.open_paths, self.session = app, api, open_paths, session

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if scope.get("method") == "GET" and path in self.open_paths:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        error = bearer_error(header, self.api)
        if error is None:
            return await self.app(scope, receive, send)
        if self.session is not None and scope["type"] == "http" and self.session.covers(scope.get("method"), path):
            return await self.session.gate(scope, receive, send, self.app)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        body = json.dumps({"detail": error}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
