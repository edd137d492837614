"""`ssb serve`: the curation API, job runner, curation engine and OpenAI endpoint, locally.

    SSB_API_TOKEN=$(openssl rand -hex 24) ssb serve --config configs/default.yaml --port 8000 --data-root ../shared/data
    ssb serve --redis-url redis://127.0.0.1:6379/0 serve.jobs.backend=openai serve.llm.max_replicas=2

Without `--redis-url` a `redis-server` is started on a free loopback port with its
append-only file in `<run-dir>/redis/` (restart `ssb serve` on the same run dir and every
job is still there), and supervised: killed or crashed, it is restarted on the same port and
directory, each restart logged in `<run-dir>/redis/supervisor.log` (services/redis_server.py).
With `--redis-url` nothing is started, and that Redis's availability is its operator's.
Overrides starting with `serve.` set the service settings (services/settings.py); all others
set the run config jobs start from.

SIGTERM or SIGINT (a second one cuts the graceful part short) stops everything it started:
Serve first, so each replica's `__del__` stops its vLLM engine, then Ray, then Redis; and
last, any process it ever saw among its descendants that is still running. What Ray prints
while it shuts down goes to `<run-dir>/logs/driver.log`, not the console. Ray cleans up a
replica's engine processes only while its raylet lives (a force-killed worker kills its
children, the raylet the worker's process group); a raylet that goes first, e.g. on a
SIGTERM sent to the whole process group, which reaches Ray's own processes too, leaves them
running, reparented to init. So descendants are recorded while their ancestors are alive.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ssb.layout import RunLayout

# How often the set of descendant processes is refreshed, from start-up on: replicas and their
# engines come and go with autoscaling, and one started since the last look is only caught by
# the last-resort sweep if its parents are still alive when the stop begins.
_RECORD_EVERY_S = 2.0
# Ray's workers notice their raylet is gone and exit on their own, a moment after
# ray.shutdown() returns: they are given this long before they count as left over.
_SETTLE_S = 3.0
# How long a process left over after Ray's and Redis's own shutdown gets after SIGTERM
# before SIGKILL (vLLM gives its engine core 5 s for the same).
_TERMINATE_GRACE_S = 10.0


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

    # Installed before Redis starts: from here on a stop signal unwinds through `finally`.
    _on_stop_signals(_raise_stop)
    started = Descendants()
    started.watch(_RECORD_EVERY_S)
    redis = None
    try:
        redis = own_redis(args.redis_url, run_dir)
        if redis is not None:
            settings = settings.model_copy(update={"jobs": settings.jobs.model_copy(update={"redis_url": redis.url})})
            print(f"redis: {redis.url} (append-only file in {redis.dir}; restarted if it dies, "
                  f"see {redis.supervisor_log.name} there)")
        init_ray(cfg.ray)
        _on_stop_signals(_raise_stop)  # ray.init installs its own SIGTERM handler (sys.exit(15))
        url = deploy(settings)
        print(f"curation API: {url}/v1/curation-jobs   docs: {url}/docs   "
              f"health: {url}/livez (liveness), {url}/readyz (readiness)")
        if settings.llm.enabled:
            print(f"OpenAI endpoint: {url}{settings.llm.route_prefix}/v1/completions (model {settings.llm.model_id!r}, "
                  "same bearer tokens)")
        while True:
            time.sleep(3600)
    except _Stop:
        pass
    finally:
        try:
            started.stop_watching()
            started.record()
            _stop_ray(started, RunLayout(str(run_dir)).driver_log)
        except _Stop:
            print("ssb serve: stopping without waiting for Serve and Ray", file=sys.stderr)
        finally:
            _on_stop_signals(_ignore)  # the rest is quick and must not be cut short
            if redis is not None:
                redis.stop()
            left = terminate(started.running(settle_s=_SETTLE_S))
            if left:
                print(f"ssb serve: stopped {len(left)} process(es) left running: {', '.join(left)}", file=sys.stderr)
    return 0


def own_redis(redis_url: str | None, run_dir: Path) -> Any:
    """The supervised redis-server `ssb serve` runs itself, in `<run-dir>/redis/`; None (and
    nothing started) when it was given a Redis URL."""
    if redis_url is not None:
        return None
    from services.redis_server import RedisServer

    return RedisServer(RunLayout(str(run_dir)).redis).start()


class _Stop(BaseException):
    """SIGTERM or SIGINT, raised in the main thread wherever it waits (a BaseException, so no
    library's `except Exception` swallows it)."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signum)


def _ignore(signum: int, frame: Any) -> None:
    pass


def _on_stop_signals(handler: Callable[[int, Any], None]) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def _running(p: Any) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Descendants:
    """Every process seen below `pid` (this one by default) so far, with its name (a dead one
    can no longer say). psutil Processes compare by pid and start time: a reused pid is never
    taken for one of them."""

    def __init__(self, pid: int | None = None) -> None:
        import psutil

        self._root = psutil.Process(pid)
        self.seen: dict[Any, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def record(self) -> None:
        import psutil

        with self._lock, contextlib.suppress(psutil.Error):
            for p in self._root.children(recursive=True):
                if p not in self.seen:
                    with contextlib.suppress(psutil.Error):
                        self.seen[p] = p.name()

    def watch(self, every_s: float) -> None:
        """Records now and then every `every_s`, in a thread of its own, until `stop_watching`."""
        def loop() -> None:
            while True:
                self.record()
                if self._stop.wait(every_s):
                    return

        threading.Thread(target=loop, name="ssb-serve-descendants", daemon=True).start()

    def stop_watching(self) -> None:
        self._stop.set()

    def running(self, settle_s: float = 0.0) -> list[Any]:
        """Those still running, after up to `settle_s` for them to exit by themselves."""
        with self._lock:
            seen = list(self.seen)
        return _wait_gone(seen, settle_s)

    def head_alive(self) -> bool:
        """False when this process started a local Ray whose GCS or raylet is gone: Serve's
        shutdown would then only wait on a cluster that can no longer answer."""
        with self._lock:
            head = [p for p, name in self.seen.items() if name in ("gcs_server", "raylet")]
        return all(_running(p) for p in head)


def _stop_ray(started: Descendants, log: Path) -> None:
    """Serve first: deleting its apps runs each replica's `__del__`, which stops its engine;
    Ray's own shutdown would kill the replicas' workers without it."""
    import ray

    if not ray.is_initialized():
        return
    with _ray_messages_to(log):
        try:
            if started.head_alive():
                from ray import serve

                try:
                    serve.shutdown()
                except Exception as exc:  # Ray's shutdown and the sweep below still run
                    print(f"ssb serve: Serve did not shut down cleanly: {exc!r}", file=sys.stderr)
        finally:
            ray.shutdown()


@contextlib.contextmanager
def _ray_messages_to(path: Path) -> Any:
    """The errors the raylet publishes to the driver go to `path` for this block. Serve's
    controller ends by killing itself, so the driver's calls still waiting on it (its
    graceful_shutdown, its handles' long polls) fail as "killed by ray.kill", and Ray's thread
    for such errors prints them on sys.stdout, even with log_to_driver off: an expected end,
    which on the console reads as a crash. ray.shutdown() joins that thread before it returns."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = path.open("a")
    except OSError:  # a run directory gone read-only must not stop the shutdown
        yield
        return
    with f, contextlib.redirect_stdout(f):
        yield


def terminate(procs: list[Any], grace_s: float = _TERMINATE_GRACE_S) -> list[str]:
    """SIGTERM, then SIGKILL to whatever is still running after `grace_s`; returns what was
    signalled, as "pid name"."""
    import psutil

    names = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            name = p.name()
            p.terminate()
            names.append(f"{p.pid} {name}")
    for p in _wait_gone(procs, grace_s):
        with contextlib.suppress(psutil.Error):
            p.kill()
    _wait_gone(procs, 2.0)  # SIGKILL is not instant either: gone means gone when this returns
    return names


def _wait_gone(procs: list[Any], timeout_s: float) -> list[Any]:
    """Those of `procs` still running after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in procs if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
