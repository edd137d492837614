"""tests/background.py: jobs run in the order asked, a queued job asked for runs in the asking
thread, a job's exception reaches the test that asks, and stopping kills what jobs started."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from tests.background import Background


def test_jobs_run_in_order_on_one_thread_and_a_queued_one_runs_where_it_is_asked_for():
    bg = Background()
    release, ran = threading.Event(), []
    bg.job("first")(lambda: (release.wait(10), ran.append(("first", threading.current_thread().name)))[1])
    bg.job("second")(lambda: ran.append(("second", threading.current_thread().name)) or 2)
    bg.job("third")(lambda: ran.append(("third", threading.current_thread().name)) or 3)
    bg.start(["first", "second", "third", "first"])
    assert bg.result("third") == 3  # queued behind "first": runs here while "first" waits
    release.set()
    bg.result("first")
    assert bg.result("second") == 2
    assert ran[0] == ("third", threading.current_thread().name)
    assert [name for name, _ in ran[1:]] == ["first", "second"]
    assert {thread for _, thread in ran[1:]} == {"background-jobs"}


def test_a_jobs_exception_is_raised_to_each_test_that_asks():
    bg = Background()

    @bg.job("broken")
    def broken() -> None:
        assert 1 + 1 == 3, "the job's own message"

    bg.start(["broken"])
    for _ in range(2):
        with pytest.raises(AssertionError, match="the job's own message"):
            bg.result("broken")


def test_a_job_never_asked_for_at_start_runs_when_asked():
    bg = Background()
    bg.job("late")(lambda: "value")
    assert "late" in bg and "other" not in bg
    assert bg.result("late") == "value"
    kept = bg.tmp_path("late")
    assert bg.stop(keep_files=True) == kept.parent and kept.is_dir()  # a failed session keeps them
    bg.stop(keep_files=False)
    assert not kept.parent.exists()


def test_stop_kills_a_jobs_processes_with_their_children_and_removes_its_files():
    bg = Background()
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); " \
             "print('started', flush=True); time.sleep(60)"
    bg.job("sleeper")(lambda: bg.run([sys.executable, "-c", script], timeout=120))
    bg.start(["sleeper"])
    tmp = bg.tmp_path("sleeper")
    deadline = time.monotonic() + 30
    while not bg._procs:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    import psutil

    parent = psutil.Process(next(iter(bg._procs)).pid)
    while not parent.children():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = parent.children()[0]
    began = time.monotonic()
    assert bg.stop(keep_files=False) is None
    done = bg.result("sleeper")
    assert done.returncode == -9 and time.monotonic() - began < 30
    child.wait(10)
    assert not child.is_running() and not tmp.exists()


def test_what_a_finished_command_left_in_its_session_is_killed_and_the_command_forgotten():
    import psutil

    bg = Background()
    script = ("import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
              "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)")
    done = bg.run([sys.executable, "-c", script], timeout=60)
    assert done.returncode == 0
    left = psutil.Process(int(done.stdout))
    left.wait(10)  # SIGKILLed with its session, not after 60 s
    assert not bg._procs
