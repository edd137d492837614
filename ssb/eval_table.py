"""EvalRecords as rows, Arrow tables and JSON-lines files: the one conversion.

The evaluation sends its problems to the engine actors as a table of `EVAL_SCHEMA` and gets
the answered records back the same way; the driver writes each label's and benchmark's records
to <run_dir>/eval/<label>/<benchmark>.jsonl, one `to_row` per line, and the run view and the
diagnostics read them back with `read_records`. A row's columns are the record's fields; enums
travel as their values.

Files written before the records existed stay readable: there `extra` was -1 for a benchmark's
problem and `status` "" for an answered one (both None now), and columns added since (the
engine's model and worker, its timings) may be missing (their defaults). Only `id` is required.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Any

import pyarrow as pa

from ssb.layout import read_jsonl
from ssb.records import EvalRecord, SkipReason, Verdict

_strings = pa.list_(pa.string())

EVAL_SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("label", pa.string()), ("id", pa.string()), ("question", pa.string()),
    ("answer", pa.string()), ("status", pa.string()), ("prompt_tokens", pa.int64()),
    ("sample_texts", _strings), ("sample_answers", _strings), ("sample_verdicts", _strings),
    ("sample_finish", _strings), ("sample_tokens", pa.int64()),
    ("greedy_text", pa.string()), ("greedy_answer", pa.string()), ("greedy_verdict", pa.string()),
    ("greedy_finish", pa.string()), ("greedy_tokens", pa.int64()),
    ("maj_answer", pa.string()), ("maj_correct", pa.bool_()),
    ("generate_seconds", pa.float64()), ("engine_load_seconds", pa.float64()),
    ("extra", pa.int64()), ("engine_model", pa.string()), ("worker", pa.string()),
])

_FIELDS = {f.name for f in fields(EvalRecord)}
_TEXTS = [f.name for f in fields(EvalRecord) if f.default is MISSING and f.default_factory is MISSING]


def to_row(record: EvalRecord) -> dict[str, Any]:
    row = asdict(record)
    row["status"] = record.status.value if record.status is not None else None
    row["sample_verdicts"] = [v.value for v in record.sample_verdicts]
    row["greedy_verdict"] = record.greedy_verdict.value if record.greedy_verdict is not None else None
    return row


def from_row(row: Mapping[str, Any]) -> EvalRecord:
    """The record of a row (a table's, a file's line, old ones included: see the module doc).
    Columns that are not fields are ignored; a null column takes the field's default."""
    values = {k: v for k, v in row.items() if k in _FIELDS and v is not None}
    if values.get("id") is None:
        raise ValueError(f"evaluation row without an id: {sorted(row)}")
    for name in _TEXTS:  # the file's path names its label and benchmark: a row may leave them out
        values.setdefault(name, "")
    if values.get("extra", 0) < 0:
        del values["extra"]  # written before EvalRecord: -1 meant "a benchmark's problem"
    if status := values.pop("status", None):
        values["status"] = SkipReason(status)
    values["sample_verdicts"] = [Verdict(v) for v in values.get("sample_verdicts", [])]
    if "greedy_verdict" in values:
        values["greedy_verdict"] = Verdict(values["greedy_verdict"])
    return EvalRecord(**values)


def to_table(records: Sequence[EvalRecord]) -> pa.Table:
    return pa.Table.from_pylist([to_row(r) for r in records], schema=EVAL_SCHEMA)


def from_table(table: pa.Table) -> list[EvalRecord]:
    return [from_row(r) for r in table.to_pylist()]


def write_records(path: Path, records: Iterable[EvalRecord]) -> Path:
    """One JSON line per record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(to_row(r)) + "\n")
    return path


def read_records(path: Path) -> list[EvalRecord]:
    """The records of a file `write_records` (or an older evaluation) wrote; none when it is missing."""
    return [from_row(row) for row in read_jsonl(path)]
