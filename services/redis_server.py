"""A local `redis-server` for `ssb serve` and the tests: loopback only, append-only file on,
supervised.

`appendfsync always` makes every acknowledged write durable before the reply, so a Redis
killed at any moment and restarted on the same directory has every job it ever confirmed.

The supervisor (a daemon thread per server) makes that restart happen by itself: it waits on
the process, which also reaps it (a redis-server killed by the OOM killer would otherwise stay
a zombie under `ssb serve`), and starts it again on the same directory and port, after 0.5 s,
then 1, 2, ... up to 10 s while it keeps dying; a server that stayed up 30 s earns the short
delay again. Each exit, its cause (exit code or signal) and each restart go to the Python
logger "ssb.redis" and to `supervisor.log` beside the append-only file. Clients need nothing:
redis-py reconnects on the next command. `stop()` ends the supervision before it stops the
server, so a stop is never undone.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ssb.layout import REDIS_SUPERVISOR_LOG

log = logging.getLogger("ssb.redis")

# An OOM kill leaves nothing to wait for, so the first restart comes at once; one that keeps
# failing (a full disk, its port taken meanwhile) is retried ever more slowly, up to the cap.
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0
# Up this long, the server counts as healthy again: its next crash gets the first delay.
STABLE_AFTER_S = 30.0
# A restarted server replays its whole append-only file before it answers.
READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exit_cause(returncode: int) -> str:
    """How a process ended, from its Popen return code (negative: the signal that killed it)."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class RedisServer:
    def __init__(self, directory: str | Path, port: int | None = None, binary: str | None = None, *,
                 supervise: bool = True, first_delay_s: float = FIRST_DELAY_S, max_delay_s: float = MAX_DELAY_S,
                 stable_after_s: float = STABLE_AFTER_S):
        self.dir = Path(directory).resolve()
        self.port = port or free_port()
        self.binary = binary or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc: subprocess.Popen[bytes] | None = None
        self.supervise = supervise
        # Read by the supervisor at each restart, so a test may lengthen an outage it wants to observe.
        self.first_delay_s, self.max_delay_s, self.stable_after_s = first_delay_s, max_delay_s, stable_after_s
        self.restarts = 0
        self._lock = threading.Lock()  # between a restart and stop(): no restart once stop() began
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def supervisor_log(self) -> Path:
        return self.dir / REDIS_SUPERVISOR_LOG

    def start(self, timeout_s: float = 20.0) -> "RedisServer":
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._stopping = threading.Event()  # the last supervisor, if any, has seen its own set
            self.proc = self._spawn()
        if not self._answers(self.proc, timeout_s, self._stopping):
            self.stop(kill=True)
            raise RuntimeError(f"redis-server did not start on port {self.port} (see {self.dir}/redis.log)")
        if self.supervise:
            self._supervisor = threading.Thread(target=self._supervise, args=(self.proc, self._stopping),
                                                name=f"redis-supervisor-{self.port}", daemon=True)
            self._supervisor.start()
        return self

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (a clean shutdown) or SIGKILL (a crash); either way the AOF keeps the data,
        and the supervisor, stopped first, restarts nothing."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill() if kill else proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._supervisor is not None:
            self._supervisor.join(timeout=30)
            self._supervisor = None
            # The file's entry only, in effect: a stop is asked for, and the console of a stopping
            # `ssb serve` stays quiet.
            self._note(f"stopped ({'SIGKILL' if kill else 'SIGTERM'}); no restart", level=logging.DEBUG)
        self.proc = None

    # -- the supervisor -----------------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
               "--logfile", str(self.dir / "redis.log")]
        # A session of its own: a signal to the process group of `ssb serve` (Ctrl-C) leaves the
        # job store to the orderly stop.
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def _answers(self, proc: subprocess.Popen[bytes], timeout_s: float, stopping: threading.Event) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        return True
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if proc.poll() is not None or time.monotonic() > deadline or stopping.wait(0.05):
                    return False
        finally:
            client.close()

    def _supervise(self, proc: subprocess.Popen[bytes] | None, stopping: threading.Event) -> None:
        delay = self.first_delay_s
        up_since = time.monotonic()
        while True:
            if proc is not None:
                code = proc.wait()  # blocks until it ends, and reaps it
                cause = f"redis-server (pid {proc.pid}) {exit_cause(code)}"
            else:
                cause = "redis-server could not be started"
            down_since = time.monotonic()
            if stopping.is_set():
                return
            if down_since - up_since >= self.stable_after_s:
                delay = self.first_delay_s
            delay = max(self.first_delay_s, min(delay, self.max_delay_s))
            self._note(f"{cause} after {down_since - up_since:.1f} s up; restarting it on port {self.port} "
                       f"in {delay:g} s (its own log: redis.log)")
            if stopping.wait(delay):
                return
            with self._lock:
                if stopping.is_set():
                    return
                try:
                    proc = self.proc = self._spawn()
                except OSError as exc:
                    proc = None
                    self._note(f"restart failed: {type(exc).__name__}: {exc}")
            up_since = time.monotonic()
            delay = min(delay * 2, self.max_delay_s)
            if proc is None:
                continue
            self.restarts += 1
            if self._answers(proc, READY_TIMEOUT_S, stopping):
                self._note(f"restarted as pid {proc.pid} (restart {self.restarts}); serving again "
                           f"{time.monotonic() - down_since:.1f} s after it went down", level=logging.INFO)
            elif not stopping.is_set() and proc.poll() is None:
                self._note(f"restarted as pid {proc.pid}, but not answering after {READY_TIMEOUT_S:g} s")

    def _note(self, message: str, level: int = logging.WARNING) -> None:
        log.log(level, "%s", message)
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        try:
            with self.supervisor_log.open("a") as f:
                f.write(f"{stamp} {message}\n")
        except OSError:  # the logger has it; a full disk must not stop the supervision
            pass
