"""Selection: which problems SSB keeps, which rollouts the teacher sees, which answers pass.

A problem is kept only when its rollouts hold at least one correct and one incorrect
answer. The teacher is shown one correct rollout and one rollout carrying the *most common*
incorrect answer; ties are broken by a generator seeded with (seed, problem id), so a rerun
picks the same pair on any machine.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Callable, Sequence

from ssb.records import Rollout, Selection, SkipReason, Verdict

SameAnswer = Callable[[str, str], bool]


def _answer_key(answer: str) -> str:
    return re.sub(r"[\s$]|\\[,!;: ]", "", answer)


def _group_answers(answers: Sequence[str], same: SameAnswer | None) -> list[str]:
    """Representative per answer, merging answers that differ only in form (8 and 8.0)."""
    reps: list[str] = []
    out = []
    for answer in answers:
        key = _answer_key(answer)
        match = next((r for r in reps if r == key or (same is not None and same(r, key))), None)
        if match is None:
            reps.append(key)
            match = key
        out.append(match)
    return out


def select_pair(
    rollouts: Sequence[Rollout], *, seed: int, problem_id: str, same_answer: SameAnswer | None = None
) -> Selection | SkipReason:
    correct = [r for r in rollouts if r.verdict is Verdict.CORRECT]
    incorrect = [r for r in rollouts if r.verdict is not Verdict.CORRECT]
    if not correct:
        return SkipReason.NO_CORRECT
    if not incorrect:
        return SkipReason.NO_INCORRECT
    rng = random.Random(f"{seed}:{problem_id}")
    chosen_correct = rng.choice(sorted(correct, key=lambda r: r.index))

    # Wrong answers the model actually committed to say more about its typical mistake than
    # rollouts that never answered; those are only shown when nothing else is wrong.
    answered = sorted((r for r in incorrect if r.final_answer), key=lambda r: r.index)
    if not answered:
        return Selection(chosen_correct, rng.choice(sorted(incorrect, key=lambda r: r.index)), None, len(incorrect))
    groups = _group_answers([r.final_answer or "" for r in answered], same_answer)
    counts = Counter(groups)
    top = max(counts.values())
    modal = rng.choice(sorted(g for g, c in counts.items() if c == top))
    members = [r for r, g in zip(answered, groups) if g == modal]
    pick = rng.choice(members)
    return Selection(chosen_correct, pick, pick.final_answer, len(members))


def mentions_hints(text: str, phrases: Sequence[str]) -> str | None:
    lowered = text.lower()
    return next((p for p in phrases if p.lower() in lowered), None)


def judge_teacher(
    text: str, verdict: Verdict, finish_reason: str | None, hint_phrases: Sequence[str]
) -> SkipReason | None:
    """None when the teacher's answer is accepted, else why it is not."""
    if finish_reason not in (None, "stop"):
        return SkipReason.TEACHER_TRUNCATED
    if verdict is Verdict.NO_ANSWER:
        return SkipReason.TEACHER_NO_ANSWER
    if verdict is not Verdict.CORRECT:
        return SkipReason.TEACHER_WRONG
    if mentions_hints(text, hint_phrases):
        return SkipReason.TEACHER_MENTIONS_HINTS
    return None
