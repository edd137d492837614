from ssb.selection import judge_teacher, mentions_hints, select_pair
from ssb.records import Rollout, SkipReason, Verdict


def _r(i: int, answer: str | None, verdict: Verdict) -> Rollout:
    return Rollout("p1", i, f"text {i} \\boxed{{{answer}}}", [], answer, verdict)


def test_needs_a_correct_and_an_incorrect_rollout():
    assert select_pair([_r(0, "4", Verdict.INCORRECT)], seed=0, problem_id="p1") is SkipReason.NO_CORRECT
    assert select_pair([_r(0, "5", Verdict.CORRECT)], seed=0, problem_id="p1") is SkipReason.NO_INCORRECT
    assert select_pair([], seed=0, problem_id="p1") is SkipReason.NO_CORRECT


def test_picks_the_most_common_incorrect_answer():
    rollouts = [_r(0, "5", Verdict.CORRECT), _r(1, "3", Verdict.INCORRECT), _r(2, "7", Verdict.INCORRECT),
                _r(3, "7", Verdict.INCORRECT), _r(4, None, Verdict.NO_ANSWER), _r(5, None, Verdict.NO_ANSWER),
                _r(6, None, Verdict.NO_ANSWER)]
    for seed in range(10):
        picked = select_pair(rollouts, seed=seed, problem_id="p1")
        assert picked.correct.index == 0
        assert picked.incorrect_answer == "7" and picked.incorrect.index in (2, 3)


def test_equivalent_wrong_answers_are_grouped():
    rollouts = [_r(0, "5", Verdict.CORRECT), _r(1, "3", Verdict.INCORRECT), _r(2, "7", Verdict.INCORRECT),
                _r(3, "7.0", Verdict.INCORRECT)]
    same = lambda a, b: float(a) == float(b)  # noqa: E731
    for seed in range(10):
        assert select_pair(rollouts, seed=seed, problem_id="p1", same_answer=same).incorrect.index in (2, 3)


def test_no_answer_rollouts_are_used_only_when_nothing_else_is_wrong():
    rollouts = [_r(0, "5", Verdict.CORRECT), _r(1, None, Verdict.NO_ANSWER)]
    picked = select_pair(rollouts, seed=0, problem_id="p1")
    assert picked.incorrect.index == 1 and picked.incorrect_answer is None


def test_tie_breaks_are_seeded_and_repeatable():
    rollouts = [_r(i, "5", Verdict.CORRECT) for i in range(4)] + [_r(4 + i, str(i), Verdict.INCORRECT) for i in range(4)]
    picks = {(p.correct.index, p.incorrect.index) for p in
             (select_pair(rollouts, seed=s, problem_id="p1") for s in range(20))}
    assert len(picks) > 1  # the seed matters
    again = [select_pair(rollouts, seed=3, problem_id="p1") for _ in range(3)]
    assert len({(p.correct.index, p.incorrect.index) for p in again}) == 1


def test_teacher_judgement():
    hints = ["attempt", "earlier solution"]
    ok = "5 - 2 = 3.\n\\boxed{3}"
    assert judge_teacher(ok, Verdict.CORRECT, "stop", hints) is None
    assert judge_teacher(ok, Verdict.INCORRECT, "stop", hints) is SkipReason.TEACHER_WRONG
    assert judge_teacher(ok, Verdict.TIMEOUT, "stop", hints) is SkipReason.TEACHER_WRONG
    assert judge_teacher("no box", Verdict.NO_ANSWER, "stop", hints) is SkipReason.TEACHER_NO_ANSWER
    assert judge_teacher(ok, Verdict.CORRECT, "length", hints) is SkipReason.TEACHER_TRUNCATED
    leaky = "As the Earlier Solution shows, 3.\n\\boxed{3}"
    assert judge_teacher(leaky, Verdict.CORRECT, "stop", hints) is SkipReason.TEACHER_MENTIONS_HINTS
    assert mentions_hints(leaky, hints) == "earlier solution"
