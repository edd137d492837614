"""The four curation stages as plain callables over rows (dicts), so one engine can run
them in one actor (colocated) or Ray Data can run each as its own stage (split).

Rows carry every column of `ROW_SCHEMA` from the start; a stage fills its own columns and
sets `status` to a skip reason when the problem drops out. Later stages pass such rows on
untouched so the driver can record why each problem was skipped.

The generating stages talk to a `Sampler`: a vLLM engine in this process (`VLLMSampler`, the
Ray Data job) or a Ray Serve deployment (services/served_sampler.py, the curation API).
Every request carries its own seed, derived from (curate.seed, problem id, role), so a
problem's rollouts and teacher answers are the same whatever batch, replica or service
they run in, and a resumed run redoes a problem exactly as the first run would have.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Protocol, Sequence

import pyarrow as pa

from ssb.config import RunConfig, SamplingConfig
from ssb.curate import judge_teacher, select_pair
from ssb.logits import encode_topk
from ssb.prompts import Prompts, render_ids, rollout_messages, student_messages, teacher_messages
from ssb.records import Rollout, SkipReason, Verdict
from ssb.verify import Verifier

Row = dict[str, Any]

ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("question", pa.string()), ("answer", pa.string()), ("source", pa.string()),
    ("status", pa.string()),
    ("rollout_texts", pa.list_(pa.string())), ("rollout_answers", pa.list_(pa.string())),
    ("rollout_verdicts", pa.list_(pa.string())), ("rollout_finish", pa.list_(pa.string())),
    ("rollout_tokens", pa.int64()), ("rollout_seconds", pa.float64()),
    ("correct_text", pa.string()), ("incorrect_text", pa.string()), ("incorrect_answer", pa.string()),
    ("student_prompt_ids", pa.list_(pa.int32())), ("teacher_prompt_ids", pa.list_(pa.int32())),
    ("response_ids", pa.list_(pa.int32())), ("response_text", pa.string()), ("finish_reason", pa.string()),
    ("teacher_tokens", pa.int64()), ("topk_ids", pa.list_(pa.int32())), ("topk_logprobs", pa.list_(pa.float32())),
    ("tail_logprob", pa.list_(pa.float32())), ("teacher_answer", pa.string()), ("teacher_seconds", pa.float64()),
])


def new_row(problem: dict[str, Any]) -> Row:
    row: Row = {name: None for name in ROW_SCHEMA.names}
    row.update({k: problem[k] for k in ("id", "question", "answer", "source")})
    row["status"] = ""
    return row


def to_table(rows: Sequence[Row]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)


def from_table(table: pa.Table) -> list[Row]:
    rows = table.to_pylist()
    for row in rows:  # problems straight from the source have only the problem columns
        for name in ROW_SCHEMA.names:
            row.setdefault(name, "" if name == "status" else None)
    return rows


def sampling_params(llm_module: Any, s: Any, *, logprobs: int | None = None, seed: int | None = None) -> Any:
    return llm_module.SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p,
                                     max_tokens=s.max_tokens, logprobs=logprobs, seed=seed)


# vLLM seeds the n samples of one request with seed, seed+1, ... (parallel_sampling.py):
# request seeds stay below this so the children's seeds never overflow an int64 or wrap.
_SEED_SPACE = 2**31 - 2**16


def request_seed(cfg: RunConfig, problem_id: str, role: str) -> int:
    """The sampling seed of one problem's request in one role ("rollout", "teacher")."""
    digest = hashlib.sha256(f"{cfg.curate.seed}:{role}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_SPACE


class Completion(Protocol):
    """One sample, as vLLM's CompletionOutput has it."""

    text: str
    token_ids: Sequence[int]
    finish_reason: str | None
    logprobs: Any  # per generated token: {token id: Logprob | float}, or None


class Sampler(Protocol):
    def sample(self, prompts: list[list[int]], seeds: list[int], params: SamplingConfig,
               logprobs: int | None = None) -> list[list[Completion]]:
        """`params.n` completions per prompt id list, each prompt sampled with its own seed."""
        ...


class VLLMSampler:
    """A vLLM engine (`vllm.LLM`) in this process."""

    def __init__(self, llm: Any, lora: Any = None):
        import vllm

        self.llm, self.lora, self._vllm = llm, lora, vllm

    def sample(self, prompts: list[list[int]], seeds: list[int], params: SamplingConfig,
               logprobs: int | None = None) -> list[list[Completion]]:
        inputs = [self._vllm.inputs.TokensPrompt(prompt_token_ids=ids) for ids in prompts]
        per_request = [sampling_params(self._vllm, params, logprobs=logprobs, seed=seed) for seed in seeds]
        outputs = self.llm.generate(inputs, per_request, use_tqdm=False, lora_request=self.lora)
        return [list(out.outputs) for out in outputs]


def as_sampler(llm_or_sampler: Any, cfg: RunConfig) -> Sampler:
    """Stages take a Sampler; a bare `vllm.LLM` is wrapped (with the run's adapter, if any)."""
    if hasattr(llm_or_sampler, "sample"):
        return llm_or_sampler
    return VLLMSampler(llm_or_sampler, lora_request(cfg))


def lora_request(cfg: RunConfig) -> Any:
    """The adapter every request of this run goes through, or None for the bare model."""
    if not cfg.model.adapter:
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest("ssb-adapter", 1, cfg.model.adapter)


def _fits(prompt_ids: list[int], max_tokens: int, max_model_len: int) -> bool:
    return len(prompt_ids) + max_tokens <= max_model_len


class RolloutStage:
    """Step 1: K samples per problem under the tutor prompt (with solved examples)."""

    def __init__(self, llm: Any, tokenizer: Any, cfg: RunConfig):
        """`llm`: a Sampler, or a `vllm.LLM` (wrapped in VLLMSampler)."""
        self.sampler, self.tokenizer, self.cfg = as_sampler(llm, cfg), tokenizer, cfg
        self.prompts = Prompts.from_config(cfg.prompts)
        self.params = cfg.curate.rollout

    def __call__(self, rows: list[Row]) -> list[Row]:
        todo, prompts = [], []
        for row in rows:
            if row["status"]:
                continue
            ids = render_ids(self.tokenizer, rollout_messages(row["question"], self.prompts))
            if not _fits(ids, self.params.max_tokens, self.cfg.model.max_model_len):
                row["status"] = SkipReason.PROMPT_TOO_LONG.value
                continue
            todo.append(row)
            prompts.append(ids)
        if not todo:
            return rows
        start = time.perf_counter()
        seeds = [request_seed(self.cfg, r["id"], "rollout") for r in todo]
        outputs = self.sampler.sample(prompts, seeds, self.params)
        seconds = time.perf_counter() - start
        for row, samples in zip(todo, outputs):
            row["rollout_texts"] = [c.text for c in samples]
            row["rollout_finish"] = [str(c.finish_reason) for c in samples]
            row["rollout_tokens"] = sum(len(c.token_ids) for c in samples)
            row["rollout_seconds"] = seconds / len(todo)
        return rows


class VerifySelectStage:
    """Steps 2–3a: verify every rollout, keep mixed problems, pick the pair, build the prompts."""

    def __init__(self, tokenizer: Any, cfg: RunConfig, verifier: Verifier | None = None):
        self.tokenizer, self.cfg = tokenizer, cfg
        self.prompts = Prompts.from_config(cfg.prompts)
        self.verifier = verifier or Verifier(timeout_s=cfg.verify.timeout_s, fallbacks=cfg.verify.fallbacks)

    def __call__(self, rows: list[Row]) -> list[Row]:
        live = [r for r in rows if not r["status"]]
        checks = self.verifier.check_many([(t, r["answer"]) for r in live for t in r["rollout_texts"]])
        at = 0
        for row in live:
            texts = row["rollout_texts"]
            results = checks[at: at + len(texts)]
            at += len(texts)
            row["rollout_answers"] = [a for a, _ in results]
            row["rollout_verdicts"] = [str(Verdict(v).value) for _, v in results]
            rollouts = [Rollout(row["id"], i, t, [], a, Verdict(v)) for i, (t, (a, v)) in enumerate(zip(texts, results))]
            picked = select_pair(rollouts, seed=self.cfg.curate.seed, problem_id=row["id"],
                                 same_answer=self.verifier.equivalent)
            if isinstance(picked, SkipReason):
                row["status"] = picked.value
                continue
            row["correct_text"] = picked.correct.text
            row["incorrect_text"] = picked.incorrect.text
            row["incorrect_answer"] = picked.incorrect_answer
            row["student_prompt_ids"] = render_ids(self.tokenizer, student_messages(row["question"], self.prompts))
            teacher_ids = render_ids(self.tokenizer, teacher_messages(
                row["question"], picked.correct.text, picked.incorrect.text, picked.incorrect_answer, self.prompts))
            if not _fits(teacher_ids, self.cfg.curate.teacher.max_tokens, self.cfg.model.max_model_len):
                row["status"] = SkipReason.PROMPT_TOO_LONG.value
                continue
            row["teacher_prompt_ids"] = teacher_ids
        return rows


class TeacherStage:
    """Steps 3b–4: the teacher answers `curate.teacher.n` times; `JudgeStage` keeps the
    first acceptable answer and only that one's top-k log-probs are encoded."""

    def __init__(self, llm: Any, tokenizer: Any, cfg: RunConfig):
        """`llm`: a Sampler, or a `vllm.LLM` (wrapped in VLLMSampler)."""
        self.sampler, self.tokenizer, self.cfg = as_sampler(llm, cfg), tokenizer, cfg
        self.params = cfg.curate.teacher

    def __call__(self, rows: list[Row]) -> list[Row]:
        todo = [r for r in rows if not r["status"]]
        if not todo:
            return rows
        start = time.perf_counter()
        # logprobs are raw (temperature 1) whatever the sampling temperature: vLLM's default
        # logprobs_mode, which is what the loss expects.
        outputs = self.sampler.sample([r["teacher_prompt_ids"] for r in todo],
                                      [request_seed(self.cfg, r["id"], "teacher") for r in todo],
                                      self.params, logprobs=self.cfg.curate.top_k)
        seconds = time.perf_counter() - start
        for row, samples in zip(todo, outputs):
            # In-process only: candidates never cross a stage boundary (to_table drops them).
            row["_candidates"] = list(samples)
            row["teacher_tokens"] = sum(len(c.token_ids) for c in samples)
            row["teacher_seconds"] = seconds / len(todo)
        return rows


class JudgeStage:
    """Step 3c: the teacher's answer must finish, verify, and not talk about the hints."""

    def __init__(self, cfg: RunConfig, verifier: Verifier | None = None):
        self.cfg = cfg
        self.k = cfg.curate.top_k
        self.verifier = verifier or Verifier(timeout_s=cfg.verify.timeout_s, fallbacks=cfg.verify.fallbacks)

    def __call__(self, rows: list[Row]) -> list[Row]:
        todo = [r for r in rows if not r["status"]]
        checks = iter(self.verifier.check_many([(c.text, r["answer"]) for r in todo for c in r["_candidates"]]))
        for row in todo:
            candidates = row.pop("_candidates")
            verdicts = [next(checks) for _ in candidates]
            reasons = [judge_teacher(c.text, Verdict(v), str(c.finish_reason), self.cfg.curate.hint_phrases)
                       for c, (_, v) in zip(candidates, verdicts)]
            pick = next((i for i, reason in enumerate(reasons) if reason is None), None)
            if pick is None:
                row["status"] = reasons[0].value
                row["teacher_answer"] = verdicts[0][0]
                row["response_text"] = candidates[0].text
                continue
            chosen = candidates[pick]
            topk = encode_topk(chosen.logprobs, self.k)
            row["teacher_answer"] = verdicts[pick][0]
            row["response_ids"] = list(chosen.token_ids)
            row["response_text"] = chosen.text
            row["finish_reason"] = str(chosen.finish_reason)
            row["topk_ids"] = topk.ids.reshape(-1).tolist()
            row["topk_logprobs"] = topk.logprobs.reshape(-1).tolist()
            row["tail_logprob"] = topk.tail_logprob.tolist()
        return rows


def curation_stages(llm: Any, tokenizer: Any, cfg: RunConfig) -> list[Any]:
    """The four stages on one engine (or Sampler): rollouts, verify + select, teacher, judge."""
    sampler = as_sampler(llm, cfg)
    select = VerifySelectStage(tokenizer, cfg)
    return [RolloutStage(sampler, tokenizer, cfg), select, TeacherStage(sampler, tokenizer, cfg),
            JudgeStage(cfg, select.verifier)]


def run_stages(stages: Sequence[Any], rows: list[Row]) -> list[Row]:
    for stage in stages:
        rows = stage(rows)
    return rows
