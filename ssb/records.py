"""The record types that travel from the problem file to the trained student.

One vocabulary end to end: a Problem is sampled into
Rollouts, a Selection picks one correct and one incorrect Rollout, and the teacher's
accepted TeacherAnswer becomes a CuratedExample in the logit store. While a problem is
being curated, everything known about it is one ProblemState, whichever process or
service holds it. An evaluated problem (one model's answers to one benchmark problem and their
verdicts) is one EvalRecord (tables and files: ssb/eval_table.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssb.logits import TopK


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str
    source: str = ""


class Verdict(str, Enum):
    CORRECT = "correct"
    INCORRECT = "incorrect"
    NO_ANSWER = "no_answer"  # nothing extractable: an incorrect rollout without a final answer
    TIMEOUT = "timeout"  # the verifier gave up: counted as incorrect, never as correct

    @property
    def is_correct(self) -> bool:
        return self is Verdict.CORRECT


@dataclass
class Rollout:
    problem_id: str
    index: int
    text: str
    token_ids: list[int]
    final_answer: str | None = None
    verdict: Verdict = Verdict.NO_ANSWER


class SkipReason(str, Enum):
    NO_CORRECT = "no_correct_rollout"
    NO_INCORRECT = "no_incorrect_rollout"
    TEACHER_WRONG = "teacher_answer_wrong"
    TEACHER_NO_ANSWER = "teacher_no_answer"
    TEACHER_MENTIONS_HINTS = "teacher_mentions_hints"
    TEACHER_TRUNCATED = "teacher_truncated"
    PROMPT_TOO_LONG = "prompt_too_long"


@dataclass
class CuratedExample:
    """One accepted problem: what the student is trained on.

    `response_ids` are the ids the teacher generated, ending with its end-of-turn token;
    row t of `topk_ids`/`topk_logprobs` is the teacher's temperature-1 distribution over the
    token at response position t, sorted by descending log-prob, and `tail_logprob[t]` is the
    log of the probability mass outside those ids.
    """

    problem_id: str
    question: str
    answer: str
    student_prompt_ids: list[int]
    teacher_prompt_ids: list[int]
    response_ids: list[int]
    response_text: str
    topk_ids: list[list[int]]
    topk_logprobs: list[list[float]]
    tail_logprob: list[float]
    correct_rollout: str
    incorrect_rollout: str
    incorrect_answer: str | None
    model: str
    tokenizer: str
    config_hash: str
    seed: int
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    correct: Rollout
    incorrect: Rollout
    incorrect_answer: str | None
    incorrect_count: int = 1  # rollouts that gave the shown wrong answer (or, unanswered, none at all)


@dataclass
class TeacherAnswer:
    """One teacher sample: the accepted one carries its top-k distribution, a rejected one none."""

    text: str
    token_ids: list[int]
    finish_reason: str
    answer: str | None
    topk: TopK | None = None


@dataclass
class TeacherSample:
    """What the trace keeps of one teacher sample: its text and judgement, not its ids."""

    text: str
    finish_reason: str
    answer: str | None
    verdict: Verdict
    tokens: int
    rejection: SkipReason | None  # why it cannot be kept; None: acceptable
    chosen: bool = False  # the first acceptable sample: the one kept


@dataclass
class ProblemState:
    """One problem on its way through curation. `status` is None while it is still in play
    (and once kept); a skip reason ends it. The `engine_*` fields are accounting handed out
    by the engine that curated it: its busy time shared over the problems of a batch, and on
    the first problem it returned its start-up seconds and when (epoch seconds) it was up."""

    problem: Problem
    status: SkipReason | None = None
    rollouts: list[Rollout] | None = None  # None: never sampled
    rollout_finish: list[str] = field(default_factory=list)
    rollout_lengths: list[int] = field(default_factory=list)  # tokens of each rollout
    rollout_tokens: int = 0
    verified: bool = False
    selection: Selection | None = None
    student_prompt_ids: list[int] | None = None
    teacher_prompt_ids: list[int] | None = None
    teacher: TeacherAnswer | None = None  # the accepted answer, or the first rejected one
    teacher_samples: list[TeacherSample] = field(default_factory=list)  # every sample, judged
    teacher_tokens: int = 0  # over every teacher sample
    engine_seconds: float = 0.0
    rollout_engine_seconds: float = 0.0  # engine_seconds split by stage (ssb/cost.py StageClock)
    teacher_engine_seconds: float = 0.0
    verify_seconds: float = 0.0  # waiting on the verifier's child processes
    engine_load_seconds: float = 0.0
    engine_ready_at: float = 0.0

    @property
    def kept(self) -> bool:
        return self.status is None and self.teacher is not None and self.teacher.topk is not None


@dataclass
class EvalRecord:
    """One benchmark problem answered by the model evaluated under `label`: `eval.n` samples
    and/or one temperature-0 ("greedy") answer, each judged by the verifier, and the majority
    answer of the samples. A record goes to the engine actor with only the problem filled in
    and comes back answered. `generate_seconds` is this problem's share of its batch's engine
    time; `engine_load_seconds` is an engine's start-up, on the first record it answered only.
    `engine_model` is the model directory that engine loaded, `worker` its actor ("host:pid")."""

    benchmark: str
    label: str
    id: str
    question: str
    answer: str
    extra: int | None = None  # the index of the ExtraSet it was answered for; None: a benchmark's problem
    status: SkipReason | None = None  # PROMPT_TOO_LONG: never answered (scored as unanswered)
    prompt_tokens: int | None = None
    sample_texts: list[str] = field(default_factory=list)
    sample_answers: list[str | None] = field(default_factory=list)
    sample_verdicts: list[Verdict] = field(default_factory=list)
    sample_finish: list[str] = field(default_factory=list)
    sample_tokens: int = 0
    greedy_text: str | None = None
    greedy_answer: str | None = None
    greedy_verdict: Verdict | None = None  # None: no greedy answer was asked for
    greedy_finish: str | None = None
    greedy_tokens: int = 0
    maj_answer: str | None = None
    maj_correct: bool | None = None  # None: no majority vote was taken
    generate_seconds: float = 0.0
    engine_load_seconds: float = 0.0
    engine_model: str | None = None
    worker: str | None = None

    @property
    def tokens(self) -> int:
        return self.sample_tokens + self.greedy_tokens
