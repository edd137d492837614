"""One redis-server, one `ssb curate` reference run, one Serve deployment of the curation
service and one of the model endpoint for all service tests: an engine costs ~25 s to start
and a GiB of RAM, so each kind is started once (the reference run's Ray Data engine is gone
before the service starts)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import tiny_curation_overrides

TOKEN = "test-token-5f2a9c1e7d"  # what the tests send; must never show up in Redis or logs
OTHER_TOKEN = "other-token-0b8e44d3a1"
EQUAL_N = 8  # problems curated by both `ssb curate` and the service, compared shard for shard


def service_overrides(run_dir: Path) -> list[str]:
    return tiny_curation_overrides(run_dir, n=EQUAL_N) + [
        "engine.batch_size=4",
        # bf16 on CPU is not batch-invariant: the engine in the service and the one `ssb curate`
        # starts batch differently, and bf16 rounding then flips sampled tokens. float32 does not.
        "model.dtype=float32",
        # The float16 top-k of format 2: which entries a packed store keeps depends on the mass cut,
        # which float32 rounding can move by one entry; the comparison is of the engines' output.
        "curate.store.packed=false",
        # A commit after every batch, and one batch in flight at a time (the engine still curates
        # a batch's problems side by side): the fault tests kill a runner between two commits,
        # which a job whose batches all come back at once would not have.
        "curate.commit_every_s=0", "engine.max_concurrent_batches=1"]


@dataclass
class Service:
    url: str
    settings: Any
    redis: Any
    data_root: Path

    def client(self, token: str | None = TOKEN, timeout: float = 60.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def wait(self, job_id: str, timeout: float = 900.0, token: str = TOKEN,
             until: tuple[str, ...] = ("succeeded", "failed", "cancelled")) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.client(token) as c:
            while True:
                r = c.get(f"/v1/curation-jobs/{job_id}")
                if r.status_code == 200 and r.json()["status"] in until:
                    return r.json()
                assert time.monotonic() < deadline, f"job {job_id} still {r.status_code} {r.text[:300]}"
                time.sleep(0.5)


_FILE_STAGES = {"test_engine_replica_shutdown.py": 1, "test_serve_cmd.py": 3}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The service tests in an order that keeps one engine up at a time: those of the curation
    service's app first, then the one that deletes that app (and checks its engine went with
    it), then those of the `served` apps, then `ssb serve` (a cluster of its own)."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if here in item.path.parents]

    def stage(item: pytest.Item) -> int:
        if item.path.name in _FILE_STAGES:
            return _FILE_STAGES[item.path.name]
        return 2 if "served" in getattr(item, "fixturenames", ()) else 0

    for slot, item in zip(slots, sorted((items[i] for i in slots), key=stage)):
        items[slot] = item


@pytest.fixture
def redis_dir(tmp_path):
    """A redis-server of the test's own (its data in tmp_path), for tests that stop or pause it."""
    from services.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from services.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The allowed data root: the problems both curation paths read."""
    from ssb.synthetic import synthetic_problems

    root = tmp_path_factory.mktemp("data")
    rows = [{"id": p.id, "question": p.question, "answer": p.answer}
            for p in synthetic_problems(EQUAL_N, seed=3, difficulty="add1")]
    (root / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "sub").mkdir()
    (root / "sub" / "small.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    return root


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, model_path, ray_session, data_root):
    """`ssb curate` (the CLI, in this process's Ray) on the problems the service will curate."""
    from cluster.cli import main

    run_dir = tmp_path_factory.mktemp("reference")
    rc = main(["curate", "-q", "--data", str(data_root / "problems.jsonl"), *service_overrides(run_dir)])
    assert rc == 0
    return run_dir


@pytest.fixture(scope="session")
def serve_port(ray_session):
    """One Serve HTTP proxy per session, on a free port; every app of the tests sits behind it."""
    from ray import serve

    from services.redis_server import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


@pytest.fixture(scope="session")
def api_only(tmp_path_factory, serve_port, redis_server, data_root):
    """The API alone (no runner, no engine) under /apionly: fuzzing and load tests hit the HTTP,
    validation and Redis paths without queueing hours of engine work."""
    from ray import serve

    from services.api import build_api_deployment
    from services.settings import ServiceSettings, with_tokens
    from ssb.config import set_dotted

    tree: dict[str, Any] = {}
    for key, value in {"api.port": serve_port, "api.allowed_data_roots": [str(data_root)],
                       "api.max_concurrent_jobs_per_token": 100_000, "api.api_replicas": 1,
                       "api.sync_timeout_s": 1.0,  # no runner here: /v1/curate answers 202 at once
                       "jobs.redis_url": redis_server.url, "jobs.prefix": "apionly",
                       "jobs.jobs_root": str(tmp_path_factory.mktemp("apionly"))}.items():
        set_dotted(tree, key, value)
    settings = with_tokens(ServiceSettings.model_validate(tree), [TOKEN])
    serve.run(build_api_deployment(settings).bind(None), name="ssb-apionly", route_prefix="/apionly")
    yield Service(f"http://127.0.0.1:{serve_port}/apionly", settings, redis_server, data_root)
    serve.delete("ssb-apionly")


@pytest.fixture(scope="session")
def service(tmp_path_factory, model_path, serve_port, redis_server, data_root, reference_run):
    from services.app import deploy
    from services.settings import ServiceSettings, with_tokens
    from ssb.config import load_config, set_dotted

    work = tmp_path_factory.mktemp("service")
    run = load_config(None, service_overrides(work / "defaults"))
    tree: dict[str, Any] = {"run": run.model_dump()}
    for key, value in {
        "api.port": serve_port, "api.allowed_data_roots": [str(data_root)], "api.max_problems_per_job": 50,
        "api.max_request_bytes": 200_000, "api.max_concurrent_jobs_per_token": 200, "api.max_sync_problems": 2,
        "jobs.redis_url": redis_server.url, "jobs.jobs_root": str(work / "jobs"), "jobs.lease_s": 10.0,
        "llm.enabled": False,
    }.items():
        set_dotted(tree, key, value)
    settings = with_tokens(ServiceSettings.model_validate(tree), [TOKEN, OTHER_TOKEN])
    url = deploy(settings)
    svc = Service(url, settings, redis_server, data_root)
    with svc.client() as c:
        deadline = time.monotonic() + 300
        while c.get("/healthz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    yield svc
    stop_service(settings)


SERVED_APPS = ("served", "served-llm")  # the curation app and the model app of `served`


@pytest.fixture(scope="session")
def served(tmp_path_factory, model_path, serve_port, redis_server):
    """`deploy()` (what `ssb serve` runs) with the model endpoint on, LoRA adapters by name and
    the "openai" job backend: the curation app and the model app, one engine between them. The
    auth tests check every route of both; the OpenAI endpoint tests use the model app (and
    delete both when they are done). It deletes the curation service's app first: the tests
    that use it run before (`pytest_collection_modifyitems`), so one engine is up at a time.
    Yields the Service (its URL the curation app's) and the proxy's base URL."""
    import torch
    from peft import LoraConfig, get_peft_model
    from ray import serve
    from transformers import AutoModelForCausalLM

    from services.app import deploy
    from services.settings import ServiceSettings, with_tokens
    from ssb.config import load_config, set_dotted

    if "ssb" in serve.status().applications:  # when the test that deletes it was not selected
        serve.delete("ssb")
    work = tmp_path_factory.mktemp("served")
    lora_root = work / "adapters"
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                    init_lora_weights=False)).save_pretrained(lora_root / "tiny")
    del base
    run = load_config(None, tiny_curation_overrides(work / "defaults", n=2) + [
        "engine.max_lora_rank=8", "engine.max_num_seqs=16",
        "engine.worker_niceness=3"])  # neither Ray's 15 nor a global 0
    tree: dict[str, Any] = {"run": run.model_dump()}
    api_app, llm_app = SERVED_APPS
    for key, value in {"api.app_name": api_app, "api.route_prefix": f"/{api_app}", "api.port": serve_port,
                       "llm.app_name": llm_app, "llm.route_prefix": f"/{llm_app}", "llm.enabled": True,
                       "llm.lora_root": str(lora_root), "llm.min_replicas": 1, "llm.max_replicas": 2,
                       "llm.target_ongoing_requests": 16,
                       "jobs.backend": "openai", "jobs.redis_url": redis_server.url, "jobs.prefix": api_app,
                       "jobs.jobs_root": str(work / "jobs")}.items():
        set_dotted(tree, key, value)
    settings = with_tokens(ServiceSettings.model_validate(tree), [TOKEN])
    url = deploy(settings)
    svc = Service(f"{url}/{api_app}", settings, redis_server, work)
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        deadline = time.monotonic() + 300
        while c.get(f"{url}/{llm_app}/v1/models").status_code != 200:
            assert time.monotonic() < deadline, "the model app did not come up"
            time.sleep(1)
    yield svc, url
    stop_served()


def stop_served() -> None:
    from ray import serve

    running = serve.status().applications
    for app in SERVED_APPS:
        if app in running:
            serve.delete(app)


def stop_service(settings: Any) -> None:
    """Deletes the curation app (and its engine): the OpenAI endpoint test needs the memory."""
    from ray import serve

    if settings.api.app_name in serve.status().applications:
        serve.delete(settings.api.app_name)


def process_titles() -> dict[int, str]:
    """Each live process's title (Ray names its workers `ray::<actor or task>`)."""
    titles = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                titles[int(proc.name)] = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
    return titles


def tiny_job(**extra: Any) -> dict[str, Any]:
    """A job that costs seconds: two inline problems, two short rollouts each."""
    body: dict[str, Any] = {
        "problems": [{"id": "t-1", "question": "Tom has 2 apples. He buys 3 more apples. How many apples "
                                                "does Tom have now?", "answer": "5"},
                     {"id": "t-2", "question": "There are 4 cards on the table. Anna takes 1 of them away. "
                                                "How many cards are still on the table?", "answer": "3"}],
        "rollout": {"n": 2, "max_tokens": 24}, "teacher": {"n": 1, "max_tokens": 24},
    }
    body.update(extra)
    return body
