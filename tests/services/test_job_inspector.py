"""The inspector's pages for a curation job in `ssb serve`, over real HTTP, Serve, Redis and an
engine: behind the API's token (a login cookie for browsers), another token's job does not
exist, and clients see no server path."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from services.ui_auth import COOKIE
from tests.services.conftest import OTHER_TOKEN, TOKEN, tiny_job

pytestmark = pytest.mark.slow

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def _session(service, token: str) -> httpx.Client:
    """A browser-like client (no bearer header) holding the session cookie of `token`."""
    with httpx.Client(base_url=service.url, timeout=60, follow_redirects=False) as login:
        r = login.post("/ui/login", data={"token": token, "next": "/ui/jobs"})
    assert r.status_code == 303, r.text
    cookie = re.match(rf"{COOKIE}=([^;]+)", r.headers["set-cookie"]).group(1)
    return httpx.Client(base_url=service.url, timeout=60, follow_redirects=False,
                        headers={"Cookie": f"{COOKIE}={cookie}"})


@pytest.fixture(scope="module")
def finished_job(service) -> str:
    with service.client() as c:
        r = c.post("/v1/curation-jobs", json=tiny_job())
        assert r.status_code == 202, r.text
    done = service.wait(r.json()["id"])
    assert done["status"] == "succeeded", done
    return done["id"]


def test_a_jobs_problems_and_their_paths_open_with_the_login_cookie(service, finished_job):
    base = f"/ui/jobs/{finished_job}"
    with _session(service, TOKEN) as c:
        listed = c.get("/ui/jobs", params={"format": "json"}).json()
        assert finished_job in {item["id"] for item in listed["items"]}
        page = c.get(f"{base}/problems", params={"format": "json"})
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["total"] == 2 and {"problem_id", "outcome"} <= set(body["items"][0])
        problem = c.get(f"{base}/problems/{body['items'][0]['problem_id']}", params={"format": "json"}).json()
        assert problem["outcome"] == body["items"][0]["outcome"] and problem["rollouts"]
        assert all({"answer", "verdict"} <= set(r) for r in problem["rollouts"])
        overview = c.get(f"{base}/", headers=BROWSER)
        assert overview.status_code == 200 and "<svg" in overview.text
        # The job's run directory as the job API shows it: relative to the jobs root.
        jobs_root = str(Path(service.settings.jobs.jobs_root).resolve())
        assert jobs_root not in overview.text and jobs_root not in page.text
        assert c.get(f"{base}/", params={"format": "json"}).json()["run_dir"] == finished_job
        # A benchmark page answers what the job has: no evaluation.
        assert c.get(f"{base}/eval/svamp", params={"format": "json"}).status_code == 404


def test_a_jobs_pages_without_a_credential_or_of_another_token_show_nothing(service, finished_job):
    base = f"/ui/jobs/{finished_job}"
    with httpx.Client(base_url=service.url, timeout=60, follow_redirects=False) as c:
        r = c.get(f"{base}/problems", params={"format": "json"})
        assert r.status_code == 401 and "problem" not in r.text
        r = c.get(f"{base}/problems", headers=BROWSER)
        assert r.status_code == 303 and "/ui/login?next=" in r.headers["location"]
    with _session(service, OTHER_TOKEN) as other:
        for path in (f"{base}/", f"{base}/problems"):
            r = other.get(path, params={"format": "json"})
            assert r.status_code == 404 and r.json() == {"detail": f"no job {finished_job!r}"}
    with service.client() as c:  # a script's bearer token opens the same pages
        assert c.get(f"{base}/problems", params={"format": "json"}).json()["total"] == 2
