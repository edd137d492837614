"""Liveness and readiness of the curation service, Kubernetes style, without a token.

    GET /livez    200 {"status": "ok"}: the API's process answers HTTP (a liveness probe)
    GET /readyz   200 {"status": "ok", "checks": {...}} when the service can take and run jobs,
                  503 {"status": "unavailable", "checks": {...}} naming what cannot, e.g.
                  {"redis": "ok", "runner": "no heartbeat for 31 s", "engine": "not checked: ..."}

(/healthz, the API's older route, is liveness too: services/api.py.)

What readiness checks depends on what was deployed with this API:
- the job store, always: a Redis PING with a 1 s time-out;
- when the API was deployed with a runner (services/app.py's curation app; `ssb serve`; the
  RayService): the runner, by its heartbeat, and the engine its jobs need, as that runner last
  saw it. An API deployed alone (`build_api_deployment(...).bind(None)`) checks only the job
  store: its jobs are run, if at all, by another deployment's runners, which it does not know.

Runners write the heartbeat, so a probe costs the API two Redis round trips and never a call
into Serve. Every few seconds each runner replica stores, in one script, Redis's own clock
time under its name and what it found of the engine: the deployment's state in Serve's
controller (`serve.status()`, 20-30 ms), the engine app of its backend, "ok" with a running
replica. Not a call to the engine itself: a replica busy with `max_ongoing_requests` batches
queues any other request, so a trivial method would time out during ordinary work. Keys:

    {p}:runners               sorted set: runner name -> time of its last heartbeat (Redis's clock)
    {p}:runner-engine         hash: runner name -> the engine's state as that runner saw it

A runner silent for 15 s (five beats missed) counts as gone; names silent for 10 minutes are
dropped by the next beat of any runner. Both routes answer before the bearer check and leak
nothing: the reasons are fixed phrases with numbers and exception type names, never an
error's text, a path or a host.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from services.settings import JobsConfig

log = logging.getLogger("ssb.health")

LIVE_PATH = "/livez"
READY_PATH = "/readyz"
PATHS = (LIVE_PATH, READY_PATH)

HEARTBEAT_EVERY_S = 3.0
RUNNER_STALE_S = 15.0
FORGET_RUNNER_S = 600.0
REDIS_TIMEOUT_S = 1.0
ENGINE_TIMEOUT_S = 2.0
# Probes from several kubelets and load balancers share one check a second.
CACHE_S = 1.0

OK = "ok"

_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
for _, name in ipairs(gone) do
  redis.call('ZREM', KEYS[1], name)
  redis.call('HDEL', KEYS[2], name)
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
"""

# The freshest runner: {age in seconds (a string: Lua numbers reach Redis as integers), engine}.
_LATEST = """
local top = redis.call('ZREVRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #top == 0 then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
return {tostring(now - tonumber(top[2])), redis.call('HGET', KEYS[2], top[1]) or ''}
"""


def _keys(prefix: str) -> list[str]:
    return [f"{prefix}:runners", f"{prefix}:runner-engine"]


def _client(url: str, timeout_s: float) -> Any:
    """A client that gives up fast: redis-py's default retries for seconds, which would make
    a probe outlast its own time-out. One retry still replaces a connection a restart broke."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1))


# -- the runner's side ---------------------------------------------------------------------------

def serve_engine_state(app_name: str, matches: Callable[[str], bool]) -> str:
    """The engine deployment's state in Serve's controller: "ok" while a replica runs (or none
    needs to, scaled to zero), else why not, in fixed words."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return "its application is not running"
    found = [d for name, d in app.deployments.items() if matches(name)]
    if not found:
        return "no engine deployment in its application"
    running = sum(n for d in found for state, n in d.replica_states.items()
                  if str(getattr(state, "value", state)) == "RUNNING")
    states = sorted({str(getattr(d.status, "value", d.status)).lower() for d in found})
    if running or states == ["healthy"]:
        return OK
    return f"no running replica (deployment {', '.join(states)})"


class RunnerHeartbeat:
    """What a runner replica runs beside its loop (services/runner.py): a beat every few
    seconds while `alive()`, carrying `engine_state()` (None: the runner needs no engine)."""

    def __init__(self, jobs: JobsConfig, name: str, engine_state: Callable[[], str] | None = None,
                 every_s: float = HEARTBEAT_EVERY_S):
        self.jobs, self.name, self.engine_state, self.every_s = jobs, name, engine_state, every_s
        self._redis: Any = None
        self._script: Any = None

    def beat(self, engine: str) -> None:
        if self._redis is None:
            self._redis = _client(self.jobs.redis_url, REDIS_TIMEOUT_S)
            self._script = self._redis.register_script(_BEAT)
        self._script(keys=_keys(self.jobs.prefix), args=[self.name, engine, FORGET_RUNNER_S])

    def _engine(self) -> str:
        try:
            return self.engine_state() if self.engine_state is not None else OK
        except Exception as exc:  # Serve's controller restarting, say: the probe says so, in brief
            return f"not checked: {type(exc).__name__}"

    async def run(self, alive: Callable[[], bool], stop: threading.Event) -> None:
        import redis

        pending: asyncio.Future[str] | None = None
        while not stop.is_set():
            if alive():
                # One question to the controller at a time: a slow one is waited on, not repeated.
                if pending is None:
                    pending = asyncio.ensure_future(asyncio.to_thread(self._engine))
                try:
                    engine = await asyncio.wait_for(asyncio.shield(pending), ENGINE_TIMEOUT_S)
                    pending = None
                except asyncio.TimeoutError:
                    engine = f"not checked: Serve's controller did not answer within {ENGINE_TIMEOUT_S:g} s"
                try:
                    await asyncio.to_thread(self.beat, engine)
                except redis.RedisError as exc:  # the job store is down: readiness says so itself
                    log.debug("heartbeat not written: %s", type(exc).__name__)
                except Exception:  # a beat that fails otherwise must not end the beats for good
                    log.exception("heartbeat not written")
            await asyncio.sleep(self.every_s)


# -- the API's side ------------------------------------------------------------------------------

class Readiness:
    def __init__(self, jobs: JobsConfig, stale_after_s: float = RUNNER_STALE_S, timeout_s: float = REDIS_TIMEOUT_S,
                 cache_s: float = CACHE_S):
        self.jobs, self.stale_after_s, self.timeout_s, self.cache_s = jobs, stale_after_s, timeout_s, cache_s
        self._redis: Any = None
        self._latest: Any = None
        self._last: tuple[float, bool, tuple[bool, dict[str, str]]] | None = None
        self._lock: asyncio.Lock | None = None

    def check(self, with_runner: bool) -> tuple[bool, dict[str, str]]:
        """(ready, check -> "ok" or why not); blocks for at most a few Redis time-outs."""
        import redis

        if self._redis is None:
            self._redis = _client(self.jobs.redis_url, self.timeout_s)
            self._latest = self._redis.register_script(_LATEST)
        checks: dict[str, str] = {}
        try:
            self._redis.ping()
            checks["redis"] = OK
        except redis.BusyLoadingError:
            checks["redis"] = "not ready: loading its data"
        except redis.RedisError as exc:
            checks["redis"] = f"unavailable ({type(exc).__name__})"
        if with_runner:
            checks["runner"], checks["engine"] = self._runner(checks["redis"] == OK)
        return all(v == OK for v in checks.values()), checks

    def _runner(self, redis_ok: bool) -> tuple[str, str]:
        import redis

        if not redis_ok:
            return ("not checked: the job store is unavailable",) * 2  # type: ignore[return-value]
        try:
            latest = self._latest(keys=_keys(self.jobs.prefix))
        except redis.RedisError as exc:
            return (f"not checked ({type(exc).__name__})",) * 2  # type: ignore[return-value]
        if not latest:
            return "no runner has reported", "not checked: no runner reports it"
        age, engine = float(latest[0]), latest[1]
        if age > self.stale_after_s:
            return f"no heartbeat for {age:.0f} s", "not checked: no live runner reports it"
        return OK, engine[:120] or "not reported"

    async def answer(self, with_runner: bool) -> tuple[bool, dict[str, str]]:
        """`check`, at most once per `cache_s` however many probes ask at once."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            last = self._last
            if last is not None and last[1] == with_runner and time.monotonic() - last[0] < self.cache_s:
                return last[2]
            result = await asyncio.to_thread(self.check, with_runner)
            self._last = (time.monotonic(), with_runner, result)
            return result


def deployed_with_runner() -> bool:
    """Whether this API replica was deployed with a runner (services/api.py's CurationAPI
    keeps the handle it was bound to; None when deployed alone)."""
    try:
        from ray import serve

        return getattr(serve.get_replica_context().servable_object, "runner", None) is not None
    except Exception:  # not in a Serve replica
        return False


class HealthRoutes:
    """ASGI middleware answering GET /livez and /readyz (relative to the app's root_path)
    itself, outside the bearer check, the body limit and the request metrics: a probe needs
    no token and is no request of a client's. Everything else passes through."""

    def __init__(self, app: Any, jobs: JobsConfig, with_runner: Callable[[], bool] = deployed_with_runner):
        self.app, self.with_runner = app, with_runner
        self.readiness = Readiness(jobs)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") == "GET":
            path, root = scope.get("path", ""), scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            if path == LIVE_PATH:
                return await _send_json(send, 200, {"status": "ok"})
            if path == READY_PATH:
                ready, checks = await self.readiness.answer(self.with_runner())
                return await _send_json(send, 200 if ready else 503,
                                        {"status": "ok" if ready else "unavailable", "checks": checks})
        await self.app(scope, receive, send)


async def _send_json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"cache-control", b"no-store"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
