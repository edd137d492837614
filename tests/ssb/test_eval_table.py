"""EvalRecords through their one conversion (ssb/eval_table.py): Arrow tables, JSON-lines files,
and the files evaluations wrote before the records existed."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from ssb.eval_table import EVAL_SCHEMA, from_row, from_table, read_records, to_row, to_table, write_records
from ssb.records import EvalRecord, SkipReason, Verdict
from ssb.scoring import ProblemOutcome


def answered() -> EvalRecord:
    return EvalRecord("svamp", "ssb", "p1", "1 + 2?", "3", prompt_tokens=40,
                      sample_texts=["\\boxed{3}", "\\boxed{4}", "hmm"], sample_answers=["3", "4", None],
                      sample_verdicts=[Verdict.CORRECT, Verdict.INCORRECT, Verdict.NO_ANSWER],
                      sample_finish=["stop", "stop", "length"], sample_tokens=30,
                      greedy_text="\\boxed{3}", greedy_answer="3", greedy_verdict=Verdict.CORRECT,
                      greedy_finish="stop", greedy_tokens=9, maj_answer="3", maj_correct=True,
                      generate_seconds=0.25, engine_load_seconds=12.0, engine_model="/m", worker="h:1")


def extra_too_long() -> EvalRecord:
    """A zero-shot problem (ExtraSet 0) whose prompt did not fit: no answers at all."""
    return EvalRecord("curated_problems", "base", "p2", "long?", "7", extra=0, status=SkipReason.PROMPT_TOO_LONG,
                      prompt_tokens=5000, greedy_verdict=Verdict.NO_ANSWER, engine_model="/m", worker="h:1")


def unanswered() -> EvalRecord:
    """What the driver sends the engine actor."""
    return EvalRecord("svamp", "base", "p3", "2 + 2?", "4")


RECORDS = [answered(), extra_too_long(), unanswered()]


def test_the_schema_has_a_column_for_every_field():
    assert sorted(EVAL_SCHEMA.names) == sorted(f.name for f in fields(EvalRecord))


def test_records_round_trip_through_an_arrow_table():
    table = to_table(RECORDS)
    assert table.schema == EVAL_SCHEMA and table.num_rows == 3
    assert from_table(table) == RECORDS


def test_records_round_trip_through_a_jsonl_file(tmp_path):
    path = write_records(tmp_path / "eval" / "ssb" / "svamp.jsonl", RECORDS)
    assert read_records(path) == RECORDS
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    # the file keeps the evaluation's column names; enums as their values, no sentinels
    assert rows[0]["greedy_verdict"] == "correct" and rows[0]["sample_verdicts"][2] == "no_answer"
    assert rows[0]["extra"] is None and rows[0]["status"] is None
    assert rows[1]["extra"] == 0 and rows[1]["status"] == "prompt_too_long"


def test_a_file_written_before_the_records_is_read_with_none_for_its_sentinels(tmp_path):
    """Old rows: extra -1 for a benchmark's problem, status "" for an answered one, and no
    engine_model, worker or timings yet."""
    old = {**to_row(answered()), "extra": -1, "status": ""}
    for column in ("engine_model", "worker", "generate_seconds", "engine_load_seconds", "prompt_tokens"):
        del old[column]
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (record,) = read_records(path)
    assert record.extra is None and record.status is None
    assert (record.engine_model, record.worker, record.generate_seconds, record.prompt_tokens) == (None, None, 0.0, None)
    assert record.greedy_verdict is Verdict.CORRECT and record.maj_correct is True and record.tokens == 39
    assert ProblemOutcome.of(record) == ProblemOutcome(samples=[True, False, False], greedy=True, majority=True,
                                                       answered=3)


def test_a_missing_file_has_no_records(tmp_path):
    assert read_records(tmp_path / "nowhere.jsonl") == []


@pytest.mark.parametrize("change, message", [
    ({"id": None}, "without an id"),
    ({"greedy_verdict": "maybe"}, "'maybe' is not a valid Verdict"),
    ({"status": "lost"}, "'lost' is not a valid SkipReason"),
])
def test_a_malformed_row_is_refused_with_what_is_wrong(change, message):
    with pytest.raises(ValueError, match=message):
        from_row({**to_row(answered()), **change})
