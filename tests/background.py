"""Jobs that are only processes of their own (`ssb run`, `ssb serve`, a benchmark's smoke run),
started when collection ends and run on a thread beside the rest of the suite.

Why: on two cores a test that starts Ray or an engine leaves a core idle much of the time
(imports and start-up are mostly one thread), and a command in a process of its own can use
it. One job at a time: the tests and one job keep both cores busy; a third stream would only
contend.

A job is a function registered under a name (`@BACKGROUND.job(name)`). It starts when
collection ends if a selected test asks for it: with `@pytest.mark.background(name)`, or by
using a fixture of the same name. Jobs start in the order of the first test that asks, so a
test run alone pays for no one else's job. The test takes the job's value with
`BACKGROUND.result(name)`, which waits for a running job, runs one that has not started yet
then and there, and re-raises a job's exception with its own traceback: a test body moved into
a job fails in its own test.

Jobs start their processes through `BACKGROUND.popen` or `BACKGROUND.run`, each in a session of
its own, so that processes still running when the suite stops (a failure under `-x`, Ctrl-C)
are killed with their children instead of outliving it; what a finished `run` command left in
its session is killed as it ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[[], Any])


class Background:
    def __init__(self) -> None:
        self._jobs: dict[str, Callable[[], Any]] = {}
        self._futures: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen] = set()
        self._root: Path | None = None

    def job(self, name: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            assert name not in self._jobs, f"two background jobs named {name!r}"
            self._jobs[name] = fn
            return fn
        return register

    def __contains__(self, name: str) -> bool:
        return name in self._jobs

    def start(self, names: Iterable[str]) -> None:
        """Runs the jobs in this order on one thread (a daemon: it never holds up the exit)."""
        with self._lock:
            queued = [(n, Future()) for n in dict.fromkeys(names) if n not in self._futures]
            self._futures.update(queued)
        if queued:
            threading.Thread(target=self._work, args=(queued,), name="background-jobs", daemon=True).start()

    def _work(self, queued: list[tuple[str, Future]]) -> None:
        for name, future in queued:
            if future.set_running_or_notify_cancel():  # False: a test cancelled it to run it itself
                self._settle(name, future)

    def _settle(self, name: str, future: Future) -> None:
        try:
            future.set_result(self._jobs[name]())
        except BaseException as exc:  # noqa: BLE001 (handed to the test that asks)
            future.set_exception(exc)

    def result(self, name: str) -> Any:
        """The job's value (or its exception, raised): a queued job runs here and now, beside
        whichever job the thread is running."""
        with self._lock:
            future = self._futures.get(name)
            if future is None or future.cancel():
                future = self._futures[name] = Future()
                future.set_running_or_notify_cancel()
                here = True
            else:
                here = False
        if here:
            self._settle(name, future)
        return future.result()

    def tmp_path(self, name: str) -> Path:
        """A fresh directory for a job (pytest's tmp_path belongs to a test, not to a thread)."""
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="ssb-tests-background-"))
        return Path(tempfile.mkdtemp(prefix=f"{name.replace(':', '-')}-", dir=self._root))

    def popen(self, cmd: list[str], **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        with self._lock:
            self._procs.add(proc)
        return proc

    def run(self, cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """subprocess.run(capture_output=True, text=True), killed with its children on time-out."""
        proc = self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            err += f"\n[killed after its {timeout} s time-out]"
        # What it left in its group goes now: once the group is empty its id may be reused
        # (pid_max can be 32768), and stop() must not kill a stranger's group.
        _kill_group(proc)
        with self._lock:
            self._procs.discard(proc)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def stop(self, keep_files: bool) -> Path | None:
        """End of the session: queued jobs never start, running processes are killed; the jobs'
        directory, if kept, is returned."""
        with self._lock:
            for future in self._futures.values():
                future.cancel()
            procs, self._procs = self._procs, set()
        for proc in procs:
            if proc.poll() is None:  # not reaped yet, so its group id is still its own
                _kill_group(proc)
        if self._root is not None and not keep_files:
            shutil.rmtree(self._root, ignore_errors=True)
            return None
        return self._root


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # an empty group: nothing left
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=30)


BACKGROUND = Background()
