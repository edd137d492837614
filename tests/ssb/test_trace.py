"""Traces: committed with every store entry, checked like shards, read back by TraceIndex."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssb.manifest import FORMAT_WITHOUT_TRACES, ManifestError
from ssb.records import Problem, ProblemState, Rollout, Selection, SkipReason, TeacherSample, Verdict
from ssb.store import ChecksumError, LogitStore, StoreError
from ssb.trace import KEPT, ProblemTrace, RolloutTrace, TraceIndex, trace_of, trace_of_example
from tests.ssb.test_store import RUN, make_example


def skipped_trace(pid: str, reason: SkipReason, question: str = "What is 2+2?") -> ProblemTrace:
    rollouts = [RolloutTrace(i, f"so \\boxed{{{5 + i}}}", "stop", str(5 + i), "incorrect", 7) for i in range(4)]
    return ProblemTrace(pid, question, "4", "synthetic", reason.value, rollouts, rollout_tokens=28)


def test_every_problem_of_a_commit_has_its_trace_in_a_checked_file(tmp_path):
    rng = np.random.default_rng(0)
    store = LogitStore.create_or_resume(str(tmp_path / "run"), **RUN)
    kept = make_example("k1", rng)
    entry = store.append([kept], {"s1": SkipReason.NO_CORRECT.value},
                         [trace_of_example(kept), skipped_trace("s1", SkipReason.NO_CORRECT)])
    assert entry is not None and entry["trace"]["name"] == "trace-00000.parquet" and entry["trace"]["rows"] == 2
    index = TraceIndex(LogitStore.open(str(tmp_path / "run")))
    assert index.outcomes() == {KEPT: 1, "no_correct_rollout": 1}
    total, page = index.select(outcome="no_correct_rollout")
    assert total == 1 and page == [{"problem_id": "s1", "outcome": "no_correct_rollout", "question": "What is 2+2?"}]
    trace = index.get("s1")
    assert trace is not None and [r.answer for r in trace.rollouts] == ["5", "6", "7", "8"]
    assert index.get("k1").teacher[0].chosen and index.get("nope") is None
    assert index.select(q="2+2")[0] == 1 and index.select(q="K1")[0] == 0 and index.select(q="k1")[0] == 1


def test_a_commit_without_a_problems_trace_is_refused(tmp_path):
    store = LogitStore.create_or_resume(str(tmp_path / "run"), **RUN)
    with pytest.raises(ValueError, match="no trace for 1 of the problems"):
        store.append([], {"s1": "no_correct_rollout", "s2": "no_correct_rollout"},
                     [skipped_trace("s1", SkipReason.NO_CORRECT)])
    assert store.manifest["shards"] == []


def test_a_damaged_or_missing_trace_file_is_an_error_naming_it(tmp_path):
    store = LogitStore.create_or_resume(str(tmp_path / "run"), **RUN)
    store.append([], {"s1": "no_correct_rollout"}, [skipped_trace("s1", SkipReason.NO_CORRECT)])
    path = tmp_path / "run" / "trace-00000.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"trace file trace-00000\.parquet: sha256 differs"):
        TraceIndex(LogitStore.open(str(tmp_path / "run"), allow_empty=True))
    with pytest.raises(ChecksumError, match="trace file trace-00000.parquet"):
        LogitStore.open(str(tmp_path / "run"), allow_empty=True).verify()
    path.unlink()
    with pytest.raises(ChecksumError, match=r"trace file trace-00000\.parquet: missing from the store"):
        TraceIndex(LogitStore.open(str(tmp_path / "run"), allow_empty=True))


def test_a_manifest_entry_without_its_trace_is_malformed(tmp_path):
    store = LogitStore.create_or_resume(str(tmp_path / "run"), **RUN)
    store.append([], {"s1": "no_correct_rollout"}, [skipped_trace("s1", SkipReason.NO_CORRECT)])
    manifest_path = tmp_path / "run" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["shards"][0]["trace"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"shards\[0\]: missing its trace file"):
        LogitStore.open(str(tmp_path / "run"), allow_empty=True)


def test_a_store_from_before_traces_is_read_but_neither_resumed_nor_inspected(tmp_path):
    rng = np.random.default_rng(0)
    store = LogitStore.create_or_resume(str(tmp_path / "run"), **RUN)
    store.append([make_example("a", rng)])
    manifest_path = tmp_path / "run" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format"] = FORMAT_WITHOUT_TRACES
    for entry in manifest["shards"]:
        del entry["trace"]
    manifest_path.write_text(json.dumps(manifest))
    old = LogitStore.open(str(tmp_path / "run"))
    assert old.read_table().column("problem_id").to_pylist() == ["a"] and old.trace_files() is None
    with pytest.raises(StoreError, match="written before traces were kept"):
        TraceIndex(old)
    with pytest.raises(StoreError, match="not resumed"):
        LogitStore.create_or_resume(str(tmp_path / "run"), **RUN)


def test_trace_of_a_curated_state_keeps_every_rollout_and_teacher_sample():
    p = Problem("p1", "What is 3+4?", "7", "synthetic")
    rollouts = [Rollout("p1", i, text, [], answer, verdict) for i, (text, answer, verdict) in enumerate([
        ("3+4=7 \\boxed{7}", "7", Verdict.CORRECT), ("\\boxed{8}", "8", Verdict.INCORRECT),
        ("\\boxed{8}", "8", Verdict.INCORRECT), ("I am not sure", None, Verdict.NO_ANSWER)])]
    state = ProblemState(p, rollouts=rollouts, rollout_finish=["stop"] * 3 + ["length"],
                         rollout_lengths=[9, 4, 4, 96], rollout_tokens=113, verified=True,
                         selection=Selection(rollouts[0], rollouts[2], "8", 2), teacher_tokens=30,
                         status=SkipReason.TEACHER_WRONG)
    state.teacher_samples = [TeacherSample("\\boxed{8}", "stop", "8", Verdict.INCORRECT, 10, SkipReason.TEACHER_WRONG),
                             TeacherSample("as the wrong solution", "length", None, Verdict.NO_ANSWER, 20,
                                           SkipReason.TEACHER_TRUNCATED)]
    trace = trace_of(state)
    assert trace.outcome == "teacher_answer_wrong" and not trace.kept
    assert [(r.finish_reason, r.answer, r.verdict, r.tokens) for r in trace.rollouts] == [
        ("stop", "7", "correct", 9), ("stop", "8", "incorrect", 4), ("stop", "8", "incorrect", 4),
        ("length", None, "no_answer", 96)]
    assert (trace.correct_index, trace.incorrect_index, trace.incorrect_answer, trace.incorrect_count) == (0, 2, "8", 2)
    assert [(s.rejection, s.chosen) for s in trace.teacher] == [("teacher_answer_wrong", False),
                                                                ("teacher_truncated", False)]
