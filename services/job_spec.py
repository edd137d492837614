"""A job request and the job it becomes: the request's schema and the rules that turn it into a spec.

`spec_from_request` is a pure function (no app, no Redis, no Ray): every limit rule answers
with a `SpecError` naming the limit, whose `status` is the HTTP answer (413 for a count over
a limit, 422 for input the rules refuse). The API stores the resulting `JobSpec` in the job's
record; the runner builds the job's run config from it (services.job_run.job_config).

Dotted overrides (`"overrides": ["curate.rollout.temperature=0.7"]`) are read by the one
parser of the CLI (`ssb.config.parse_override`): a malformed one answers with the same
one-line message `ssb run` prints. Only the settings the structured fields set may be
overridden (`OVERRIDABLE`), within the same bounds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from services.settings import ApiConfig, resolve_under
from ssb.config import BudgetConfig, OverrideError, parse_override
from ssb.cost import Budget

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,199}$"
ROLES = ("rollout", "teacher")
SEED_KEY = "curate.seed"
MAX_OVERRIDES = 32


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProblemIn(_In):
    id: str | None = Field(None, pattern=_ID, description="defaults to inline-<index>")
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1, max_length=10_000)
    source: str | None = Field(None, max_length=200)


class DatasetRef(_In):
    path: str = Field(min_length=1, max_length=1000, description="relative to an allowed data root")
    split: str | None = Field(None, pattern=r"^[A-Za-z0-9_\-]{1,50}$")
    limit: int | None = Field(None, ge=1)


class SyntheticRef(_In):
    n: int = Field(ge=1)
    seed: int = Field(0, ge=0, le=2**31)
    difficulty: Literal["add1", "addsub", "twostep"] = "add1"


class SamplingOverride(_In):
    n: int | None = Field(None, ge=1, le=64)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1, le=4096)


# What a request may set, by its fields or by an override: curate.<role>.<key> and curate.seed.
OVERRIDABLE = (*(f"curate.{role}.{key}" for role in ROLES for key in SamplingOverride.model_fields), SEED_KEY)
Seed = Annotated[int, Field(ge=0, le=2**31)]
_SEED = TypeAdapter(Seed)


class JobRequest(_In):
    problems: list[ProblemIn] | None = None
    dataset: DatasetRef | None = None
    synthetic: SyntheticRef | None = None
    rollout: SamplingOverride | None = None
    teacher: SamplingOverride | None = None
    seed: Seed | None = Field(None, description="curate.seed: selection and sampling")
    budget: BudgetConfig | None = Field(None, description=(
        "curate.budget: no new problem starts once one is reached, and the job succeeds with what it committed "
        "(result.stopped_by names it); each limit is capped by the server's api.job_budget_cap"))
    overrides: list[Annotated[str, Field(max_length=1000)]] | None = Field(
        None, max_length=MAX_OVERRIDES,
        description="dotted key=value settings, applied after the fields above: "
                    + ", ".join(OVERRIDABLE) + " (the same bounds as rollout, teacher and seed)")

    @model_validator(mode="after")
    def _one_source(self) -> JobRequest:
        given = [k for k in ("problems", "dataset", "synthetic") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of problems, dataset, synthetic (got {given or 'none'})")
        return self


class JobSource(BaseModel):
    """Where a job's problems come from: inline (the spec's `problems`), synthetic, or a dataset."""

    kind: Literal["inline", "synthetic", "dataset"]
    n: int | None = None
    seed: int | None = None
    difficulty: str | None = None
    path: str | None = None
    split: str | None = None
    limit: int | None = None


class JobSpec(BaseModel):
    """What a job curates and how: kept in the job's record, read by the runner."""

    source: JobSource
    problems: list[dict[str, Any]] | None = None
    rollout: SamplingOverride | None = None
    teacher: SamplingOverride | None = None
    seed: int | None = None
    overrides: list[str] = []
    budget: BudgetConfig | None = None  # the request's, capped by the server's
    adapter: str | None = None  # a LoRA adapter under llm.lora_root

    def to_record(self) -> dict[str, Any]:
        """The spec as the job's record keeps it (JSON; JobSpec.model_validate reads it back)."""
        return self.model_dump(exclude_none=True)


@dataclass(frozen=True)
class ProblemLimit:
    """How many problems one request may ask for, and the setting's name that says so."""

    name: str
    value: int


class SpecError(ValueError):
    """A request the limit rules refuse: `status` is the HTTP answer, the message names the rule."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def spec_from_request(body: JobRequest, api: ApiConfig, limit: ProblemLimit) -> tuple[JobSpec, int]:
    """(the job's spec, how many problems it has at most), or SpecError."""
    common = {"rollout": body.rollout, "teacher": body.teacher, "seed": body.seed,
              "overrides": check_overrides(body.overrides or []), "budget": capped_budget(body.budget, api)}
    if body.problems is not None:
        check_problems(body.problems, api, limit)
        problems = [p.model_dump(exclude_none=True) for p in body.problems]
        return JobSpec(source=JobSource(kind="inline"), problems=problems, **common), len(problems)
    if body.synthetic is not None:
        if body.synthetic.n > limit.value:
            raise SpecError(413, f"synthetic.n={body.synthetic.n}; the limit is {limit.name}={limit.value}")
        return JobSpec(source=JobSource(kind="synthetic", **body.synthetic.model_dump()), **common), body.synthetic.n
    assert body.dataset is not None  # JobRequest allows exactly one source
    ref = body.dataset
    if ref.limit is not None and ref.limit > limit.value:
        raise SpecError(413, f"dataset.limit={ref.limit}; the limit is {limit.name}={limit.value}")
    path = resolve_under(ref.path, api.allowed_data_roots)
    if path is None:
        # Same answer for "outside the roots" and "missing": the API reveals nothing about other paths.
        raise SpecError(422, "dataset.path must name an existing file or directory inside the allowed data roots "
                             "(no '..' out of them, no absolute paths elsewhere, no URLs)")
    count = ref.limit or limit.value
    source = JobSource(kind="dataset", path=str(path), split=ref.split, limit=count)
    return JobSpec(source=source, **common), count


def capped_budget(asked: BudgetConfig | None, api: ApiConfig) -> BudgetConfig | None:
    """The job's budget: each limit the smaller of the request's and the server's cap (a limit
    either leaves unset is the other's); None when neither sets one."""
    budget = Budget(**(asked or BudgetConfig()).model_dump()).smallest(Budget(**api.job_budget_cap.model_dump()))
    return None if budget == Budget() else BudgetConfig(**asdict(budget))


def check_problems(problems: list[ProblemIn], api: ApiConfig, limit: ProblemLimit) -> None:
    if len(problems) > limit.value:
        raise SpecError(413, f"{len(problems)} problems; the limit is {limit.name}={limit.value}")
    for i, p in enumerate(problems):
        if len(p.question) > api.max_question_chars:
            raise SpecError(422, f"problems[{i}].question has {len(p.question)} characters; "
                                 f"the limit is max_question_chars={api.max_question_chars}")
    ids = [p.id for p in problems if p.id]
    if len(ids) != len(set(ids)):
        raise SpecError(422, "problem ids must be unique within a job")


def check_overrides(items: list[str]) -> list[str]:
    """The overrides, each read by ssb.config.parse_override and checked against OVERRIDABLE and
    the structured fields' bounds; SpecError (422) names the first bad one. A malformed one
    answers with OverrideError's own message."""
    for item in items:
        try:
            key, value = parse_override(item)
        except OverrideError as exc:
            raise SpecError(422, str(exc)) from None
        if key not in OVERRIDABLE:
            raise SpecError(422, f"override {key!r} cannot be set by a job request; "
                                 f"these can: {', '.join(OVERRIDABLE)}")
        try:
            if key == SEED_KEY:
                _SEED.validate_python(value)
            else:
                SamplingOverride.model_validate({key.rsplit(".", 1)[1]: value})
        except ValidationError as exc:
            raise SpecError(422, f"override {item!r}: {exc.errors()[0]['msg']}") from None
    return list(items)
