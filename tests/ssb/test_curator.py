"""The Curator's flow on a scripted sampler: what each answer leads to, and that problems move on
independently (the engine-level tests in tests/pipelines run it on vLLM). The tokenizer and
the verifier are the real ones."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from pipelines.state_table import to_states, to_table
from ssb.config import load_config
from ssb.curator import Curator, request_seed, to_example
from ssb.records import Problem, SkipReason, Verdict
from ssb.verify import Verifier

TOP_K = 3


@dataclass
class Sample:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"
    logprobs: Any = None


def _teacher(text: str, finish: str = "stop") -> Sample:
    ids = [11, 12, 13]
    return Sample(text, ids, finish, [{i: -0.1, i + 1: -2.5, i + 2: -3.0, i + 3: -6.0} for i in ids])


class Script:
    """Answers per (problem id, role); `gates` hold a request until its event is set."""

    def __init__(self, answers: dict[tuple[str, str], list[Sample]], gates: dict[tuple[str, str], asyncio.Event] | None = None):
        self.answers, self.gates, self.calls = answers, gates or {}, []

    async def sample(self, prompt_ids, seed, params, logprobs=None, stage="rollout"):
        key = next(k for k in self.answers if request_seed(self.cfg, k[0], k[1]) == seed)
        self.calls.append((key, logprobs))
        if key in self.gates:
            await self.gates[key].wait()
        return self.answers[key][: params.n]


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="module")
def verifier():
    with Verifier() as v:
        yield v


def _curator(script: Script, tokenizer, verifier, *overrides: str) -> Curator:
    cfg = load_config(None, ["curate.rollout.n=3", "curate.teacher.n=2", f"curate.top_k={TOP_K}", *overrides])
    script.cfg = cfg
    return Curator(cfg, tokenizer, script, verifier)


def _rollouts(*answers: str) -> list[Sample]:
    return [Sample(f"so \\boxed{{{a}}}", [1, 2]) for a in answers]


def test_a_kept_problem_carries_the_pair_and_the_accepted_answers_top_k(tokenizer, verifier):
    p = Problem("p", "What is 2 + 3?", "5")
    script = Script({("p", "rollout"): _rollouts("5", "6", "6"),
                     ("p", "teacher"): [_teacher("2 + 3 = 4. \\boxed{4}"), _teacher("2 + 3 = 5. \\boxed{5}")]})
    curator = _curator(script, tokenizer, verifier)
    state = asyncio.run(curator.curate(p))
    assert state.kept and state.status is None and state.verified
    assert [r.verdict for r in state.rollouts] == [Verdict.CORRECT, Verdict.INCORRECT, Verdict.INCORRECT]
    assert state.selection.correct.index == 0 and state.selection.incorrect_answer == "6"
    assert state.teacher.text.endswith("\\boxed{5}") and state.teacher.answer == "5"  # the second sample
    assert state.teacher.topk.ids.shape == (3, TOP_K) and state.teacher.topk.ids[0].tolist() == [11, 12, 13]
    assert (state.rollout_tokens, state.teacher_tokens) == (6, 6)
    assert script.calls == [(("p", "rollout"), None), (("p", "teacher"), TOP_K)]
    example = to_example(state, curator.cfg, "m", "t")
    assert example.response_ids == [11, 12, 13] and example.incorrect_answer == "6"
    assert example.meta["rollout_verdicts"] == '["correct", "incorrect", "incorrect"]'


@pytest.mark.parametrize(("rollouts", "teacher", "reason"), [
    (("6", "7", "8"), None, SkipReason.NO_CORRECT),
    (("5", "5.0", "5"), None, SkipReason.NO_INCORRECT),
    (("5", "6", "6"), [_teacher("\\boxed{6}"), _teacher("\\boxed{7}")], SkipReason.TEACHER_WRONG),
    (("5", "6", "6"), [_teacher("no answer here"), _teacher("\\boxed{6}")], SkipReason.TEACHER_NO_ANSWER),
    (("5", "6", "6"), [_teacher("\\boxed{5}", "length")] * 2, SkipReason.TEACHER_TRUNCATED),
    (("5", "6", "6"), [_teacher("The correct solution says \\boxed{5}")] * 2, SkipReason.TEACHER_MENTIONS_HINTS),
])
def test_a_skipped_problem_says_why(tokenizer, verifier, rollouts, teacher, reason):
    answers = {("p", "rollout"): _rollouts(*rollouts)}
    if teacher:
        answers[("p", "teacher")] = teacher
    state = asyncio.run(_curator(Script(answers), tokenizer, verifier).curate(Problem("p", "What is 2 + 3?", "5")))
    assert state.status is reason and not state.kept
    assert (state.teacher is not None) == bool(teacher)  # a rejected answer is kept for the record
    if state.teacher is not None:
        assert state.teacher.topk is None


def test_a_prompt_that_cannot_fit_is_skipped_without_a_request(tokenizer, verifier):
    script = Script({("p", "rollout"): _rollouts("5")})
    state = asyncio.run(_curator(script, tokenizer, verifier, "model.max_model_len=256").curate(
        Problem("p", "What is 2 + 3?", "5")))
    assert state.status is SkipReason.PROMPT_TOO_LONG and state.rollouts is None and script.calls == []


def test_each_problem_moves_on_without_waiting_for_the_others(tokenizer, verifier):
    """b's teacher request goes out while a's rollouts are still generating."""
    async def run() -> Any:
        gate = asyncio.Event()
        script = Script({("a", "rollout"): _rollouts("5", "6", "6"), ("b", "rollout"): _rollouts("5", "6", "6"),
                         ("a", "teacher"): [_teacher("\\boxed{5}")] * 2, ("b", "teacher"): [_teacher("\\boxed{5}")] * 2},
                        gates={("a", "rollout"): gate})
        curator = _curator(script, tokenizer, verifier)
        task = asyncio.ensure_future(curator.curate_many([Problem("a", "What is 2 + 3?", "5"),
                                                          Problem("b", "What is 1 + 4?", "5")]))
        for _ in range(500):
            if (("b", "teacher"), TOP_K) in script.calls:
                break
            await asyncio.sleep(0.01)
        b_taught_first = (("b", "teacher"), TOP_K) in script.calls
        gate.set()
        return b_taught_first, await task

    b_taught_first, states = asyncio.run(run())
    assert b_taught_first
    assert [s.problem.id for s in states] == ["a", "b"] and all(s.kept for s in states)


def test_states_cross_arrow_and_come_back_the_same(tokenizer, verifier):
    script = Script({("p", "rollout"): _rollouts("5", "6", "6"), ("p", "teacher"): [_teacher("\\boxed{5}")] * 2,
                     ("q", "rollout"): _rollouts("6", "6", "6")})
    curator = _curator(script, tokenizer, verifier)
    states = asyncio.run(curator.curate_many([Problem("p", "What is 2 + 3?", "5", "syn"),
                                              Problem("q", "What is 2 + 3?", "5")]))
    back = to_states(to_table(states))
    assert back[1].status is SkipReason.NO_CORRECT and back[1].teacher is None
    assert to_example(back[0], curator.cfg, "m", "t") == to_example(states[0], curator.cfg, "m", "t")
    assert [r.final_answer for r in back[0].rollouts] == ["5", "6", "6"] and back[0].problem.source == "syn"


def test_a_verifier_pool_checks_from_several_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    from ssb.verify import VerifierPool

    items = [(f"so \\boxed{{{i}}}", str(i if i % 3 else i + 1)) for i in range(24)]
    with VerifierPool(3, timeout_s=10) as pool:
        with ThreadPoolExecutor(6) as threads:
            results = list(threads.map(lambda item: pool.check_many([item])[0], items))
        used = sum(v.stats["checks"] > 0 for v in pool.verifiers)
    assert [v for _, v in results] == [Verdict.INCORRECT if i % 3 == 0 else Verdict.CORRECT for i in range(24)]
    assert used >= 2  # the checks were spread over the pool's processes
