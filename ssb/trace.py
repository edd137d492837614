"""Each curated problem's path, kept or skipped: what the model wrote and why SSB decided.

A ProblemTrace holds the problem, every rollout (text, finish reason, extracted answer,
verdict, tokens), the pair shown to the teacher, every teacher sample with why it was
accepted or rejected, the skip reason and the problem's tokens and engine seconds. No
log-probs: the kept example's distribution is in its shard, and rejected text has none.

The store commits a trace file (`trace-NNNNN.parquet`) with every manifest entry, holding
one row per problem of that entry, under the same size/sha256/row checks as a shard
(ssb/store.py). `TraceIndex` reads them back for the inspector: a light index of every
problem (id, outcome, question) for listing and filtering, and whole traces on demand.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from ssb.records import CuratedExample, ProblemState, SkipReason

if TYPE_CHECKING:
    from ssb.store import LogitStore

KEPT = "kept"
OUTCOMES = (KEPT, *(r.value for r in SkipReason))


@dataclass
class RolloutTrace:
    index: int
    text: str
    finish_reason: str
    answer: str | None
    verdict: str  # a Verdict's value
    tokens: int


@dataclass
class TeacherSampleTrace:
    index: int
    text: str
    finish_reason: str
    answer: str | None
    verdict: str
    tokens: int
    rejection: str | None  # why this sample could not be kept (a SkipReason's value); None: acceptable
    chosen: bool  # the sample kept: the first acceptable one


@dataclass
class ProblemTrace:
    problem_id: str
    question: str
    answer: str
    source: str
    outcome: str  # KEPT or a SkipReason's value
    rollouts: list[RolloutTrace] = field(default_factory=list)  # none: never sampled
    correct_index: int | None = None
    incorrect_index: int | None = None
    incorrect_answer: str | None = None
    incorrect_count: int = 0  # rollouts whose answer is the shown wrong answer (or none, when unanswered)
    teacher: list[TeacherSampleTrace] = field(default_factory=list)
    rollout_tokens: int = 0
    teacher_tokens: int = 0
    engine_seconds: float = 0.0

    @property
    def kept(self) -> bool:
        return self.outcome == KEPT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trace_of(state: ProblemState) -> ProblemTrace:
    """The trace of a problem that has finished curation (kept or skipped)."""
    p, pair = state.problem, state.selection
    rollouts = [RolloutTrace(r.index, r.text, state.rollout_finish[r.index] if r.index < len(state.rollout_finish)
                             else "", r.final_answer, r.verdict.value,
                             state.rollout_lengths[r.index] if r.index < len(state.rollout_lengths) else 0)
                for r in state.rollouts or []]
    teacher = [TeacherSampleTrace(i, s.text, s.finish_reason, s.answer, s.verdict.value if s.verdict else "",
                                  s.tokens, s.rejection.value if s.rejection else None, s.chosen)
               for i, s in enumerate(state.teacher_samples)]
    return ProblemTrace(
        problem_id=p.id, question=p.question, answer=p.answer, source=p.source or "",
        outcome=KEPT if state.kept else (state.status.value if state.status else "unfinished"),
        rollouts=rollouts,
        correct_index=pair.correct.index if pair else None, incorrect_index=pair.incorrect.index if pair else None,
        incorrect_answer=pair.incorrect_answer if pair else None, incorrect_count=pair.incorrect_count if pair else 0,
        teacher=teacher, rollout_tokens=state.rollout_tokens, teacher_tokens=state.teacher_tokens,
        engine_seconds=state.engine_seconds)


def trace_of_example(ex: CuratedExample) -> ProblemTrace:
    """What a kept example itself tells of its path: the pair shown and the accepted answer."""
    verdicts = json.loads(ex.meta.get("rollout_verdicts", "[]"))
    answers = json.loads(ex.meta.get("rollout_answers", "[]"))
    rollouts = [RolloutTrace(i, "", "", a, v, 0) for i, (v, a) in enumerate(zip(verdicts, answers))]
    teacher = [TeacherSampleTrace(0, ex.response_text, "stop", ex.meta.get("teacher_answer") or None, "correct",
                                  len(ex.response_ids), None, True)]
    return ProblemTrace(ex.problem_id, ex.question, ex.answer, ex.meta.get("source", ""), KEPT, rollouts,
                        incorrect_answer=ex.incorrect_answer, teacher=teacher,
                        teacher_tokens=int(ex.meta.get("teacher_tokens_sampled", len(ex.response_ids))))


_SAMPLE = [("index", pa.int32()), ("text", pa.string()), ("finish_reason", pa.string()),
           ("answer", pa.string()), ("verdict", pa.string()), ("tokens", pa.int32())]
SCHEMA = pa.schema([
    ("problem_id", pa.string()), ("outcome", pa.string()), ("question", pa.string()), ("answer", pa.string()),
    ("source", pa.string()),
    ("rollouts", pa.list_(pa.struct(_SAMPLE))),
    ("correct_index", pa.int32()), ("incorrect_index", pa.int32()), ("incorrect_answer", pa.string()),
    ("incorrect_count", pa.int32()),
    ("teacher", pa.list_(pa.struct([*_SAMPLE, ("rejection", pa.string()), ("chosen", pa.bool_())]))),
    ("rollout_tokens", pa.int64()), ("teacher_tokens", pa.int64()), ("engine_seconds", pa.float64()),
])
# The columns the problem list reads: small next to the rollouts' and teacher's text.
INDEX_COLUMNS = ["problem_id", "outcome", "question"]
# Rollout texts repeat their few-shot phrasing across problems; zstd takes most of it.
WRITE_OPTIONS: dict[str, Any] = dict(compression="zstd", compression_level=3, write_statistics=False,
                                     use_dictionary=["outcome", "source"])


def to_table(traces: Sequence[ProblemTrace]) -> pa.Table:
    return pa.Table.from_pylist([t.to_dict() for t in traces], schema=SCHEMA)


def from_row(row: dict[str, Any]) -> ProblemTrace:
    return ProblemTrace(**{**row, "source": row["source"] or "",
                           "rollouts": [RolloutTrace(**r) for r in row["rollouts"] or []],
                           "teacher": [TeacherSampleTrace(**s) for s in row["teacher"] or []]})


class TraceIndex:
    """Every problem of a store's traces, for listing and lookup.

    Built once per manifest: the light columns of every trace file (verified against the
    manifest as it is read) concatenated, with the entry each problem came from. A damaged or
    missing trace file raises ChecksumError naming it; a store made before traces raises
    StoreError saying so."""

    def __init__(self, store: LogitStore):
        from ssb.manifest import StoreError

        self.store = store
        files = store.trace_files()
        if files is None:
            raise StoreError(f"store at {store.uri} was written before traces were kept "
                             f"({store.manifest['format']}): curate it again to inspect it")
        self._files = files
        tables, entry_of = [], []
        for i, trace in enumerate(files):
            table = trace.read_table(INDEX_COLUMNS)
            tables.append(table)
            entry_of += [i] * table.num_rows
        self.table = (pa.concat_tables(tables) if tables else SCHEMA.empty_table().select(INDEX_COLUMNS)) \
            .append_column("entry", pa.array(entry_of, pa.int32()))
        ids = self.table.column("problem_id").to_pylist()
        self._row_of = {pid: i for i, pid in enumerate(ids)}
        self._lower_questions: pa.ChunkedArray | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    def outcomes(self) -> dict[str, int]:
        return dict(Counter(self.table.column("outcome").to_pylist()))

    def select(self, outcome: str | Sequence[str] | None = None, q: str | None = None, offset: int = 0,
               limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
        """(matching count, one page of {problem_id, outcome, question}) in commit order, of the
        problems with `outcome` (or any of several) whose question or id contains `q`."""
        mask = None
        if outcome:
            wanted = [outcome] if isinstance(outcome, str) else list(outcome)
            mask = pc.is_in(self.table.column("outcome"), value_set=pa.array(wanted, pa.string()))
        if q:
            if self._lower_questions is None:
                self._lower_questions = pc.utf8_lower(self.table.column("question"))
            hit = pc.or_(pc.match_substring(self._lower_questions, q.lower()),
                         pc.match_substring(self.table.column("problem_id"), q))
            mask = hit if mask is None else pc.and_(mask, hit)
        table = self.table if mask is None else self.table.filter(mask)
        page = table.slice(offset, max(0, limit)).select(INDEX_COLUMNS).to_pylist()
        return table.num_rows, page

    def get(self, problem_id: str) -> ProblemTrace | None:
        row = self._row_of.get(problem_id)
        if row is None:
            return None
        trace_file = self._files[self.table.column("entry")[row].as_py()]
        table = trace_file.read_table()
        hits = table.filter(pc.equal(table.column("problem_id"), problem_id)).to_pylist()
        return from_row(hits[0]) if hits else None


def dumps(trace: ProblemTrace) -> str:
    return json.dumps(trace.to_dict(), ensure_ascii=False)


SPEND_COLUMNS = ["outcome", "rollout_tokens", "teacher_tokens", "engine_seconds"]


def spent_per_problem(store: LogitStore) -> list[tuple[str, int, float]]:
    """(outcome, rollout + teacher tokens, engine seconds) of every problem the store's traces
    hold, over every run that wrote the store: what budgets count and what an estimate projects
    from. Empty for a store made before traces."""
    rows: list[tuple[str, int, float]] = []
    for trace in store.trace_files() or []:
        table = trace.read_table(SPEND_COLUMNS).to_pydict()
        rows += [(outcome, int(r) + int(t), float(s)) for outcome, r, t, s in
                 zip(table["outcome"], table["rollout_tokens"], table["teacher_tokens"], table["engine_seconds"])]
    return rows
