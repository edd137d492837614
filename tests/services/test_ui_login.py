"""The browser's way in, over real HTTP against the API under Serve (route prefix /apionly) and
a real Redis: the login form, the session cookie it sets, what that cookie opens (/docs, its
assets, /openapi.json, /ui/) and what it does not (the job API stays bearer-only)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from services.ui_auth import COOKIE, make_session, session_key
from tests.services.conftest import OTHER_TOKEN, TOKEN

pytestmark = pytest.mark.slow

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
ROOT = "/apionly"


def _client(svc, cookie: str | None = None, **headers: str) -> httpx.Client:
    """No bearer header; the session only when given, and cookies set by answers not kept."""
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    return httpx.Client(base_url=svc.url, headers=headers, timeout=60, follow_redirects=False)


def _login(svc, token: str = TOKEN, next_path: str | None = None, **headers: str) -> httpx.Response:
    form = {"token": token, **({"next": next_path} if next_path is not None else {})}
    with _client(svc, **headers) as c:
        return c.post("/ui/login", data=form)


def _session(svc) -> str:
    r = _login(svc)
    assert r.status_code == 303, r.text
    return re.match(rf"{COOKIE}=([^;]+)", r.headers["set-cookie"]).group(1)


def _server_key(svc) -> bytes:
    """The signing key the replicas derive (the deployment salt in Redis, the token set)."""
    import redis

    r = redis.Redis.from_url(svc.redis.url, decode_responses=True)
    try:
        salt = bytes.fromhex(r.get(f"{svc.settings.jobs.prefix}:owner-salt"))
    finally:
        r.close()
    return session_key(salt, svc.settings.api.token_salt, svc.settings.api.token_digests)


def _owner(svc, token: str) -> str:
    import redis

    from services.auth import owner_id

    r = redis.Redis.from_url(svc.redis.url, decode_responses=True)
    try:
        return owner_id(token, bytes.fromhex(r.get(f"{svc.settings.jobs.prefix}:owner-salt")))
    finally:
        r.close()


def _no_other_hosts(html: str) -> None:
    assert not re.search(r"https?://", html), re.findall(r"https?://[^\s\"'<>]+", html)


def test_the_login_form_renders_without_a_credential(api_only):
    with _client(api_only, **BROWSER) as c:
        r = c.get("/ui/login", params={"next": "/docs"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert re.search(r'<input[^>]+name="token"[^>]+type="password"', r.text)
    assert f'action="{ROOT}/ui/login"' in r.text and 'name="next" value="/docs"' in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"] and "set-cookie" not in r.headers
    _no_other_hosts(r.text)


def test_a_wrong_token_is_401_with_the_form_again_and_no_cookie(api_only):
    for token in ("wrong-token-but-long-enough", "", TOKEN[:-1], OTHER_TOKEN):  # OTHER_TOKEN: not this app's
        r = _login(api_only, token, "/docs")
        assert r.status_code == 401 and "set-cookie" not in r.headers, (token, r.status_code)
        assert "not valid" in r.text and 'name="next" value="/docs"' in r.text
        assert token not in r.text or not token
    with _client(api_only) as c:  # a script posting JSON: a login without a token
        r = c.post("/ui/login", json={"token": TOKEN})
        assert r.status_code == 401 and "set-cookie" not in r.headers
        r = c.post("/ui/login", data={"token": TOKEN, **{f"f{i}": "x" for i in range(20)}})  # not our form
        assert r.status_code == 401 and "set-cookie" not in r.headers


def test_the_right_token_sets_a_signed_session_cookie_and_redirects(api_only):
    r = _login(api_only, next_path="/docs")
    assert r.status_code == 303 and r.headers["location"] == f"{ROOT}/docs"
    cookie = r.headers["set-cookie"]
    attrs = [a.strip() for a in cookie.split(";")]
    assert {"HttpOnly", "SameSite=Strict", f"Path={ROOT}", "Max-Age=43200"} <= set(attrs), cookie
    assert "Secure" not in attrs  # plain http here; behind TLS it is set (below)
    assert TOKEN not in cookie
    value = attrs[0].split("=", 1)[1]
    owner, expiry, _ = value.split(".")
    assert owner == _owner(api_only, TOKEN) and 0 < int(expiry) - time.time() <= 43200
    assert _login(api_only).headers["location"] == f"{ROOT}/ui/jobs"  # the default place to go
    secure = _login(api_only, **{"X-Forwarded-Proto": "https"}).headers["set-cookie"]
    assert secure.split("; ")[-1] == "Secure"


def test_next_only_goes_to_paths_of_this_app(api_only):
    for evil in ("//evil.com", "//evil.com/ui/jobs", "https://evil.com/", "/\\evil.com", "evil.com"):
        r = _login(api_only, next_path=evil)
        assert r.status_code == 303 and r.headers["location"] == f"{ROOT}/ui/jobs", (evil, r.headers["location"])
        with _client(api_only, **BROWSER) as c:
            form = c.get("/ui/login", params={"next": evil}).text
        assert 'name="next" value="/ui/jobs"' in form and "evil" not in form
    with _client(api_only, **BROWSER) as c:  # what it echoes is escaped
        form = c.get("/ui/login", params={"next": '/"><script>alert(1)</script>'}).text
    assert "<script>alert" not in form and "&lt;script&gt;" in form


def test_the_session_opens_docs_its_local_assets_and_the_schema(api_only):
    from swagger_ui_bundle import swagger_ui_path

    # Swagger UI 4 (swagger-ui-bundle 1.x, the same module) shows no operation of an OpenAPI 3.1 schema.
    assert Path(str(swagger_ui_path)).name.startswith("swagger-ui-5."), swagger_ui_path
    session = _session(api_only)
    with _client(api_only, session, **BROWSER) as c:
        docs = c.get("/docs")
        assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html"), docs.text[:300]
        _no_other_hosts(docs.text)  # no CDN: an offline head node shows it too
        urls = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
        assert sorted(urls) == sorted(f"{ROOT}/docs/assets/{n}" for n in
                                      ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")), urls
        assert f"url: '{ROOT}/openapi.json'" in docs.text and '"validatorUrl": null' in docs.text
        assert "script-src 'self' 'unsafe-inline'" in docs.headers["content-security-policy"]
        js, css = c.get("/docs/assets/swagger-ui-bundle.js"), c.get("/docs/assets/swagger-ui.css")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"] and "SwaggerUIBundle" in js.text
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert ".swagger-ui" in css.text
        for name in ("index.html", "swagger-ui.js.map", "..%2F..%2F__init__.py", "oauth2-redirect.html"):
            assert c.get(f"/docs/assets/{name}").status_code == 404, name  # only the allow-list
        schema = c.get("/openapi.json", headers={"Accept": "application/json"})
        assert schema.status_code == 200 and "/v1/curation-jobs" in schema.json()["paths"]
        assert not any(p.startswith(("/ui", "/docs")) for p in schema.json()["paths"])


def test_scripts_with_the_bearer_token_still_reach_the_same_pages(api_only):
    with api_only.client() as c:
        assert c.get("/docs").status_code == 200
        assert c.get("/docs/assets/swagger-ui.css").status_code == 200
        assert c.get("/openapi.json").status_code == 200
        jobs = c.get("/ui/jobs", params={"format": "json"})
        assert jobs.status_code == 200 and {"total", "items"} <= set(jobs.json())
        assert c.get("/ui/login").status_code == 200


def test_the_job_api_takes_no_cookie(api_only):
    session = _session(api_only)
    with _client(api_only, session, **BROWSER) as c:
        for method, path in [("GET", "/v1/curation-jobs/abc"), ("POST", "/v1/curation-jobs"),
                             ("GET", "/v1/curation-jobs/abc/examples"), ("DELETE", "/v1/curation-jobs/abc"),
                             ("POST", "/v1/curation-jobs/abc/resume"), ("POST", "/v1/curate"), ("GET", "/metrics"),
                             ("GET", "/no-such-route")]:
            r = c.request(method, path, json={"synthetic": {"n": 1}} if method == "POST" else None)
            assert r.status_code == 401 and "bearer token" in r.json()["detail"], (method, path, r.status_code)
        assert c.get("/healthz").json() == {"status": "ok"}  # the cookie is no token: Redis's state stays hidden


def test_the_job_list_shows_only_the_callers_jobs_newest_first(api_only):
    from services.jobs import JobStore

    with api_only.client() as c:
        mine = []
        for _ in range(2):
            mine.append(c.post("/v1/curation-jobs", json={"synthetic": {"n": 1}}).json()["id"])
            time.sleep(0.01)  # created_at has milliseconds: two jobs, two instants
    # api_only knows one token: the other owner's job goes straight into its Redis, as the API would put it.
    store = JobStore.from_config(api_only.settings.jobs)
    theirs, _ = store.create(_owner(api_only, OTHER_TOKEN), {"source": {"kind": "synthetic", "n": 1}}, problems=1,
                             jobs_root=api_only.settings.jobs.jobs_root, idempotency_key=None, max_active=10)
    session = _session(api_only)
    with _client(api_only, session, Accept="application/json") as c:
        listed = c.get("/ui/jobs", params={"format": "json", "limit": 500}).json()
    ids = [item["id"] for item in listed["items"]]
    assert ids[:2] == mine[::-1] and theirs.id not in ids, ids[:5]
    assert listed["total"] >= 2 and set(listed["items"][0]) == {"id", "status", "problems", "kept", "created_at",
                                                                "updated_at"}
    assert listed["items"][0]["status"] == "queued" and listed["items"][0]["problems"] == 1  # no runner here
    created = [item["created_at"] for item in listed["items"]]
    assert created == sorted(created, reverse=True)
    mine_owner = _owner(api_only, TOKEN)
    assert all(store.get(i).owner == mine_owner for i in ids)
    with _client(api_only, session, **BROWSER) as c:
        page = c.get("/ui/jobs", params={"limit": 2})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for job_id in mine:
        assert f'href="{ROOT}/ui/jobs/{job_id}/"' in page.text
    assert theirs.id not in page.text
    assert ("older" in page.text) == (listed["total"] > 2) and "newer" not in page.text
    _no_other_hosts(page.text)
    # The other owner, logged in by a session the server's key signed, sees its own job only.
    other = make_session(_owner(api_only, OTHER_TOKEN), _server_key(api_only), time.time())
    with _client(api_only, other) as c:
        assert [i["id"] for i in c.get("/ui/jobs", params={"format": "json"}).json()["items"]] == [theirs.id]
    store.cancel(theirs.id)


def test_a_tampered_expired_or_missing_session_goes_to_the_login_form_or_401(api_only):
    session = _session(api_only)
    owner, expiry, signature = session.split(".")
    key = _server_key(api_only)
    assert make_session(owner, key, int(expiry) - 43200) == session  # the key is the one derived above
    bad = {"missing": None, "tampered": f"{owner}.{int(expiry) + 3600}.{signature}",
           "other owner": f"{'0' * 32}.{expiry}.{signature}", "garbage": "x",
           "expired": make_session(owner, key, time.time() - 13 * 3600)}
    for why, value in bad.items():
        with _client(api_only, value, **BROWSER) as c:
            r = c.get("/ui/jobs", params={"offset": 0})
            assert r.status_code == 303, (why, r.status_code)
            assert r.headers["location"] == f"{ROOT}/ui/login?next=/ui/jobs%3Foffset%3D0", r.headers["location"]
            assert c.get("/docs").headers.get("location") == f"{ROOT}/ui/login?next=/docs", why
            for path in ("/ui/jobs?format=json", "/openapi.json", "/docs/assets/swagger-ui.css",
                         "/ui/no-such-page", "/ui/jobs/abc/"):
                r = c.get(path, headers={"Accept": "application/json"})
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (why, path, r.status_code)
                assert set(r.json()) == {"detail"} and "log in" in r.json()["detail"]
            r = c.post("/ui/no-such-page", data={"x": "1"})
            assert r.status_code == 401 and set(r.json()) == {"detail"}, (why, r.status_code)
    with _client(api_only, session) as c:
        assert c.get("/ui/no-such-page").status_code == 404  # with a session, a missing page is just missing
        # a wrong bearer header is answered as such, whatever the cookie says
        r = c.get("/ui/jobs", params={"format": "json"}, headers={"Authorization": "Bearer wrong-token-long-enough"})
        assert r.status_code == 401 and r.json()["detail"] == "invalid bearer token"


def test_logout_clears_the_cookie(api_only):
    with _client(api_only, _session(api_only)) as c:
        r = c.post("/ui/logout")
    assert r.status_code == 303 and r.headers["location"] == f"{ROOT}/ui/login"
    attrs = [a.strip() for a in r.headers["set-cookie"].split(";")]
    assert attrs[0] == f"{COOKIE}=" and "Max-Age=0" in attrs and f"Path={ROOT}" in attrs
