"""ProblemStates as Arrow tables: the one conversion, where they cross a Ray Data boundary.

Problems enter Ray Data as plain rows (id, question, answer, source); an engine actor returns
its batch's ProblemStates as one table of `STATE_SCHEMA`, and `to_states` gives the driver
(or the next stage, with `engine.colocate: false`) the same dataclasses back. The top-k arrays
travel as [T][k] lists and come back as the [T, k] arrays they were.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ssb.logits import TopK
from ssb.records import Problem, ProblemState, Rollout, Selection, SkipReason, TeacherAnswer, TeacherSample, Verdict

_strings = pa.list_(pa.string())
_ids = pa.list_(pa.int32())

STATE_SCHEMA = pa.schema([
    ("id", pa.string()), ("question", pa.string()), ("answer", pa.string()), ("source", pa.string()),
    ("status", pa.string()),
    ("rollout_texts", _strings), ("rollout_answers", _strings), ("rollout_verdicts", _strings),
    ("rollout_finish", _strings), ("rollout_lengths", _ids), ("rollout_tokens", pa.int64()),
    ("verified", pa.bool_()),
    ("correct_index", pa.int32()), ("incorrect_index", pa.int32()), ("incorrect_answer", pa.string()),
    ("incorrect_count", pa.int32()),
    ("student_prompt_ids", _ids), ("teacher_prompt_ids", _ids),
    ("teacher_text", pa.string()), ("teacher_ids", _ids), ("teacher_finish", pa.string()),
    ("teacher_answer", pa.string()),
    ("teacher_samples", pa.list_(pa.struct([
        ("text", pa.string()), ("finish_reason", pa.string()), ("answer", pa.string()), ("verdict", pa.string()),
        ("tokens", pa.int32()), ("rejection", pa.string()), ("chosen", pa.bool_())]))),
    ("topk_ids", pa.list_(_ids)), ("topk_logprobs", pa.list_(pa.list_(pa.float32()))),
    ("tail_logprob", pa.list_(pa.float32())),
    ("teacher_tokens", pa.int64()), ("engine_seconds", pa.float64()), ("engine_load_seconds", pa.float64()),
    ("rollout_engine_seconds", pa.float64()), ("teacher_engine_seconds", pa.float64()), ("verify_seconds", pa.float64()),
    ("engine_ready_at", pa.float64()),
])


def problems_of(table: pa.Table) -> list[Problem]:
    """The problems of an input batch (rows straight from the source)."""
    return [Problem(r["id"], r["question"], r["answer"], r.get("source") or "") for r in table.to_pylist()]


def _row(s: ProblemState) -> dict[str, Any]:
    p, rollouts, pair, t = s.problem, s.rollouts, s.selection, s.teacher
    topk = t.topk if t is not None else None
    return {
        "id": p.id, "question": p.question, "answer": p.answer, "source": p.source,
        "status": s.status.value if s.status is not None else "",
        "rollout_texts": None if rollouts is None else [r.text for r in rollouts],
        "rollout_answers": None if rollouts is None else [r.final_answer for r in rollouts],
        "rollout_verdicts": None if rollouts is None else [r.verdict.value for r in rollouts],
        "rollout_finish": s.rollout_finish, "rollout_lengths": s.rollout_lengths,
        "rollout_tokens": s.rollout_tokens, "verified": s.verified,
        "correct_index": pair.correct.index if pair else None,
        "incorrect_index": pair.incorrect.index if pair else None,
        "incorrect_answer": pair.incorrect_answer if pair else None,
        "incorrect_count": pair.incorrect_count if pair else None,
        "student_prompt_ids": s.student_prompt_ids, "teacher_prompt_ids": s.teacher_prompt_ids,
        "teacher_text": t.text if t else None, "teacher_ids": t.token_ids if t else None,
        "teacher_finish": t.finish_reason if t else None, "teacher_answer": t.answer if t else None,
        "teacher_samples": [{**asdict(x), "verdict": x.verdict.value,
                             "rejection": x.rejection.value if x.rejection else None} for x in s.teacher_samples],
        "topk_ids": topk.ids.tolist() if topk else None,
        "topk_logprobs": topk.logprobs.tolist() if topk else None,
        "tail_logprob": topk.tail_logprob.tolist() if topk else None,
        "teacher_tokens": s.teacher_tokens, "engine_seconds": s.engine_seconds,
        "rollout_engine_seconds": s.rollout_engine_seconds, "teacher_engine_seconds": s.teacher_engine_seconds,
        "verify_seconds": s.verify_seconds,
        "engine_load_seconds": s.engine_load_seconds, "engine_ready_at": s.engine_ready_at,
    }


def to_table(states: Sequence[ProblemState]) -> pa.Table:
    return pa.Table.from_pylist([_row(s) for s in states], schema=STATE_SCHEMA)


def _state(r: dict[str, Any]) -> ProblemState:
    p = Problem(r["id"], r["question"], r["answer"], r["source"] or "")
    rollouts = None
    if r["rollout_texts"] is not None:
        verdicts = r["rollout_verdicts"] or [Verdict.NO_ANSWER.value] * len(r["rollout_texts"])
        answers = r["rollout_answers"] or [None] * len(r["rollout_texts"])
        rollouts = [Rollout(p.id, i, text, [], a, Verdict(v))
                    for i, (text, a, v) in enumerate(zip(r["rollout_texts"], answers, verdicts))]
    pair = None
    if rollouts is not None and r["correct_index"] is not None:
        pair = Selection(rollouts[r["correct_index"]], rollouts[r["incorrect_index"]], r["incorrect_answer"],
                         r["incorrect_count"] or 0)
    teacher = None
    if r["teacher_text"] is not None:
        topk = None
        if r["topk_ids"] is not None:
            shape = (len(r["topk_ids"]), len(r["topk_ids"][0]) if r["topk_ids"] else 0)
            topk = TopK(ids=np.asarray(r["topk_ids"], np.int32).reshape(shape),
                        logprobs=np.asarray(r["topk_logprobs"], np.float32).reshape(shape),
                        tail_logprob=np.asarray(r["tail_logprob"], np.float32))
        teacher = TeacherAnswer(r["teacher_text"], list(r["teacher_ids"] or []), r["teacher_finish"] or "",
                                r["teacher_answer"], topk)
    return ProblemState(
        problem=p, status=SkipReason(r["status"]) if r["status"] else None, rollouts=rollouts,
        rollout_finish=list(r["rollout_finish"] or []), rollout_lengths=list(r["rollout_lengths"] or []),
        rollout_tokens=r["rollout_tokens"] or 0,
        teacher_samples=[TeacherSample(**{**x, "verdict": Verdict(x["verdict"]),
                                          "rejection": SkipReason(x["rejection"]) if x["rejection"] else None})
                         for x in r["teacher_samples"] or []],
        verified=bool(r["verified"]), selection=pair, student_prompt_ids=r["student_prompt_ids"],
        teacher_prompt_ids=r["teacher_prompt_ids"], teacher=teacher, teacher_tokens=r["teacher_tokens"] or 0,
        engine_seconds=r["engine_seconds"] or 0.0, engine_load_seconds=r["engine_load_seconds"] or 0.0,
        rollout_engine_seconds=r["rollout_engine_seconds"] or 0.0,
        teacher_engine_seconds=r["teacher_engine_seconds"] or 0.0, verify_seconds=r["verify_seconds"] or 0.0,
        engine_ready_at=r["engine_ready_at"] or 0.0)


def to_states(table: pa.Table) -> list[ProblemState]:
    return [_state(r) for r in table.to_pylist()]
