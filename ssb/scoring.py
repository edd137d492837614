"""Scoring a benchmark from per-problem verdicts: greedy accuracy, pass@1, maj@k, and 95% intervals.

Pure Python: the evaluation job (pipelines/evaluate.py) generates and verifies, and hands
each problem's outcome (`ProblemOutcome.of` its EvalRecord) here.

- greedy accuracy: share of problems whose temperature-0 answer verifies. Interval: Wilson.
- pass@1: the mean over problems of the share of the n samples that verify (an unbiased
  pass@1 estimate from n samples). Interval: normal approximation over the per-problem
  means (mean ± 1.96·sd/√P). Samples of one problem are correlated, so the problem, not
  the sample, is the unit; counting n·P samples as independent would make the interval too
  narrow. When every problem has the same mean (all 0, all 1) the sample sd is 0 and the
  normal interval would collapse to a point: then the Wilson interval over P problems is used.
- maj@k: the n sampled answers are grouped by equivalence (the verifier's, or string
  equality); the largest group wins, ties go to the group whose first member came first;
  the problem counts as solved when that group's first member verified. Unanswered samples
  do not vote; a problem with no answer at all is unsolved. Interval: Wilson over problems.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ssb.records import EvalRecord, Verdict

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n is 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The interval holds p; in floating point its bound at p = 0 can come out as 5.6e-17 (n=6),
    # and a plot's error bar below the bar would then be negative.
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def mean_ci(values: Sequence[float], z: float = Z95) -> tuple[float, float]:
    """Normal-approximation interval for the mean of per-problem scores in [0, 1] (see module doc)."""
    p = len(values)
    if p == 0:
        return (0.0, 1.0)
    mean = sum(values) / p
    var = sum((v - mean) ** 2 for v in values) / (p - 1) if p > 1 else 0.0
    if var == 0.0:
        return wilson(round(mean * p), p, z)
    half = z * math.sqrt(var / p)
    return (max(0.0, mean - half), min(1.0, mean + half))


def _same_string(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def majority_vote(answers: Sequence[str | None], same: Callable[[str, str], bool] | None = None) -> int | None:
    """Index of the representative (first member) of the largest group of equivalent answers.

    Ties go to the group whose first member comes first; None answers do not vote; None when
    no sample has an answer. `same` defaults to string equality up to whitespace.
    """
    same = same or _same_string
    groups: list[list[int]] = []  # indices of equivalent answers; groups[i][0] is the representative
    for i, answer in enumerate(answers):
        if answer is None or not answer.strip():
            continue
        for group in groups:
            rep = answers[group[0]]
            assert rep is not None
            if _same_string(answer, rep) or same(answer, rep):
                group.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(groups, key=len)  # max keeps the first of equal-length groups: the earliest
    return best[0]


@dataclass
class ProblemOutcome:
    """One problem's verdicts: `samples` are the n sampled answers' correctness."""

    samples: list[bool] = field(default_factory=list)
    greedy: bool | None = None  # None: no greedy sample was drawn
    majority: bool | None = None  # None: maj@k not computed
    answered: int = 0  # samples with an extractable final answer

    @classmethod
    def of(cls, record: EvalRecord) -> ProblemOutcome:
        """The outcome of an evaluated problem; `answered` counts its greedy answer too."""
        greedy = None if record.greedy_verdict is None else record.greedy_verdict is Verdict.CORRECT
        answered = sum(a is not None for a in record.sample_answers) + (record.greedy_answer is not None)
        return cls(samples=[v is Verdict.CORRECT for v in record.sample_verdicts], greedy=greedy,
                   majority=record.maj_correct, answered=answered)

    @property
    def pass1(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else 0.0


@dataclass
class BenchmarkResult:
    """What a report needs about one benchmark under one model (label: "base", "ssb", ...).

    `accuracy` is greedy accuracy when greedy samples were drawn, else pass@1; `metric`
    says which. The `data_*` fields say which problems were evaluated (None in results written
    before they were recorded): `data_file`, the file read (a path relative to the checkout:
    data/svamp/test.jsonl) or the hub dataset or synthetic settings; `data_sha256`, the file's
    bytes' sha256 (None for the hub and the synthetic set); `data_problems` and
    `data_problems_sha256`, the whole set's problem count and normalised digest
    (ssb.datasets.problems_digest), of which the first `n` were evaluated.
    """

    benchmark: str
    label: str
    n: int  # problems
    samples_per_problem: int
    accuracy: float
    ci95: tuple[float, float]
    metric: str  # "greedy" | "pass@1"
    greedy: float | None = None
    greedy_ci95: tuple[float, float] | None = None
    pass1: float | None = None
    pass1_ci95: tuple[float, float] | None = None
    maj: float | None = None
    maj_ci95: tuple[float, float] | None = None
    answered_share: float = 0.0  # samples (greedy included) with an extractable answer
    tokens: int = 0
    seconds: float = 0.0
    data_file: str | None = None
    data_sha256: str | None = None
    data_problems: int | None = None
    data_problems_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchmarkResult:
        d = dict(d)
        for key in ("ci95", "greedy_ci95", "pass1_ci95", "maj_ci95"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def line(self) -> str:
        lo, hi = self.ci95
        out = f"{self.label:<8} {self.benchmark:<20} {self.metric:<7} {100 * self.accuracy:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]  n={self.n}"
        if self.pass1 is not None:
            out += f"  pass@1 {100 * self.pass1:.1f}%"
        if self.maj is not None:
            out += f"  maj@{self.samples_per_problem} {100 * self.maj:.1f}%"
        return out


def score(benchmark: str, label: str, outcomes: Sequence[ProblemOutcome], *, tokens: int = 0,
          seconds: float = 0.0) -> BenchmarkResult:
    p = len(outcomes)
    k = max((len(o.samples) for o in outcomes), default=0)
    greedy = pass1 = maj = None
    greedy_ci = pass1_ci = maj_ci = None
    if outcomes and all(o.greedy is not None for o in outcomes):
        hits = sum(bool(o.greedy) for o in outcomes)
        greedy, greedy_ci = hits / p, wilson(hits, p)
    if k > 0:
        means = [o.pass1 for o in outcomes]
        pass1, pass1_ci = sum(means) / p, mean_ci(means)
        if all(o.majority is not None for o in outcomes):
            hits = sum(bool(o.majority) for o in outcomes)
            maj, maj_ci = hits / p, wilson(hits, p)
    drawn = sum(len(o.samples) + (o.greedy is not None) for o in outcomes)
    answered = sum(o.answered for o in outcomes)
    if greedy is not None:
        accuracy, ci, metric = greedy, greedy_ci, "greedy"
    elif pass1 is not None:
        accuracy, ci, metric = pass1, pass1_ci, "pass@1"
    else:
        accuracy, ci, metric = 0.0, (0.0, 1.0), "none"
    return BenchmarkResult(benchmark=benchmark, label=label, n=p, samples_per_problem=k, accuracy=accuracy,
                           ci95=ci, metric=metric, greedy=greedy, greedy_ci95=greedy_ci, pass1=pass1,
                           pass1_ci95=pass1_ci, maj=maj, maj_ci95=maj_ci,
                           answered_share=answered / drawn if drawn else 0.0, tokens=tokens, seconds=seconds)
