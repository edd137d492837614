"""`ssb serve`: the curation API, job runner, curation engine and OpenAI endpoint, locally.

    SSB_API_TOKEN=$(openssl rand -hex 24) ssb serve --config configs/default.yaml --port 8000 --data-root ../shared/data
    ssb serve --redis-url redis://127.0.0.1:6379/0 serve.jobs.backend=openai serve.llm.max_replicas=2

Without `--redis-url` a `redis-server` is started on a free loopback port with its
append-only file in `<run-dir>/redis/` (restart `ssb serve` on the same run dir and every
job is still there). Overrides starting with `serve.` set the service settings
(services/settings.py); all others set the run config jobs start from.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="HTTP host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default 8000)")
    p.add_argument("--redis-url", dest="redis_url", help="use this Redis instead of starting a local one")
    p.add_argument("--token-env", dest="token_env", default="SSB_API_TOKEN",
                   help="environment variable holding the bearer token(s), comma-separated, "
                        "each at least 16 characters")
    p.add_argument("--data-root", dest="data_roots", action="append", default=[],
                   help="a directory dataset references may point into (repeatable)")
    p.add_argument("--backend", choices=["engine", "openai"], help="how the runner reaches the model")
    p.add_argument("--no-openai", dest="no_openai", action="store_true", help="do not serve the OpenAI endpoint")


def run(args: argparse.Namespace) -> int:
    from pipelines.ray_setup import init_ray
    from services.app import deploy, require_tokens, service_settings
    from services.redis_server import RedisServer

    serve_overrides = [o[len("serve."):] for o in args.overrides if o.startswith("serve.")]
    args.overrides = [o for o in args.overrides if not o.startswith("serve.")]
    from cluster.args import config_from_args

    cfg = config_from_args(args)
    run_dir = Path(cfg.output_dir).resolve()
    extra: dict = {"jobs.jobs_root": str(run_dir / "jobs")}
    if any(o.startswith("jobs.jobs_root=") for o in serve_overrides):
        extra = {}
    for flag, key in (("host", "api.host"), ("port", "api.port"), ("redis_url", "jobs.redis_url"),
                      ("backend", "jobs.backend")):
        if getattr(args, flag) is not None:
            extra[key] = getattr(args, flag)
    if args.data_roots:
        extra["api.allowed_data_roots"] = [str(Path(d).resolve()) for d in args.data_roots]
    if args.no_openai:
        extra["llm.enabled"] = False
    settings = service_settings(cfg, serve_overrides, extra, token_env=args.token_env)
    require_tokens(settings, args.token_env)

    redis = None
    if args.redis_url is None:
        redis = RedisServer(run_dir / "redis").start()
        settings = settings.model_copy(update={"jobs": settings.jobs.model_copy(update={"redis_url": redis.url})})
        print(f"redis: {redis.url} (append-only file in {redis.dir})")
    try:
        init_ray(cfg.ray)
        url = deploy(settings)
        print(f"curation API: {url}/v1/curation-jobs   docs: {url}/docs   health: {url}/healthz")
        if settings.llm.enabled:
            print(f"OpenAI endpoint: {url}{settings.llm.route_prefix}/v1/completions (model {settings.llm.model_id!r}, "
                  "same bearer tokens)")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    finally:
        from ray import serve

        serve.shutdown()
        if redis is not None:
            redis.stop()
    return 0
