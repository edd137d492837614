"""Curation jobs in Redis: records, progress counters, the work queue, leases and idempotency keys.

Keys (all under one prefix, default "ssb"):

    {p}:job:{id}              hash: the record (status, spec, timestamps, counters, result)
    {p}:queue                 list: ids of queued jobs, oldest first
    {p}:running               sorted set: id -> lease deadline (unix seconds)
    {p}:active:{owner}        set: an owner's queued and running jobs (the concurrency limit)
    {p}:idem:{owner}:{key}    string: the job an Idempotency-Key created

Every state change that touches more than one key is one Lua script, so a crash (of the
API replica, the runner or Redis itself, with its append-only file) never leaves a job
half-created, queued twice, or neither queued nor running. A runner holds a job by a lease
it renews; a job whose lease ran out is put back at the head of the queue (its store
resumes where it stopped), or marked failed and resumable after `max_attempts`.

Owners are token fingerprints: tokens themselves never reach Redis.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import redis

TERMINAL = ("succeeded", "failed", "cancelled")
COUNTERS = ("rolled_out", "verified", "kept", "skipped")


class JobStoreUnavailable(Exception):
    """Redis cannot be reached; the API answers 503 and the runner retries."""


class TooManyJobs(Exception):
    def __init__(self, active: int, limit: int):
        super().__init__(f"{active} jobs of this token are queued or running; "
                         f"the limit is max_concurrent_jobs_per_token={limit}")


def token_owner(token: str) -> str:
    """A stable, non-reversible name for a bearer token (what job records keep)."""
    return hashlib.sha256(b"ssb-owner:" + token.encode()).hexdigest()[:24]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# KEYS: job, queue, active, idem ('' for none).  ARGV: id, fields json, max_active, idem_ttl, prefix.
# Returns {id, created(0|1)} or {"", -active}: too many jobs.
_CREATE = """
if KEYS[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing and redis.call('EXISTS', ARGV[5] .. ':job:' .. existing) == 1 then
    return {existing, 0}
  end
end
local active = redis.call('SCARD', KEYS[3])
if active >= tonumber(ARGV[3]) then return {'', -active} end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[1], 'EX', tonumber(ARGV[4])) end
return {ARGV[1], 1}
"""

# KEYS: queue, running.  ARGV: prefix, runner, lease deadline, now iso.  Returns a job id or false.
_CLAIM = """
while true do
  local id = redis.call('LPOP', KEYS[1])
  if not id then return false end
  local job = ARGV[1] .. ':job:' .. id
  if redis.call('HGET', job, 'status') == 'queued' then
    redis.call('HSET', job, 'status', 'running', 'runner', ARGV[2], 'lease_until', ARGV[3],
               'updated_at', ARGV[4])
    if not redis.call('HGET', job, 'started_at') then redis.call('HSET', job, 'started_at', ARGV[4]) end
    redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    return id
  end
end
"""

# KEYS: queue, running.  ARGV: prefix, now (unix), now iso, max_attempts.
# Requeues (at the head) or fails the running jobs whose lease ran out; returns how many.
_REAP = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  local job = ARGV[1] .. ':job:' .. id
  if redis.call('HGET', job, 'status') == 'running' then
    local attempts = tonumber(redis.call('HGET', job, 'attempts') or '0')
    if redis.call('HGET', job, 'cancel_requested') == '1' then
      redis.call('HSET', job, 'status', 'cancelled', 'finished_at', ARGV[3], 'updated_at', ARGV[3])
      redis.call('SREM', ARGV[1] .. ':active:' .. redis.call('HGET', job, 'owner'), id)
    elseif attempts >= tonumber(ARGV[4]) then
      redis.call('HSET', job, 'status', 'failed', 'resumable', '1', 'finished_at', ARGV[3], 'updated_at', ARGV[3],
                 'error', 'the runner was lost ' .. attempts .. ' times; resubmit (or POST .../resume) to continue '
                 .. 'from the examples already stored')
      redis.call('SREM', ARGV[1] .. ':active:' .. redis.call('HGET', job, 'owner'), id)
    else
      redis.call('HSET', job, 'status', 'queued', 'updated_at', ARGV[3],
                 'error', 'runner lost (attempt ' .. attempts .. '); requeued, resumes from its store')
      redis.call('LPUSH', KEYS[1], id)
    end
  end
end
return #ids
"""

# KEYS: job, queue, running, active.  ARGV: id, now iso.  Returns the status after the call.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'queued' then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel_requested', '1', 'finished_at', ARGV[2],
             'updated_at', ARGV[2])
  redis.call('SREM', KEYS[4], ARGV[1])
  return 'cancelled'
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', ARGV[2])
  return 'cancelling'
end
return status
"""

# KEYS: job, running, active.  ARGV: id, status, fields json, ttl, now iso.
_FINISH = """
local fields = cjson.decode(ARGV[3])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[5], 'updated_at', ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
if tonumber(ARGV[4]) > 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4])) end
return 1
"""

# KEYS: job, queue, active.  ARGV: id, max_active, now iso.  Requeue a failed/cancelled job.
_RESUME = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'failed' and status ~= 'cancelled' then return status or false end
local active = redis.call('SCARD', KEYS[3])
if active >= tonumber(ARGV[2]) then return -active end
redis.call('PERSIST', KEYS[1])
redis.call('HSET', KEYS[1], 'status', 'queued', 'cancel_requested', '0', 'attempts', '0', 'updated_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'finished_at', 'resumable')
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 'queued'
"""


class JobStore:
    """All job state lives in Redis; this object holds only a connection pool."""

    def __init__(self, url: str, *, prefix: str = "ssb", job_ttl_s: int = 7 * 86400,
                 idempotency_ttl_s: int = 86400, timeout_s: float = 2.0):
        self.prefix, self.job_ttl_s, self.idempotency_ttl_s = prefix, job_ttl_s, idempotency_ttl_s
        self._r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                       socket_connect_timeout=timeout_s, health_check_interval=10)
        self._create = self._r.register_script(_CREATE)
        self._claim = self._r.register_script(_CLAIM)
        self._reap = self._r.register_script(_REAP)
        self._cancel = self._r.register_script(_CANCEL)
        self._finish = self._r.register_script(_FINISH)
        self._resume = self._r.register_script(_RESUME)

    # -- keys ---------------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _active(self, owner: str) -> str:
        return f"{self.prefix}:active:{owner}"

    @property
    def _queue(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def _running(self) -> str:
        return f"{self.prefix}:running"

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # The message names the failure, never the URL (it may carry a password).
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise JobStoreUnavailable(f"the job store (Redis) is unavailable: {type(exc).__name__}") from None
        except redis.ResponseError as exc:
            if "LOADING" in str(exc) or "MISCONF" in str(exc):
                raise JobStoreUnavailable(f"the job store (Redis) is not ready: {str(exc)[:80]}") from None
            raise

    # -- the API's side -----------------------------------------------------------------------

    def ping(self) -> bool:
        return bool(self._call(self._r.ping))

    def create(self, owner: str, spec: dict[str, Any], *, problems: int, jobs_root: str,
               idempotency_key: str | None, max_active: int) -> tuple[dict[str, Any], bool]:
        """(record, created). With an idempotency key already used by this owner, the job it made.
        The job's run directory is <jobs_root>/<job id>, fixed before the job can be claimed."""
        job_id = uuid.uuid4().hex
        stamp = now_iso()
        fields = {"id": job_id, "owner": owner, "status": "queued", "created_at": stamp, "updated_at": stamp,
                  "spec": json.dumps(spec), "problems": str(problems), "run_dir": f"{jobs_root.rstrip('/')}/{job_id}",
                  "attempts": "0",
                  "cancel_requested": "0", **{c: "0" for c in COUNTERS}}
        idem = ""
        if idempotency_key:
            digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
            idem = f"{self.prefix}:idem:{owner}:{digest}"
        got_id, flag = self._call(self._create, keys=[self._job(job_id), self._queue, self._active(owner), idem],
                                  args=[job_id, json.dumps(fields), max_active, self.idempotency_ttl_s,
                                        self.prefix])
        if int(flag) < 0:
            raise TooManyJobs(-int(flag), max_active)
        record = self.get(got_id)
        if record is None:  # expired between the script and this read: vanishingly rare
            raise JobStoreUnavailable("the job record expired while it was being read; retry")
        return record, bool(int(flag))

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self._call(self._r.hgetall, self._job(job_id))
        return decode_record(raw) if raw else None

    def cancel(self, job_id: str) -> str | None:
        return self._call(self._cancel, keys=[self._job(job_id), self._queue, self._running,
                                              self._active_of(job_id)], args=[job_id, now_iso()]) or None

    def resume(self, job_id: str, max_active: int) -> str | None:
        """Requeue a failed or cancelled job: it continues from the examples already stored."""
        out = self._call(self._resume, keys=[self._job(job_id), self._queue, self._active_of(job_id)],
                         args=[job_id, max_active, now_iso()])
        if isinstance(out, int) and out < 0:
            raise TooManyJobs(-out, max_active)
        return out or None

    def _active_of(self, job_id: str) -> str:
        return self._active(self._call(self._r.hget, self._job(job_id), "owner") or "-")

    def queue_length(self) -> int:
        return int(self._call(self._r.llen, self._queue))

    # -- the runner's side --------------------------------------------------------------------

    def claim(self, runner: str, lease_s: float) -> str | None:
        return self._call(self._claim, keys=[self._queue, self._running],
                          args=[self.prefix, runner, time.time() + lease_s, now_iso()]) or None

    def renew(self, job_id: str, lease_s: float) -> None:
        deadline = time.time() + lease_s
        pipe = self._r.pipeline()
        pipe.zadd(self._running, {job_id: deadline}, xx=True)
        pipe.hset(self._job(job_id), mapping={"lease_until": deadline, "updated_at": now_iso()})
        self._call(pipe.execute)

    def reap(self, max_attempts: int) -> int:
        return int(self._call(self._reap, keys=[self._queue, self._running],
                              args=[self.prefix, time.time(), now_iso(), max_attempts]))

    def add_progress(self, job_id: str, counts: dict[str, int]) -> None:
        pipe = self._r.pipeline()
        for field, n in counts.items():
            if n:
                pipe.hincrby(self._job(job_id), field, n)
        pipe.hset(self._job(job_id), "updated_at", now_iso())
        self._call(pipe.execute)

    def set_fields(self, job_id: str, fields: dict[str, Any]) -> None:
        self._call(self._r.hset, self._job(job_id), mapping={k: _str(v) for k, v in fields.items()})

    def cancel_requested(self, job_id: str) -> bool:
        return self._call(self._r.hget, self._job(job_id), "cancel_requested") == "1"

    def finish(self, job_id: str, status: str, fields: dict[str, Any] | None = None) -> None:
        assert status in TERMINAL
        self._call(self._finish, keys=[self._job(job_id), self._running, self._active_of(job_id)],
                   args=[job_id, status, json.dumps({k: _str(v) for k, v in (fields or {}).items()}),
                         self.job_ttl_s, now_iso()])


def _str(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def decode_record(raw: dict[str, str]) -> dict[str, Any]:
    """Redis hash → typed record (counters as ints, spec and result as JSON)."""
    record: dict[str, Any] = dict(raw)
    for key in ("problems", "attempts", *COUNTERS):
        record[key] = int(raw.get(key, 0) or 0)
    record["skipped_by_reason"] = {k.split(":", 1)[1]: int(v) for k, v in raw.items() if k.startswith("skipped:")}
    for key in ("spec", "result"):
        if key in raw:
            record[key] = json.loads(raw[key])
    record["cancel_requested"] = raw.get("cancel_requested") == "1"
    record["resumable"] = raw.get("resumable") == "1"
    return record
