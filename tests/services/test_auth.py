"""Auth and secrets of everything `ssb serve` starts: each route of each running app (found
through Serve's route table and the apps themselves, not a list kept here) answers 401
without the token; tokens are long, digests and owner ids salted; clients see no server paths.
The browser's pages (services/ui_routes.py) may instead send a browser to the login form, and
the form itself (and logging out) needs no credential: none of them gives data without one.

Serve's proxy answers `/-/routes` and `/-/healthz` itself, before any app: Ray's, not ours,
and they show only app names and route prefixes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import REPO, tiny_curation_overrides
from tests.services.conftest import TOKEN

BAD_HEADERS = [{}, {"Authorization": "Bearer wrong-token-but-long-enough"}, {"Authorization": "Bearer"},
               {"Authorization": TOKEN},
               {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}]  # a browser without a session
LOGIN_FORM = {("GET", "/ui/login"), ("POST", "/ui/login"), ("POST", "/ui/logout")}  # open, and empty of data


# -- without Ray ---------------------------------------------------------------------------------

def test_ssb_serve_refuses_a_short_token_before_starting_anything(tmp_path):
    env = {**os.environ, "SSB_API_TOKEN": "change-me", "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "serve", "--no-openai", "--port", "1",
                           *tiny_curation_overrides(tmp_path / "run", n=2)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "SSB_API_TOKEN" in proc.stderr and "at least 16" in proc.stderr
    assert not (tmp_path / "run" / "redis").exists()  # refused before Redis (or Ray) started


def test_token_digests_are_salted_per_deployment():
    from services.settings import ServiceSettings, with_tokens

    a, b = (with_tokens(ServiceSettings(), [TOKEN]).api for _ in range(2))
    plain = {hashlib.sha256(TOKEN.encode()).hexdigest()}
    assert a.token_salt != b.token_salt and set(a.token_digests).isdisjoint(b.token_digests)
    assert plain.isdisjoint(a.token_digests) and TOKEN not in a.model_dump_json()


def test_error_text_shows_paths_relative_to_their_root_or_not_at_all(tmp_path):
    from services.api_models import ClientPaths

    paths = ClientPaths(str(tmp_path / "jobs"), [str(tmp_path / "data")])
    text = paths.text(f"FileNotFoundError: '{tmp_path}/jobs/abc/curated/x.parquet' (see /etc/passwd), "
                      f"file://{tmp_path}/data/sub/p.jsonl")
    assert text == "FileNotFoundError: 'abc/curated/x.parquet' (see <path>), sub/p.jsonl"
    assert paths.path(f"{tmp_path}/jobs/abc/curated") == "abc/curated" and paths.path("/etc") is None


# -- the apps `ssb serve` starts, running ------------------------------------------------------------

def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def _schema_path(path: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)  # {model:path} is {model} in OpenAPI


def test_every_route_of_every_running_app_needs_the_token(served):
    from ray import serve

    svc, base = served
    table = httpx.get(f"{base}/-/routes", timeout=10).json()  # {route prefix: app name}
    assert {"/served": "served", "/served-llm": "served-llm"}.items() <= table.items()
    checked: dict[str, int] = {}
    with httpx.Client(timeout=30) as c:
        for prefix, app in table.items():
            root = base + prefix.rstrip("/")
            routes = serve.get_app_handle(app).http_routes.remote().result()
            schema = c.get(f"{root}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
            assert schema.status_code == 200, (app, schema.status_code)
            assert set(schema.json()["paths"]) <= {_schema_path(p) for p, _ in routes}  # nothing served unlisted
            unknown = [["/no-such-route", ["GET", "POST"]], ["/ui/no-such-page", ["GET", "POST"]]]
            curation_api = ["/ui/login", ["GET"]] in routes  # the apps with the browser's pages
            for path, methods in [*routes, *unknown]:
                for method in methods:
                    for headers in BAD_HEADERS:
                        r = c.request(method, root + _concrete(path), headers=headers,
                                      json={} if method in ("POST", "PUT", "PATCH") else None)
                        if (method, path) == ("GET", "/healthz"):  # open, and it says only that it answers
                            assert r.status_code == 200 and r.json() == {"status": "ok"}, (app, r.text)
                            continue
                        if curation_api and (method, path) in LOGIN_FORM:
                            _login_form_only(r, prefix.rstrip("/"), method, path)
                            continue
                        if r.status_code == 303:  # a browser sent to log in, from a page that takes a session
                            assert curation_api and method == "GET" and "Accept" in headers, (app, method, path)
                            assert r.headers["location"].startswith(f"{prefix.rstrip('/')}/ui/login?next="), r.headers
                            assert "set-cookie" not in r.headers and r.json() == {"detail": "log in first"}
                            continue
                        assert r.status_code == 401, (app, method, path, headers, r.status_code, r.text[:200])
                        assert r.headers["www-authenticate"] == "Bearer"
                        assert method == "HEAD" or "bearer token" in r.json()["detail"]
                checked[app] = checked.get(app, 0) + 1
    assert checked["served"] >= 9 and checked["served-llm"] >= 10, checked
    with svc.client() as c:
        assert c.get("/healthz").json() == {"status": "ok", "redis": "ok"}
        models = httpx.get(f"{base}/served-llm/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        assert models.status_code == 200 and models.json()["data"][0]["id"] == svc.settings.llm.model_id


def _login_form_only(r: httpx.Response, root: str, method: str, path: str) -> None:
    """The login form (or logging out) without a credential: no data, and no session."""
    if path == "/ui/logout":  # clears the cookie and goes to the form
        assert r.status_code == 303 and r.headers["location"] == f"{root}/ui/login", r.headers
        assert "Max-Age=0" in r.headers["set-cookie"] and r.headers["set-cookie"].startswith("ssb_session=;")
        return
    assert r.status_code == (200 if method == "GET" else 401), (method, path, r.status_code)
    assert r.headers["content-type"].startswith("text/html") and 'name="token"' in r.text
    assert "set-cookie" not in r.headers and "curation-jobs" not in r.text


def test_owner_ids_in_redis_are_salted_and_clients_see_no_server_paths(served):
    import redis

    from services.auth import owner_id

    svc, _ = served
    jobs_root = str(Path(svc.settings.jobs.jobs_root).resolve())
    with svc.client() as c:
        # the run config's own sampling (not tiny_job's 24 tokens): something is kept to page through
        job = c.post("/v1/curation-jobs", json={"synthetic": {"n": 4, "seed": 3}}).json()
        done = svc.wait(job["id"], timeout=600)
        assert done["status"] == "succeeded" and done["progress"]["kept"] > 0, done
        page = c.get(f"/v1/curation-jobs/{job['id']}/examples").json()
    assert done["result"]["store"] == f"{job['id']}/curated"
    assert done["result"]["manifest"] == f"{job['id']}/curated/manifest.json"
    assert page["examples"], page
    for example in page["examples"]:
        shard = example["logits"]["shard"]
        assert shard.startswith(f"{job['id']}/curated/") and (Path(jobs_root) / shard).is_file()
    assert jobs_root not in json.dumps([job, done, page])
    (Path(jobs_root) / job["id"] / "curated" / "manifest.json").write_text("[]")
    with svc.client() as c:
        damaged = c.get(f"/v1/curation-jobs/{job['id']}/examples")
    assert damaged.status_code == 409 and f"{job['id']}/curated" in damaged.text and jobs_root not in damaged.text

    r = redis.Redis.from_url(svc.redis.url, decode_responses=True)
    owner = r.hget(f"served:job:{job['id']}", "owner")
    salt = bytes.fromhex(r.get("served:owner-salt"))
    plain = {hashlib.sha256(TOKEN.encode()).hexdigest(), hashlib.sha256(b"ssb-owner:" + TOKEN.encode()).hexdigest()}
    assert owner == owner_id(TOKEN, salt) and not any(p.startswith(owner) for p in plain)
    dump = json.dumps({k: r.hgetall(k) if r.type(k) == "hash" else r.type(k) for k in r.scan_iter("served:*")})
    assert TOKEN not in dump and owner in dump
    r.close()
