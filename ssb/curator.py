"""Curating one problem, asynchronously: rollouts → verification → selection → teacher → judgement.

`Curator.curate` takes a Problem through every step of SSB's curation and returns its
ProblemState: kept (with the teacher's top-k distribution) or skipped with a reason. Many
problems are curated at once on one event loop: each moves on as soon as its own requests
finish, so rollout and teacher requests of different problems share the engine's running
batch and the engine never waits for a batch's slowest answer or for the verifier.
Verification and selection run off the event loop (the verifier blocks on its child
process), so the requests of other problems keep flowing meanwhile.

The engine is an `AsyncSampler`: vLLM's AsyncLLM in this process (pipelines/curation_engine.py)
or a Serve deployment (services/served_sampler.py). Every request carries its own seed,
derived from (curate.seed, problem id, role), so a problem's rollouts and teacher answers
are the same whatever batch, replica or service they run in, and a resumed run redoes a
problem exactly as the first run would have.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any, Protocol, Sequence

from ssb.config import RunConfig, SamplingConfig
from ssb.logits import encode_topk
from ssb.prompts import Prompts, render_ids, rollout_messages, student_messages, teacher_messages
from ssb.records import (CuratedExample, Problem, ProblemState, Rollout, SkipReason, TeacherAnswer, TeacherSample,
                         Verdict)
from ssb.selection import judge_teacher, select_pair
from ssb.verify import Verifier, VerifierPool


class Completion(Protocol):
    """One sample, as vLLM's CompletionOutput has it."""

    text: str
    token_ids: Sequence[int]
    finish_reason: str | None
    logprobs: Any  # per generated token: {token id: Logprob | float}, or None


class AsyncSampler(Protocol):
    async def sample(self, prompt_ids: list[int], seed: int, params: SamplingConfig,
                     logprobs: int | None = None, stage: str = "rollout") -> Sequence[Completion]:
        """`params.n` completions of one prompt, sampled with `seed`; `stage` ("rollout" or
        "teacher") is what the engine's time is charged to."""
        ...


# vLLM seeds the n samples of one request with seed, seed+1, ... (parallel_sampling.py):
# request seeds stay below this so the children's seeds never overflow an int64 or wrap.
_SEED_SPACE = 2**31 - 2**16


def request_seed(cfg: RunConfig, problem_id: str, role: str) -> int:
    """The sampling seed of one problem's request in one role ("rollout", "teacher")."""
    digest = hashlib.sha256(f"{cfg.curate.seed}:{role}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_SPACE


def _fits(prompt_ids: list[int], max_tokens: int, max_model_len: int) -> bool:
    return len(prompt_ids) + max_tokens <= max_model_len


class Curator:
    """SSB's curation of one problem at a time, many at once, on one engine and verifier.

    `roll_out` (steps 1–3a: samples, verdicts, the pair, the teacher's prompt) and `teach`
    (steps 3b–4: the teacher's answers, the judgement, the top-k of the accepted one) can
    also run on different engines (`engine.colocate: false`); `curate` runs both."""

    def __init__(self, cfg: RunConfig, tokenizer: Any, sampler: AsyncSampler, verifier: Verifier | VerifierPool):
        self.cfg, self.tokenizer, self.sampler, self.verifier = cfg, tokenizer, sampler, verifier
        self.prompts = Prompts.from_config(cfg.prompts)

    async def curate(self, problem: Problem) -> ProblemState:
        state = await self.roll_out(ProblemState(problem))
        return await self.teach(state)

    async def curate_many(self, problems: Sequence[Problem]) -> list[ProblemState]:
        return list(await asyncio.gather(*(self.curate(p) for p in problems)))

    async def roll_out(self, state: ProblemState) -> ProblemState:
        params = self.cfg.curate.rollout
        ids = render_ids(self.tokenizer, rollout_messages(state.problem.question, self.prompts))
        if not _fits(ids, params.max_tokens, self.cfg.model.max_model_len):
            state.status = SkipReason.PROMPT_TOO_LONG
            return state
        samples = await self.sampler.sample(ids, request_seed(self.cfg, state.problem.id, "rollout"), params)
        state.rollouts = [Rollout(state.problem.id, i, c.text, []) for i, c in enumerate(samples)]
        state.rollout_finish = [str(c.finish_reason) for c in samples]
        state.rollout_lengths = [len(c.token_ids) for c in samples]
        state.rollout_tokens = sum(len(c.token_ids) for c in samples)
        # The verifier waits on its child process: off the loop, other problems keep generating.
        await asyncio.to_thread(self._select, state)
        return state

    def _check(self, state: ProblemState, pairs: list[tuple[str, str]]) -> list[tuple[str | None, str]]:
        start = time.perf_counter()
        try:
            return self.verifier.check_many(pairs)
        finally:
            state.verify_seconds += time.perf_counter() - start

    def _select(self, state: ProblemState) -> None:
        assert state.rollouts is not None
        checks = self._check(state, [(r.text, state.problem.answer) for r in state.rollouts])
        for rollout, (answer, verdict) in zip(state.rollouts, checks):
            rollout.final_answer, rollout.verdict = answer, Verdict(verdict)
        state.verified = True
        picked = select_pair(state.rollouts, seed=self.cfg.curate.seed, problem_id=state.problem.id,
                             same_answer=self.verifier.equivalent)
        if isinstance(picked, SkipReason):
            state.status = picked
            return
        state.selection = picked
        question = state.problem.question
        state.student_prompt_ids = render_ids(self.tokenizer, student_messages(question, self.prompts))
        teacher_ids = render_ids(self.tokenizer, teacher_messages(
            question, picked.correct.text, picked.incorrect.text, picked.incorrect_answer, self.prompts))
        if not _fits(teacher_ids, self.cfg.curate.teacher.max_tokens, self.cfg.model.max_model_len):
            state.status = SkipReason.PROMPT_TOO_LONG
            return
        state.teacher_prompt_ids = teacher_ids

    async def teach(self, state: ProblemState) -> ProblemState:
        if state.status is not None or state.teacher_prompt_ids is None:
            return state
        # logprobs are raw (temperature 1) whatever the sampling temperature: vLLM's default
        # logprobs_mode, which is what the loss expects.
        samples = await self.sampler.sample(state.teacher_prompt_ids,
                                            request_seed(self.cfg, state.problem.id, "teacher"),
                                            self.cfg.curate.teacher, logprobs=self.cfg.curate.top_k, stage="teacher")
        state.teacher_tokens = sum(len(c.token_ids) for c in samples)
        await asyncio.to_thread(self._judge, state, samples)
        return state

    def _judge(self, state: ProblemState, samples: Sequence[Completion]) -> None:
        """The first sample that finishes, verifies and does not talk about the hints is kept."""
        checks = self._check(state, [(c.text, state.problem.answer) for c in samples])
        reasons = [judge_teacher(c.text, Verdict(v), str(c.finish_reason), self.cfg.curate.hint_phrases)
                   for c, (_, v) in zip(samples, checks)]
        pick = next((i for i, reason in enumerate(reasons) if reason is None), None)
        state.teacher_samples = [
            TeacherSample(c.text, str(c.finish_reason), answer, Verdict(v), len(c.token_ids), reason, i == pick)
            for i, (c, (answer, v), reason) in enumerate(zip(samples, checks, reasons))]
        chosen = samples[0 if pick is None else pick]
        state.teacher = TeacherAnswer(chosen.text, list(chosen.token_ids), str(chosen.finish_reason),
                                      checks[0 if pick is None else pick][0])
        if pick is None:
            state.status = reasons[0]
            return
        state.teacher.topk = encode_topk(chosen.logprobs, self.cfg.curate.top_k)


def to_example(state: ProblemState, cfg: RunConfig, model: str, tokenizer: str) -> CuratedExample:
    """A kept problem as the store holds it."""
    teacher, pair, rollouts = state.teacher, state.selection, state.rollouts
    if not state.kept or teacher is None or teacher.topk is None or pair is None or rollouts is None:
        raise ValueError(f"problem {state.problem.id} was not kept ({state.status})")
    assert state.student_prompt_ids is not None and state.teacher_prompt_ids is not None
    p = state.problem
    return CuratedExample(
        problem_id=p.id, question=p.question, answer=p.answer,
        student_prompt_ids=state.student_prompt_ids, teacher_prompt_ids=state.teacher_prompt_ids,
        response_ids=teacher.token_ids, response_text=teacher.text,
        topk_ids=teacher.topk.ids.tolist(), topk_logprobs=teacher.topk.logprobs.tolist(),
        tail_logprob=teacher.topk.tail_logprob.tolist(),
        correct_rollout=pair.correct.text, incorrect_rollout=pair.incorrect.text,
        incorrect_answer=pair.incorrect_answer, model=model, tokenizer=tokenizer,
        config_hash=cfg.curation_hash(), seed=cfg.curate.seed,
        meta={
            "source": p.source or "",
            "teacher_answer": teacher.answer or "",
            "teacher_tokens_sampled": str(state.teacher_tokens),
            "rollout_verdicts": json.dumps([r.verdict.value for r in rollouts]),
            "rollout_answers": json.dumps([r.final_answer for r in rollouts]),
        },
    )
