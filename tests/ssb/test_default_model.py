"""The embedded default model's one-time conversion, with two jobs starting at once."""

from __future__ import annotations

import fcntl
import threading

from ssb import default_model


def test_a_second_job_waits_for_the_conversion_under_way_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SSB_CACHE", str(tmp_path))
    target = default_model.default_model_dir()
    target.parent.mkdir(parents=True)
    converted: list[str] = []
    monkeypatch.setattr(default_model, "_convert", lambda t: converted.append(str(t)) or t)
    result: list = []
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first job, converting
        waiter = threading.Thread(target=lambda: result.append(default_model.ensure_default_model()))
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and not result  # waits rather than converting beside it
        target.mkdir()
        (target / default_model._MARKER).write_text("done\n")
    waiter.join(10)
    assert result == [target] and converted == []


def test_the_first_job_converts_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SSB_CACHE", str(tmp_path))
    calls: list = []

    def convert(target):
        calls.append(target)
        target.mkdir()
        (target / default_model._MARKER).write_text("done\n")
        return target

    monkeypatch.setattr(default_model, "_convert", convert)
    first = default_model.ensure_default_model()
    assert default_model.ensure_default_model() == first and calls == [first]
