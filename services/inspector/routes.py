"""The inspector's pages over one run directory; each is HTML, and JSON with `?format=json`.

    GET /                                   overview: funnel, accuracy, loss, timings, config (?round=N)
    GET /problems                           ?outcome=kept|mixed|<skip reason>&q=&offset=&limit=&round=
    GET /problems/{problem_id}              one problem's trace, teacher prompt and answer's confidence
    GET /problems/{problem_id}/kl           the trained student's per-token KL to the teacher
    GET /eval/{benchmark}                   ?a=base&b=ssb&filter=all|base_right_student_wrong|base_wrong_student_right

`build_inspector_router(resolve)` makes them for any mount: `resolve` is a FastAPI dependency
returning the run directory of the request (`ssb inspect` returns its one directory; a service
can check a login and map a job id from the path). Every link is built from a base URL taken
per request (the app's root_path + the router's prefix with its path parameters filled), so the
same pages work at `/` and under `/ui/jobs/{job_id}`.

A damaged or missing trace or shard file, and a store from before traces, answer 409 with the
store's message (naming the file); what is not in the run answers 404.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from services.inspector import views
from ssb.layout import RemoteRunDirError
from ssb.run_view import MIXED, BadRequest, NotFound, RunView
from ssb.store import StoreError

# Pages load nothing from anywhere; the one inline script shows a token's alternatives on click.
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
MAX_LIMIT = 500
# Page fields that name the server's files (the resolved config names several): a service shows
# them to clients through `redact`.
SERVER_PATHS = ("run_dir", "store_error", "adapter", "config")


@lru_cache(maxsize=1)
def _templates() -> Any:
    from jinja2 import Environment, FileSystemLoader

    # The page skeleton and its shared styles are the service UI's (services/templates/page.html).
    here = Path(__file__).parent
    env = Environment(loader=FileSystemLoader([here / "templates", here.parent / "templates"]), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(seg=lambda v: quote(str(v), safe=""), cell=views.cell, pct=views.pct, ci=views.ci,
                       verdict=views.verdict_word, shade=views.shade, token_title=views.token_title,
                       kl_title=views.kl_title)
    env.globals.update(legend=views.legend, MIXED=MIXED, summary_columns=views.SUMMARY_COLUMNS)
    return env


def base_url(request: Request, local: str) -> str:
    """The URL prefix of this router's pages for this request: root_path + the mount prefix
    (the matched route's path minus `local`, the route's own path) with path parameters filled."""
    route = request.scope.get("route")
    template = getattr(route, "path_format", "") or ""
    prefix = template[: len(template) - len(local)] if template.endswith(local) else ""
    params = {k: quote(str(v), safe="") for k, v in request.path_params.items()}
    try:
        prefix = prefix.format(**params)
    except (KeyError, IndexError, ValueError):
        prefix = ""
    return request.scope.get("root_path", "").rstrip("/") + prefix.rstrip("/")


class Links:
    """Links relative to the base URL; `round` only when it is not round 1, empty values dropped."""

    def __init__(self, base: str, r: int = 1):
        self.base, self.round = base, r

    def __call__(self, path: str = "/", **params: Any) -> str:
        params.setdefault("round", self.round)
        if params.get("round") == 1:
            params.pop("round")
        query = urlencode({k: v for k, v in params.items() if v is not None and v != ""})
        return f"{self.base}{path}" + (f"?{query}" if query else "")

    def problem(self, problem_id: str, suffix: str = "", **params: Any) -> str:
        return self(f"/problems/{quote(problem_id, safe='')}{suffix}", **params)


def _render(template: str, code: int, **context: Any) -> HTMLResponse:
    html = _templates().get_template(template).render(**context)
    return HTMLResponse(html, status_code=code, headers={"Content-Security-Policy": CSP})


def _page(request: Request, local: str, fmt: str | None, r: int, template: str,
          produce: Callable[[], dict[str, Any]], decorate: Callable[[dict[str, Any], Links], dict[str, Any]] | None = None,
          redact: Callable[[str], str] = str) -> Response:
    """One page: `produce()`'s data as JSON or through `template`, and the run's errors as pages.
    `redact` rewrites what names server paths (the run directory, errors, the adapter)."""
    link = Links(base_url(request, local), r)
    try:
        data = produce()
    except NotFound as e:
        return _error(fmt, link, 404, redact(str(e)))
    except BadRequest as e:
        return _error(fmt, link, 400, redact(str(e)))
    except (StoreError, RemoteRunDirError) as e:  # a damaged or missing file, a store before traces, a URI
        return _error(fmt, link, 409, redact(str(e)))
    data = {k: redact(v) if k in SERVER_PATHS and isinstance(v, str) else v for k, v in data.items()}
    status = 409 if data.get("store_error") else 200
    if fmt == "json":
        return JSONResponse(views.finite(data), status_code=status)
    extra = decorate(data, link) if decorate else {}
    return _render(template, status, d=data, link=link, **extra)


def _error(fmt: str | None, link: Links, status: int, message: str) -> Response:
    if fmt == "json":
        return JSONResponse({"detail": message}, status_code=status)
    return _render("error.html", status, link=link, status=status, message=message)


def _limit(limit: int) -> int:
    return max(1, min(limit, MAX_LIMIT))


def build_inspector_router(resolve: Callable[..., Path], redact: Callable[[str], str] = str) -> APIRouter:
    """The inspector's routes; `resolve` (a FastAPI dependency) gives the run directory, and
    `redact` rewrites server paths in what the pages show (a service hides its own layout)."""
    router = APIRouter()
    Fmt = Query(None, alias="format", description="json for the page's data")
    Round = Query(1, alias="round", ge=1)

    @router.get("/", response_class=HTMLResponse)
    def overview(request: Request, run_dir: Path = Depends(resolve), r: int = Round, fmt: str | None = Fmt):
        def decorate(d: dict[str, Any], link: Links) -> dict[str, Any]:
            funnel = d["funnel"] and views.funnel_bars(d["funnel"], lambda o: link("/problems", outcome=o))
            return {"funnel": funnel, "loss": views.loss_plot(d["loss"])}
        return _page(request, "/", fmt, r, "overview.html", lambda: RunView(run_dir).overview(r), decorate,
                     redact=redact)

    @router.get("/problems", response_class=HTMLResponse)
    def problems(request: Request, run_dir: Path = Depends(resolve), r: int = Round, fmt: str | None = Fmt,
                 outcome: str | None = None, q: str | None = None, offset: int = Query(0, ge=0),
                 limit: int = Query(50, ge=1)):
        return _page(request, "/problems", fmt, r, "problems.html",
                     lambda: RunView(run_dir).problems(r, outcome, q, offset, _limit(limit)), redact=redact)

    @router.get("/problems/{problem_id:path}/kl", response_class=HTMLResponse)
    def problem_kl(request: Request, problem_id: str, run_dir: Path = Depends(resolve), r: int = Round,
                   fmt: str | None = Fmt):
        from services.inspector.kl import per_token_kl

        def decorate(d: dict[str, Any], link: Links) -> dict[str, Any]:
            return {"scale": views.kl_scale(d["tokens"])}
        return _page(request, "/problems/{problem_id}/kl", fmt, r, "kl.html",
                     lambda: per_token_kl(RunView(run_dir), r, problem_id), decorate, redact=redact)

    @router.get("/problems/{problem_id:path}", response_class=HTMLResponse)
    def problem(request: Request, problem_id: str, run_dir: Path = Depends(resolve), r: int = Round,
                fmt: str | None = Fmt):
        return _page(request, "/problems/{problem_id}", fmt, r, "problem.html",
                     lambda: RunView(run_dir).problem(r, problem_id), redact=redact)

    @router.get("/eval/{benchmark}", response_class=HTMLResponse)
    def compare(request: Request, benchmark: str, run_dir: Path = Depends(resolve), fmt: str | None = Fmt,
                a: str | None = None, b: str | None = None, filter: str = "all", offset: int = Query(0, ge=0),
                limit: int = Query(50, ge=1)):
        return _page(request, "/eval/{benchmark}", fmt, 1, "eval.html",
                     lambda: RunView(run_dir).compare(benchmark, a, b, filter, offset, _limit(limit)), redact=redact)

    return router
