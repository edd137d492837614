"""Curation jobs in Redis: records, progress counters, the work queue, leases and idempotency keys.

Keys (all under one prefix, default "ssb"):

    {p}:job:{id}              hash: the record (status, spec, timestamps, counters, result)
    {p}:queue                 list: ids of queued jobs, oldest first
    {p}:running               sorted set: id -> lease deadline (unix seconds)
    {p}:active:{owner}        set: an owner's queued and running jobs (the concurrency limit)
    {p}:jobs:{owner}          sorted set: an owner's stored jobs -> when the record expires
                              (+inf until it ends; the stored-jobs limit)
    {p}:idem:{owner}:{key}    string: the job an Idempotency-Key created

Every state change that touches more than one key is one Lua script, so a crash (of the
API replica, the runner or Redis itself, with its append-only file) never leaves a job
half-created, queued twice, or neither queued nor running. A runner holds a job by a lease
it renews; a job whose lease ran out is put back at the head of the queue (its store
resumes where it stopped), or marked failed and resumable after `max_attempts`.

Leases are fenced: each claim increments the record's `epoch`, and every write a runner
makes (renew, progress, fields, finish) checks runner and epoch in the same script, so a
runner that lost its job (Redis unreachable past the lease, then requeued to another)
gets LeaseLost instead of overwriting the new holder's record or ending the job twice.

Every terminal state (finished, cancelled while queued, reaped as failed or cancelled)
expires after `job_ttl_s`; a resumed job is persistent again. Idempotency keys always carry
their own TTL, and emptied per-owner sets vanish, so nothing grows without bound.

Owners are token fingerprints: tokens themselves never reach Redis.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis

from services.job_record import TERMINAL, JobRecord, JobStatus
from services.settings import JobsConfig
from ssb.layout import job_dir


class JobStoreUnavailable(Exception):
    """Redis cannot be reached; the API answers 503 and the runner retries."""


class TooManyJobs(Exception):
    def __init__(self, active: int, limit: int):
        super().__init__(f"{active} jobs of this token are queued or running; "
                         f"the limit is max_concurrent_jobs_per_token={limit}")


class TooManyStoredJobs(TooManyJobs):
    """A subclass so that callers mapping TooManyJobs (HTTP 429) map this one too."""

    def __init__(self, stored: int, limit: int):
        Exception.__init__(self, f"{stored} jobs of this token are stored (queued, running, or ended and not "
                                 f"yet expired); the limit is max_stored_jobs_per_token={limit}")


class LeaseLost(Exception):
    """The caller no longer holds the job: its lease ran out and the job was requeued or ended."""


@dataclass
class Lease:
    """A runner's hold on one job. `valid_until` (time.monotonic) is measured from before the
    claim or renewal was sent, so it never outlives the deadline Redis holds."""

    job_id: str
    runner: str
    epoch: int
    valid_until: float

    def remaining(self) -> float:
        return self.valid_until - time.monotonic()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# Shared by the scripts that end a job: one place decides what a terminal record keeps and for how long.
_RETIRE = """
local function retire(job, id, prefix, ttl)
  local owner = redis.call('HGET', job, 'owner') or '-'
  redis.call('SREM', prefix .. ':active:' .. owner, id)
  if ttl <= 0 then return end
  redis.call('EXPIRE', job, ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
  local stored = prefix .. ':jobs:' .. owner
  redis.call('ZADD', stored, now + ttl, id)
  redis.call('ZREMRANGEBYSCORE', stored, '-inf', now)
  if redis.call('ZCOUNT', stored, '+inf', '+inf') == 0 then
    local last = redis.call('ZRANGE', stored, -1, -1, 'WITHSCORES')
    if #last > 0 then redis.call('EXPIREAT', stored, math.ceil(tonumber(last[2])) + 1) end
  end
end
"""

_HELD = """
local function held(job, runner, epoch)
  local h = redis.call('HMGET', job, 'status', 'runner', 'epoch')
  return h[1] == 'running' and h[2] == runner and h[3] == epoch
end
"""

# KEYS: job, queue, active, idem ('' for none), stored.  ARGV: id, fields json, max_active, idem_ttl, prefix,
# max_stored.  Returns {id, created(0|1)}, or {"", -count, limit name}: too many jobs.
_CREATE = """
if KEYS[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing and redis.call('EXISTS', ARGV[5] .. ':job:' .. existing) == 1 then
    return {existing, 0}
  end
end
local active = redis.call('SCARD', KEYS[3])
if active >= tonumber(ARGV[3]) then return {'', -active, 'active'} end
local t = redis.call('TIME')
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', tonumber(t[1]) + tonumber(t[2]) / 1e6)
local stored = redis.call('ZCARD', KEYS[5])
if stored >= tonumber(ARGV[6]) then return {'', -stored, 'stored'} end
local fields = cjson.decode(ARGV[2])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[5], '+inf', ARGV[1])
redis.call('PERSIST', KEYS[5])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[1], 'EX', tonumber(ARGV[4])) end
return {ARGV[1], 1}
"""

# KEYS: queue, running.  ARGV: prefix, runner, lease deadline, now iso.  Returns {id, epoch} or false.
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
    local epoch = redis.call('HINCRBY', job, 'epoch', 1)
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    return {id, epoch}
  end
end
"""

# KEYS: queue, running.  ARGV: prefix, now (unix), now iso, max_attempts, ttl.
# Requeues (at the head) or fails the running jobs whose lease ran out; returns how many.
_REAP = _RETIRE + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  local job = ARGV[1] .. ':job:' .. id
  if redis.call('HGET', job, 'status') == 'running' then
    local attempts = tonumber(redis.call('HGET', job, 'attempts') or '0')
    if redis.call('HGET', job, 'cancel_requested') == '1' then
      redis.call('HSET', job, 'status', 'cancelled', 'finished_at', ARGV[3], 'updated_at', ARGV[3])
      retire(job, id, ARGV[1], tonumber(ARGV[5]))
    elseif attempts >= tonumber(ARGV[4]) then
      redis.call('HSET', job, 'status', 'failed', 'resumable', '1', 'finished_at', ARGV[3], 'updated_at', ARGV[3],
                 'error', 'the runner was lost ' .. attempts .. ' times; resubmit (or POST .../resume) to continue '
                 .. 'from the examples already stored')
      retire(job, id, ARGV[1], tonumber(ARGV[5]))
    else
      redis.call('HSET', job, 'status', 'queued', 'updated_at', ARGV[3],
                 'error', 'runner lost (attempt ' .. attempts .. '); requeued, resumes from its store')
      redis.call('LPUSH', KEYS[1], id)
    end
  end
end
return #ids
"""

# KEYS: job, queue.  ARGV: id, now iso, prefix, ttl.  Returns the status after the call.
_CANCEL = _RETIRE + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'queued' then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancel_requested', '1', 'finished_at', ARGV[2],
             'updated_at', ARGV[2])
  retire(KEYS[1], ARGV[1], ARGV[3], tonumber(ARGV[4]))
  return 'cancelled'
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1', 'updated_at', ARGV[2])
  return 'cancelling'
end
return status
"""

# KEYS: job, running.  ARGV: runner, epoch, deadline, now iso, id.  1, or 0: not held.
_RENEW = _HELD + """
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
redis.call('HSET', KEYS[1], 'lease_until', ARGV[3], 'updated_at', ARGV[4])
return 1
"""

# KEYS: job.  ARGV: runner, epoch, increments json, fields json.  1, or 0: not held.
_UPDATE = _HELD + """
if not held(KEYS[1], ARGV[1], ARGV[2]) then return 0 end
for k, v in pairs(cjson.decode(ARGV[3])) do redis.call('HINCRBY', KEYS[1], k, v) end
for k, v in pairs(cjson.decode(ARGV[4])) do redis.call('HSET', KEYS[1], k, v) end
return 1
"""

# KEYS: job, running.  ARGV: id, status, fields json, ttl, now iso, runner, epoch, prefix.  1, or 0: not held.
_FINISH = _RETIRE + _HELD + """
if not held(KEYS[1], ARGV[6], ARGV[7]) then return 0 end
local fields = cjson.decode(ARGV[3])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[5], 'updated_at', ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[1])
retire(KEYS[1], ARGV[1], ARGV[8], tonumber(ARGV[4]))
return 1
"""

# KEYS: job, queue, active, stored.  ARGV: id, max_active, now iso.  Requeue a failed/cancelled job.
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
redis.call('ZADD', KEYS[4], '+inf', ARGV[1])
redis.call('PERSIST', KEYS[4])
return 'queued'
"""

_DEFAULTS = JobsConfig()


class JobStore:
    """All job state lives in Redis; this object holds only a connection pool."""

    def __init__(self, url: str, *, prefix: str = "ssb", job_ttl_s: int = _DEFAULTS.job_ttl_s,
                 idempotency_ttl_s: int = _DEFAULTS.idempotency_ttl_s,
                 max_stored_per_owner: int = _DEFAULTS.max_stored_jobs_per_token, timeout_s: float = 2.0):
        self.prefix, self.job_ttl_s, self.idempotency_ttl_s = prefix, job_ttl_s, idempotency_ttl_s
        self.max_stored_per_owner = max_stored_per_owner
        self._r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                       socket_connect_timeout=timeout_s, health_check_interval=10)
        self._create = self._r.register_script(_CREATE)
        self._claim = self._r.register_script(_CLAIM)
        self._reap = self._r.register_script(_REAP)
        self._cancel = self._r.register_script(_CANCEL)
        self._renew = self._r.register_script(_RENEW)
        self._update = self._r.register_script(_UPDATE)
        self._finish = self._r.register_script(_FINISH)
        self._resume = self._r.register_script(_RESUME)

    @classmethod
    def from_config(cls, j: JobsConfig, **kw: Any) -> "JobStore":
        return cls(j.redis_url, prefix=j.prefix, job_ttl_s=j.job_ttl_s, idempotency_ttl_s=j.idempotency_ttl_s,
                   max_stored_per_owner=j.max_stored_jobs_per_token, **kw)

    # -- keys ---------------------------------------------------------------------------------

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _active(self, owner: str) -> str:
        return f"{self.prefix}:active:{owner}"

    def _stored(self, owner: str) -> str:
        return f"{self.prefix}:jobs:{owner}"

    @property
    def _queue(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def _running(self) -> str:
        return f"{self.prefix}:running"

    @property
    def _totals(self) -> str:
        return f"{self.prefix}:totals"

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
               idempotency_key: str | None, max_active: int) -> tuple[JobRecord, bool]:
        """(record, created). With an idempotency key already used by this owner, the job it made.
        The job's run directory is <jobs_root>/<job id>, fixed before the job can be claimed.
        TooManyJobs: `max_active` queued or running; TooManyStoredJobs: `max_stored_per_owner`
        records not yet expired, whatever their state."""
        job_id = uuid.uuid4().hex
        stamp = now_iso()
        fields = JobRecord(id=job_id, owner=owner, status=JobStatus.QUEUED, created_at=stamp, updated_at=stamp,
                           spec=spec, problems=problems, run_dir=job_dir(jobs_root, job_id)).to_redis()
        idem = ""
        if idempotency_key:
            digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
            idem = f"{self.prefix}:idem:{owner}:{digest}"
        got_id, flag, *which = self._call(
            self._create, keys=[self._job(job_id), self._queue, self._active(owner), idem, self._stored(owner)],
            args=[job_id, json.dumps(fields), max_active, self.idempotency_ttl_s, self.prefix,
                  self.max_stored_per_owner])
        if int(flag) < 0:
            if which == ["stored"]:
                raise TooManyStoredJobs(-int(flag), self.max_stored_per_owner)
            raise TooManyJobs(-int(flag), max_active)
        record = self.get(got_id)
        if record is None:  # expired between the script and this read: vanishingly rare
            raise JobStoreUnavailable("the job record expired while it was being read; retry")
        return record, bool(int(flag))

    def get(self, job_id: str) -> JobRecord | None:
        raw = self._call(self._r.hgetall, self._job(job_id))
        return JobRecord.from_redis(raw) if raw else None

    def cancel(self, job_id: str) -> str | None:
        return self._call(self._cancel, keys=[self._job(job_id), self._queue],
                          args=[job_id, now_iso(), self.prefix, self.job_ttl_s]) or None

    def resume(self, job_id: str, max_active: int) -> str | None:
        """Requeue a failed or cancelled job: it continues from the examples already stored."""
        owner = self._call(self._r.hget, self._job(job_id), "owner") or "-"
        out = self._call(self._resume, keys=[self._job(job_id), self._queue, self._active(owner),
                                             self._stored(owner)], args=[job_id, max_active, now_iso()])
        if isinstance(out, int) and out < 0:
            raise TooManyJobs(-out, max_active)
        return out or None

    def list_owned(self, owner: str, offset: int = 0, limit: int = 50) -> tuple[int, list[JobRecord]]:
        """(how many, one page of records, newest first) of `owner`'s stored jobs. Read from the
        stored-jobs index, which max_stored_per_owner bounds, so sorting it all is cheap."""
        ids = self._call(self._r.zrangebyscore, self._stored(owner), f"({time.time()}", "+inf")
        pipe = self._r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._job(job_id), "created_at", "owner")
        heads = self._call(pipe.execute) if ids else []
        # A record gone (expired just now) or of another owner is not listed, whatever the index says.
        live = sorted(((created, job_id) for job_id, (created, who) in zip(ids, heads) if created and who == owner),
                      reverse=True)
        page = [job_id for _, job_id in live[offset:offset + limit]]
        pipe = self._r.pipeline(transaction=False)
        for job_id in page:
            pipe.hgetall(self._job(job_id))
        raws = self._call(pipe.execute) if page else []
        return len(live), [JobRecord.from_redis(raw) for raw in raws if raw]

    def queue_length(self) -> int:
        return int(self._call(self._r.llen, self._queue))

    def totals(self) -> dict[str, int]:
        """The service's counters over every job's committed problems (Prometheus reads them)."""
        return {k: int(v) for k, v in self._call(self._r.hgetall, self._totals).items()}

    # -- the runner's side --------------------------------------------------------------------

    def claim(self, runner: str, lease_s: float) -> Lease | None:
        sent = time.monotonic()
        out = self._call(self._claim, keys=[self._queue, self._running],
                         args=[self.prefix, runner, time.time() + lease_s, now_iso()])
        return Lease(out[0], runner, int(out[1]), sent + lease_s) if out else None

    def renew(self, lease: Lease, lease_s: float) -> None:
        sent, deadline = time.monotonic(), time.time() + lease_s
        held = self._call(self._renew, keys=[self._job(lease.job_id), self._running],
                          args=[lease.runner, lease.epoch, deadline, now_iso(), lease.job_id])
        self._check_held(lease, held)
        lease.valid_until = sent + lease_s

    def reap(self, max_attempts: int) -> int:
        return int(self._call(self._reap, keys=[self._queue, self._running],
                              args=[self.prefix, time.time(), now_iso(), max_attempts, self.job_ttl_s]))

    def add_progress(self, lease: Lease, counts: dict[str, int]) -> None:
        """The job's counters (fenced), then the service's totals: only for work whose lease held,
        so a problem counts once (a lost lease's commit is redone by the job's next holder)."""
        increments = {k: n for k, n in counts.items() if n}
        self._fenced_update(lease, increments, {"updated_at": now_iso()})
        pipe = self._r.pipeline(transaction=False)
        for key, n in increments.items():
            pipe.hincrby(self._totals, key, n)
        self._call(pipe.execute)

    def set_fields(self, lease: Lease, fields: dict[str, Any]) -> None:
        self._fenced_update(lease, {}, {k: _str(v) for k, v in fields.items()})

    def _fenced_update(self, lease: Lease, increments: dict[str, int], fields: dict[str, str]) -> None:
        held = self._call(self._update, keys=[self._job(lease.job_id)],
                          args=[lease.runner, lease.epoch, json.dumps(increments), json.dumps(fields)])
        self._check_held(lease, held)

    def cancel_requested(self, job_id: str) -> bool:
        return self._call(self._r.hget, self._job(job_id), "cancel_requested") == "1"

    def finish(self, lease: Lease, status: JobStatus, fields: dict[str, Any] | None = None) -> None:
        """The job's one terminal transition; LeaseLost if another runner holds it, or it ended."""
        assert status in TERMINAL
        held = self._call(self._finish, keys=[self._job(lease.job_id), self._running],
                          args=[lease.job_id, JobStatus(status).value, json.dumps({k: _str(v) for k, v in (fields or {}).items()}),
                                self.job_ttl_s, now_iso(), lease.runner, lease.epoch, self.prefix])
        self._check_held(lease, held)

    @staticmethod
    def _check_held(lease: Lease, held: Any) -> None:
        if not int(held):
            lease.valid_until = float("-inf")
            raise LeaseLost(f"job {lease.job_id}: {lease.runner} no longer holds it (epoch {lease.epoch})")


def _str(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)

