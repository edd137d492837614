"""The embedded Redis of `ssb serve` (services/redis_server.py) restarts by itself: a
redis-server killed with SIGKILL, as the OOM killer does, is reaped (no zombie), started again
on its port and directory with the data its append-only file holds, and clients made before
the crash work again without being rebuilt. A stop is final, and an external Redis URL starts
nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import redis

from services.jobs import JobStore
from services.redis_server import RedisServer


def zombie_or_gone(pid: int) -> str:
    """"gone", "zombie", or the state /proc gives for a live process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return "gone"
    state = next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))
    return "zombie" if state == "Z" else state


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def pings(url: str) -> bool:
    """One try, no retries (redis-py's default client retries for seconds: it rides out a short outage)."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
        return False
    finally:
        client.close()


def test_a_sigkilled_redis_is_reaped_and_restarted_with_its_data(tmp_path, caplog):
    server = RedisServer(tmp_path / "redis").start()
    try:
        jobs = JobStore(server.url, prefix="t")  # made before the crash and kept through it
        job = jobs.create("alice", {"source": {"kind": "synthetic"}}, problems=1, jobs_root="/r",
                          idempotency_key=None, max_active=4)[0]
        old = server.proc
        port = server.port
        caplog.set_level("INFO", logger="ssb.redis")

        os.kill(old.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not pings(server.url), 2, "a client to see it gone")
        # With no call of ours, the supervisor brings it back on the same port.
        wait_for(lambda: server.proc is not old and pings(server.url), 10, "the restart")
        recovered = time.monotonic() - killed
        assert server.port == port and server.restarts == 1
        assert zombie_or_gone(old.pid) == "gone", "the killed redis-server was not reaped"
        # The data is back (append-only file), through the client made before the crash.
        assert jobs.get(job.id).status == "queued"
        assert recovered < 5, recovered

        # The supervisor notes the restart once its own ping answers, maybe just after ours.
        text = wait_for(lambda: "restarted as pid" in (t := server.supervisor_log.read_text()) and t, 5, "the note")
        assert f"redis-server (pid {old.pid}) was killed by SIGKILL" in text
        assert any("SIGKILL" in r.getMessage() for r in caplog.records if r.name == "ssb.redis")
        print(f"\nrecovered {recovered:.2f} s after SIGKILL")
    finally:
        server.stop()


def test_restarts_back_off_while_it_keeps_dying_and_stop_ends_supervision(tmp_path):
    server = RedisServer(tmp_path / "redis", first_delay_s=0.2, max_delay_s=0.4).start()
    try:
        for n in (1, 2, 3):
            old = server.proc
            os.kill(old.pid, signal.SIGKILL)
            wait_for(lambda: server.restarts == n and pings(server.url), 10, f"restart {n}")
        delays = [line.split(" in ")[-1].split(" s ")[0] for line in server.supervisor_log.read_text().splitlines()
                  if "restarting it" in line]
        assert delays == ["0.2", "0.4", "0.4"], delays  # doubled, then capped
    finally:
        server.stop()
    assert server.proc is None
    time.sleep(0.6)  # past any restart delay: none may come
    assert not pings(server.url) and server.restarts == 3
    # Only this server's: the suite's session Redis (another child of this process) lives on.
    assert not [p for p in psutil.Process().children() if p.name() == "redis-server"
                and str(server.port) in p.cmdline()]
    assert server.supervisor_log.read_text().splitlines()[-1].endswith("stopped (SIGTERM); no restart")


def test_a_sigkill_by_stop_is_not_undone(tmp_path):
    """The crash the fault tests stage themselves: stop(kill=True) leaves Redis down until
    start() (they time the outage), and start() supervises it again."""
    server = RedisServer(tmp_path / "redis", first_delay_s=0.05).start()
    try:
        server.stop(kill=True)
        time.sleep(0.5)
        assert not pings(server.url)
        server.start()
        old = server.proc
        os.kill(old.pid, signal.SIGKILL)
        wait_for(lambda: server.proc is not old and pings(server.url), 10, "the restart after start()")
    finally:
        server.stop()


def test_an_external_redis_url_starts_no_redis(tmp_path):
    from cluster.serve_cmd import own_redis

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert own_redis("redis://127.0.0.1:6390/0", tmp_path / "run") is None
    after = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in after if p.name() == "redis-server"] and not (tmp_path / "run" / "redis").exists()
