"""The curation API in a browser: log in once (a session cookie, services.ui_auth), then the
job list, /docs (Swagger UI served from the swagger-ui-bundle package: nothing loads from
another host) and /openapi.json.

    GET  /ui/login, POST /ui/login     the form; a valid token sets the session cookie → 303 to `next`
    POST /ui/logout                    clears the cookie → 303 to the form
    GET  /ui/jobs                      the caller's jobs, newest first (?format=json: {"total", "items"})
    GET  /docs, /openapi.json, /docs/assets/{name}

Only these paths (GET /docs, /openapi.json and its assets; GET and POST under /ui/) take the
session instead of the bearer token; the job API stays bearer-only. The outermost BearerAuth
hands requests to these paths to `UiAuth.gate`, which answers for unknown ones too, so a path
under /ui/ says nothing without a credential. Routes check again with the `UiAuth.owner`
dependency. A refused browser navigation is sent to the login form, anything else gets 401 JSON.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from services.job_record import JobRecord
from services.jobs import JobStore, JobStoreUnavailable
from services.auth import bearer_error, owner_id
from services.settings import ApiConfig
from services.ui_auth import (COOKIE, MAX_AGE_S, check_session, cookie_header, login_url, make_session, safe_next,
                              session_key, wants_html)

_PUBLIC = {("GET", "/ui/login"), ("POST", "/ui/login"), ("POST", "/ui/logout")}
_DOCS = ("/docs", "/openapi.json")
_ASSETS = "/docs/assets/"
# The only files served from the package (name → media type): nothing else in it is reachable.
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}

# The UI's own pages need no script and load nothing; the docs page runs Swagger UI's inline
# start-up script and bundle, all from this origin.
PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'")


def app_path(scope: dict) -> str:
    """The request path relative to the app's root (Serve's route prefix), as routes see it."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


@lru_cache(maxsize=1)
def _templates() -> Any:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                       autoescape=select_autoescape(default=True, default_for_string=True))


class UiAuth:
    """Who is asking on the cookie-authorized paths: a valid bearer header (scripts) or a valid
    session cookie (browsers). `salt` is the deployment's owner salt (from Redis, may raise
    JobStoreUnavailable)."""

    def __init__(self, api: ApiConfig, salt: Callable[[], bytes]):
        self.api, self.salt = api, salt
        self._key: bytes | None = None

    def key(self) -> bytes:
        if self._key is None:
            self._key = session_key(self.salt(), self.api.token_salt, self.api.token_digests)
        return self._key

    @staticmethod
    def covers(method: str, path: str) -> bool:
        """The paths where a session stands in for the bearer token (BearerAuth's `session`)."""
        if method == "GET" and (path in _DOCS or path.startswith(_ASSETS)):
            return True
        return method in ("GET", "POST") and path.startswith("/ui/")

    def identify(self, authorization: str | None, cookie: str | None) -> str | None:
        """The owner id, or None. An Authorization header is answered on its own: a script that
        sent a wrong token hears so rather than being judged by a cookie it may not know about."""
        if authorization:
            if bearer_error(authorization, self.api) is not None:
                return None
            return owner_id(authorization.partition(" ")[2].strip(), self.salt())
        return check_session(cookie, self.key(), time.time())

    def refusal(self, scope: dict, authorization: str | None, cookie: str | None) -> tuple[int, str, dict[str, str]]:
        """(status, detail, headers) for a request `identify` refused."""
        root = scope.get("root_path", "")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        query = scope.get("query_string", b"").decode("latin-1")
        fmt = (parse_qs(query).get("format") or [None])[0]
        if not authorization and wants_html(scope.get("method", "GET"), headers.get("accept"), fmt):
            here = app_path(scope) + (f"?{query}" if query else "")
            return 303, "log in first", {"Location": login_url(root, here), "Cache-Control": "no-store"}
        if authorization:
            detail = bearer_error(authorization, self.api) or "invalid bearer token"
        elif cookie:
            detail = f"invalid or expired session: log in again at {root}/ui/login, or send a bearer token"
        else:
            detail = (f"missing bearer token or session: send 'Authorization: Bearer <token>' "
                      f"or log in at {root}/ui/login")
        return 401, detail, {"WWW-Authenticate": "Bearer"}

    def owner(self, request: Request) -> str:
        """The FastAPI dependency of every cookie-authorized route: the caller's owner id (what job
        records keep), or HTTPException 303 to the login form (a browser navigating) or 401."""
        authorization, cookie = request.headers.get("authorization"), request.cookies.get(COOKIE)
        who = self.identify(authorization, cookie)
        if who is None:
            status, detail, headers = self.refusal(request.scope, authorization, cookie)
            raise HTTPException(status, detail, headers=headers)
        return who

    async def gate(self, scope: dict, receive: Any, send: Any, app: Any) -> None:
        """BearerAuth's hand-off for `covers` paths without a valid bearer token: the request goes
        on with a valid session (or to the login form), else it is answered here, routed or not."""
        method, path = scope.get("method", ""), app_path(scope)
        if (method, path) in _PUBLIC:
            return await app(scope, receive, send)
        request = Request(scope)
        authorization, cookie = request.headers.get("authorization"), request.cookies.get(COOKIE)
        try:
            who = await run_in_threadpool(self.identify, authorization, cookie)
        except JobStoreUnavailable as exc:
            response: Response = JSONResponse({"detail": f"{exc}; retry shortly"}, status_code=503,
                                              headers={"Retry-After": "2"})
            return await response(scope, receive, send)
        if who is not None:
            return await app(scope, receive, send)
        status, detail, headers = self.refusal(scope, authorization, cookie)
        response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
        await response(scope, receive, send)


def _html(name: str, status: int = 200, csp: str = PAGE_CSP, **context: Any) -> HTMLResponse:
    body = _templates().get_template(name).render(**context)
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store", "Content-Security-Policy": csp,
                                                           "X-Frame-Options": "DENY"})


def _secure(request: Request) -> bool:
    # A TLS proxy in front says so in X-Forwarded-Proto; trusting it can only add Secure.
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"


def _job_row(record: JobRecord) -> dict[str, Any]:
    return record.model_dump(mode="json", include={"id", "status", "problems", "kept", "created_at", "updated_at"})


def ui_router(api: ApiConfig, ui: UiAuth, store: Callable[[], JobStore], openapi: Callable[[], dict[str, Any]],
              title: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui/login")
    def login_form(request: Request, next: str | None = Query(None, max_length=2000)) -> HTMLResponse:
        return _html("login.html", root=request.scope.get("root_path", ""), next=safe_next(next), error=None)

    @router.post("/ui/login")
    async def login(request: Request) -> Response:
        # Parsed here rather than with Form(): no multipart parser, and a body that is not a form
        # (a script posting JSON) is simply a login without a token.
        try:
            form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
        except ValueError:  # more fields than a login form has
            form = {}
        token = (form.get("token") or [""])[0].strip()
        target = safe_next((form.get("next") or [None])[0])
        root = request.scope.get("root_path", "")
        if not token or bearer_error(f"Bearer {token}", api) is not None:
            return _html("login.html", status=401, root=root, next=target, error="That token is not valid here.")
        who = owner_id(token, await run_in_threadpool(ui.salt))
        session = make_session(who, await run_in_threadpool(ui.key), time.time(), MAX_AGE_S)
        response = RedirectResponse(root + target, status_code=303, headers={"Cache-Control": "no-store"})
        response.headers.append("Set-Cookie", cookie_header(session, path=root or "/", secure=_secure(request)))
        return response

    @router.post("/ui/logout")
    def logout(request: Request) -> Response:
        # Sessions are not stored, so this ends the browser's copy only; changing the
        # deployment's tokens ends them all (the signing key depends on them).
        root = request.scope.get("root_path", "")
        response = RedirectResponse(login_url(root), status_code=303, headers={"Cache-Control": "no-store"})
        response.headers.append("Set-Cookie", cookie_header("", path=root or "/", secure=_secure(request), max_age=0))
        return response

    @router.get("/ui/jobs")
    def jobs(request: Request, format: str | None = Query(None, pattern="^(html|json)$"),
             offset: int = Query(0, ge=0, le=10**6), limit: int = Query(50, ge=1, le=500),
             who: str = Depends(ui.owner)) -> Response:
        total, records = store().list_owned(who, offset, limit)
        items = [_job_row(r) for r in records]
        if format == "json" or (format is None and "application/json" in request.headers.get("accept", "")):
            return JSONResponse({"total": total, "offset": offset, "limit": limit, "items": items},
                                headers={"Cache-Control": "no-store"})
        root = request.scope.get("root_path", "")
        pages = {"prev": max(0, offset - limit) if offset else None,
                 "next": offset + limit if offset + limit < total else None}
        return _html("jobs.html", root=root, items=items, total=total, offset=offset, limit=limit, pages=pages,
                     quote=quote)

    @router.get("/openapi.json")
    def openapi_json(_: str = Depends(ui.owner)) -> JSONResponse:
        return JSONResponse(openapi(), headers={"Cache-Control": "no-store"})

    @router.get("/docs")
    def docs(request: Request, _: str = Depends(ui.owner)) -> HTMLResponse:
        from fastapi.openapi.docs import get_swagger_ui_html

        assets = f"{request.scope.get('root_path', '')}/docs/assets"
        page = get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title=title,
                                   swagger_js_url=f"{assets}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{assets}/swagger-ui.css",
                                   swagger_favicon_url=f"{assets}/favicon-32x32.png",
                                   # Swagger UI would otherwise send the schema's URL to validator.swagger.io.
                                   swagger_ui_parameters={"validatorUrl": None})
        page.headers.update({"Cache-Control": "no-store", "Content-Security-Policy": DOCS_CSP,
                             "X-Frame-Options": "DENY"})
        return page

    @router.get("/docs/assets/{name}")
    def docs_asset(name: str, _: str = Depends(ui.owner)) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, "no such asset")
        from swagger_ui_bundle import swagger_ui_path

        return FileResponse(Path(swagger_ui_path) / name, media_type=ASSETS[name],
                            headers={"Cache-Control": "private, max-age=86400"})

    return router
