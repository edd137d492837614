"""Load on the curation API: N concurrent job submissions, then status polls of every job.

Counts a job as lost when its submission did not answer 202, or any later poll did not
return it (404, another id, an error). The jobs are cancelled at the end, so a real runner
is not left with them. p50/p99 are status-poll latencies; throughput counts every request.
Ends with:

    RESULT api_load p50_ms=… p99_ms=… throughput_rps=… lost=…

Full size, against a running server or a local one (`--local`: redis-server + Ray Serve with
the API deployment only, no runner and no engine: the API's own cost):

    SSB_API_TOKEN=... python bench/api_load.py --url http://127.0.0.1:8000 --n 100 --polls 5
    python bench/api_load.py --local --n 100

Smoke (tests/test_bench_smoke.py): `--smoke` is `--local` with 4 submissions, 2 polls each,
4 connections: the same redis-server, Serve app, submissions, polls and cancellations.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def load(url: str, token: str, n: int, polls: int, concurrency: int) -> dict[str, float]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    requests = 0
    tag = f"bench-{int(time.time())}"
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as c:
        start = time.perf_counter()

        async def submit(i: int) -> str | None:
            nonlocal requests
            try:
                r = await c.post("/v1/curation-jobs", json={"synthetic": {"n": 1, "seed": i}},
                                 headers={"Idempotency-Key": f"{tag}-{i}"})
            except httpx.HTTPError:
                return None
            finally:
                requests += 1
            return r.json()["id"] if r.status_code == 202 else None

        ids = await asyncio.gather(*(submit(i) for i in range(n)))

        async def poll(job_id: str) -> bool:
            nonlocal requests
            ok = True
            for _ in range(polls):
                t0 = time.perf_counter()
                try:
                    r = await c.get(f"/v1/curation-jobs/{job_id}")
                    ok = ok and r.status_code == 200 and r.json()["id"] == job_id
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                requests += 1
            return ok

        found = await asyncio.gather(*(poll(job_id) for job_id in ids if job_id))
        wall = time.perf_counter() - start
        await asyncio.gather(*(c.delete(f"/v1/curation-jobs/{job_id}") for job_id in ids if job_id))
    latencies.sort()
    lost = sum(1 for job_id in ids if job_id is None) + sum(1 for ok in found if not ok)
    return {"p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
            "throughput_rps": requests / wall, "lost": lost}


def start_local(token: str) -> tuple[str, object]:
    """redis-server + local Ray + the API deployment (no runner, no engine): the API's own cost."""
    import ray
    from ray import serve

    from services.api import build_api_deployment
    from services.redis_server import RedisServer, free_port
    from services.settings import ServiceSettings, with_tokens
    from ssb.layout import RunLayout

    work = RunLayout(tempfile.mkdtemp(prefix="ssb-api-load-"))
    redis = RedisServer(work.redis).start()
    # "local": its own Ray even while another benchmark's `ray start`-style cluster is recorded here
    ray.init(address="local", num_cpus=8, object_store_memory=300_000_000, include_dashboard=False,
             log_to_driver=False)
    port = free_port()
    settings = ServiceSettings.model_validate({
        "api": {"port": port, "max_concurrent_jobs_per_token": 1_000_000},
        "jobs": {"redis_url": redis.url, "jobs_root": str(work.jobs)}})
    settings = with_tokens(settings, [token])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_api_deployment(settings).bind(None), name="ssb", route_prefix="/")
    return f"http://127.0.0.1:{port}", redis


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--token-env", default="SSB_API_TOKEN")
    p.add_argument("--n", type=int, default=None, help="concurrent job submissions (default 100; 4 with --smoke)")
    p.add_argument("--polls", type=int, default=None, help="status polls per job (default 5; 2 with --smoke)")
    p.add_argument("--concurrency", type=int, default=None, help="open connections (default 100; 4 with --smoke)")
    p.add_argument("--local", action="store_true", help="start redis + Serve (API only) here")
    p.add_argument("--smoke", action="store_true", help="the test suite's tiny run: --local at tiny size")
    args = p.parse_args()
    args.local = args.local or args.smoke
    args.n = args.n or (4 if args.smoke else 100)
    args.polls = args.polls or (2 if args.smoke else 5)
    args.concurrency = args.concurrency or (4 if args.smoke else 100)
    token = os.environ.get(args.token_env, "")
    redis = None
    if args.local:
        token = token or secrets.token_hex(24)  # the API wants tokens of 16 characters or more
        args.url, redis = start_local(token)
    if not token:
        print(f"set {args.token_env}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(load(args.url, token, args.n, args.polls, args.concurrency))
    finally:
        if redis is not None:
            from ray import serve

            serve.shutdown()
            redis.stop()
    print(f"{args.n} submissions, {args.n * args.polls} polls against {args.url}")
    print(f"RESULT api_load p50_ms={result['p50_ms']:.1f} p99_ms={result['p99_ms']:.1f} "
          f"throughput_rps={result['throughput_rps']:.1f} lost={result['lost']}")
    return 0 if result["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
