"""Seeded arithmetic word problems: the embedded default data source.

A small model can learn these in minutes on a CPU, so the whole SSB loop runs without any
download. Curation (`split="train"`) and held-out evaluation (`split="test"`) draw from
DISJOINT template sets: a student that improves on the held-out split has learned the
arithmetic, not the wording of the problems it was trained on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ssb import word_problems
from ssb.records import Problem

# "word": all four operations with two-digit numbers and distractors (ssb/word_problems.py).
DIFFICULTIES = ("add1", "addsub", "twostep", "word")
# "heldout" is an alias of "test": both name the evaluation templates and share ids.
SPLITS = {"train": "train", "test": "test", "heldout": "test"}

# (name, pronoun) pairs: the pronoun keeps "He buys ..." in agreement with the name.
NAMES = [
    ("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Maria", "she"), ("Sam", "he"),
    ("Lily", "she"), ("Omar", "he"), ("Grace", "she"), ("Leo", "he"), ("Nina", "she"),
    ("Ravi", "he"), ("Emma", "she"), ("Jack", "he"), ("Sofia", "she"), ("Ken", "he"),
    ("Zoe", "she"), ("Hugo", "he"), ("Mia", "she"), ("Ali", "he"), ("Chloe", "she"),
]
# Plural nouns only: operands start at 2, so "1 apples" never appears.
OBJECTS = [
    "apples", "pencils", "marbles", "stickers", "books", "cookies", "stamps", "shells",
    "balloons", "cards", "coins", "oranges", "crayons", "buttons", "toy cars", "eggs",
]

# Templates keyed by the operations they express, in order. Placeholders: {name} {other}
# {Pron} {pron} {obj} and the operands {a} {b} {c}. The answer is a op1 b (op2 c).
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "train": {
        "+": [
            "{name} has {a} {obj}. {Pron} buys {b} more {obj}. How many {obj} does {name} have now?",
            "There are {a} {obj} in a box. {name} puts {b} more {obj} in the box. "
            "How many {obj} are in the box now?",
            "{name} picked {a} {obj} in the morning and {b} {obj} in the afternoon. "
            "How many {obj} did {name} pick in all?",
        ],
        "-": [
            "{name} has {a} {obj}. {Pron} gives {b} {obj} to {other}. How many {obj} does {name} have left?",
            "There are {a} {obj} on the table. {name} takes {b} of them away. "
            "How many {obj} are still on the table?",
            "{name} bought {a} {obj} and lost {b} of them on the way home. How many {obj} does {name} have now?",
        ],
        "++": [
            "{name} has {a} {obj}. {Pron} buys {b} more {obj} and then finds {c} more. "
            "How many {obj} does {name} have now?",
            "There are {a} {obj} in a jar. {name} adds {b} {obj} and {other} adds {c} {obj}. "
            "How many {obj} are in the jar now?",
        ],
        "+-": [
            "{name} has {a} {obj}. {Pron} buys {b} more {obj} and then gives {c} {obj} to {other}. "
            "How many {obj} does {name} have left?",
            "There are {a} {obj} in a box. {name} puts in {b} more and then takes out {c}. "
            "How many {obj} are in the box now?",
        ],
        "-+": [
            "{name} has {a} {obj}. {Pron} gives {b} {obj} to {other} and then buys {c} more {obj}. "
            "How many {obj} does {name} have now?",
            "There are {a} {obj} in a box. {name} takes out {b} and then puts in {c} more. "
            "How many {obj} are in the box now?",
        ],
        "--": [
            "{name} has {a} {obj}. {Pron} gives {b} {obj} to {other} and then loses {c} more. "
            "How many {obj} does {name} have left?",
            "There are {a} {obj} on the table. {name} takes {b} of them and {other} takes {c}. "
            "How many {obj} are still on the table?",
        ],
    },
    "test": {
        "+": [
            "Before lunch {name} had {a} {obj}. After lunch {other} gave {name} {b} {obj}. "
            "How many {obj} does {name} own in total?",
            "A basket holds {a} {obj}. Then {b} more {obj} are added to the basket. "
            "What is the total number of {obj} in the basket?",
            "{name} collects {obj}. {Pron} found {a} on Monday and {b} on Tuesday. "
            "How many {obj} did {pron} find over the two days?",
        ],
        "-": [
            "A shelf had {a} {obj}. {name} sold {b} of them. How many {obj} remain on the shelf?",
            "{name} started the day with {a} {obj}. By evening {pron} had used {b} of them. "
            "How many {obj} were not used?",
            "{name} and {other} have {a} {obj} together. {other} has {b} of them. "
            "How many {obj} does {name} have?",
        ],
        "++": [
            "A shelf had {a} {obj}. The shop added {b} {obj} on Monday and {c} {obj} on Friday. "
            "What is the number of {obj} on the shelf at the end of the week?",
            "{name} owns {a} {obj}. For a birthday {pron} got {b} {obj} from {other} and {c} {obj} from a cousin. "
            "What is the number of {obj} {name} owns after the birthday?",
        ],
        "+-": [
            "A shelf had {a} {obj}. A delivery brought {b} more, and later {name} sold {c}. "
            "What is the number of {obj} on the shelf after that?",
            "{name} owns {a} {obj}. {other} hands over {b} more, and then {name} donates {c} to a school. "
            "What is the number of {obj} {name} keeps?",
        ],
        "-+": [
            "A shelf had {a} {obj}. {name} sold {b} of them, and then a delivery brought {c} more. "
            "What is the number of {obj} on the shelf after that?",
            "{name} owns {a} {obj}. {Pron} donates {b} to a school, and then {other} hands over {c} more. "
            "What is the number of {obj} {name} keeps?",
        ],
        "--": [
            "A shelf had {a} {obj}. {name} sold {b} of them in the morning and {c} in the evening. "
            "What is the number of {obj} left on the shelf?",
            "{name} owns {a} {obj}. {Pron} donates {b} to a school and {c} to a library. "
            "What is the number of {obj} {name} keeps?",
        ],
    },
}

# Operand ranges per difficulty: (low, high, possible operation sequences).
_SPECS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "add1": (2, 9, ("+",)),
    "addsub": (2, 20, ("+", "-")),
    "twostep": (2, 50, ("++", "+-", "-+", "--")),
}


@dataclass(frozen=True)
class SyntheticItem:
    """A generated problem with the numbers behind it, so tests can recompute the answer."""

    problem: Problem
    template: str
    operands: tuple[int, ...]
    ops: str


def apply_ops(operands: tuple[int, ...], ops: str) -> int:
    value = operands[0]
    for op, x in zip(ops, operands[1:]):
        value = value + x if op == "+" else value - x
    return value


def _draw_operands(rng: random.Random, low: int, high: int, ops: str) -> tuple[int, ...] | None:
    # Every intermediate and final result stays >= 0: "gives away more than it has" is no
    # easy problem. Returns None when the draw cannot satisfy that; the caller redraws.
    values = [rng.randint(low, high)]
    current = values[0]
    for op in ops:
        if op == "+":
            x = rng.randint(low, high)
        elif current < low:
            return None
        else:
            x = rng.randint(low, min(high, current))
        values.append(x)
        current = current + x if op == "+" else current - x
    return tuple(values)


def synthetic_items(n: int, seed: int = 0, difficulty: str = "add1", split: str = "train") -> list[SyntheticItem]:
    if difficulty == "word":
        return _word_items(n, seed, SPLITS.get(split, split))
    if difficulty not in _SPECS:
        raise ValueError(f"unknown synthetic difficulty {difficulty!r}; choose one of {DIFFICULTIES}")
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; choose one of {tuple(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    split = SPLITS[split]
    low, high, op_choices = _SPECS[difficulty]
    templates = TEMPLATES[split]
    # A string seed is hashed (sha512) by random.Random: stable across runs and platforms,
    # and a different stream for each (difficulty, split, seed).
    # An upper bound on distinct questions (some templates omit {other}): fail fast beyond it.
    bound = sum(len(templates[ops]) * (high - low + 1) ** (len(ops) + 1) for ops in op_choices)
    if n > bound * len(NAMES) * (len(NAMES) - 1) * len(OBJECTS):
        raise ValueError(f"cannot draw {n} distinct {difficulty!r} problems; ask for fewer")
    rng = random.Random(f"ssb-synthetic:{difficulty}:{split}:{seed}")
    items: list[SyntheticItem] = []
    seen: set[str] = set()
    misses = 0  # draws in a row that gave nothing new: many means the space is used up
    while len(items) < n:
        if misses > 10_000:
            raise ValueError(f"cannot draw {n} distinct {difficulty!r} problems; ask for fewer")
        misses += 1
        ops = rng.choice(op_choices)
        operands = _draw_operands(rng, low, high, ops)
        if operands is None:
            continue
        template = rng.choice(templates[ops])
        (name, pron), (other, _) = rng.sample(NAMES, 2)
        fields = dict(zip("abc", operands))
        question = template.format(name=name, other=other, Pron=pron.capitalize(), pron=pron,
                                   obj=rng.choice(OBJECTS), **fields)
        if question in seen:  # retry on collision: no duplicate questions within one call
            continue
        seen.add(question)
        misses = 0
        problem = Problem(
            id=f"synth-{difficulty}-{split}-{seed}-{len(items)}",
            question=question,
            answer=str(apply_ops(operands, ops)),
            source="synthetic",
        )
        items.append(SyntheticItem(problem=problem, template=template, operands=operands, ops=ops))
    return items


def _word_items(n: int, seed: int, split: str) -> list[SyntheticItem]:
    if split not in TEMPLATES:
        raise ValueError(f"unknown synthetic split {split!r}; choose one of {tuple(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"ssb-synthetic:word:{split}:{seed}")
    items: list[SyntheticItem] = []
    seen: set[str] = set()
    while len(items) < n:  # ~10^9 distinct questions: collisions are rare, never exhausting
        template, fields, operands, answer, op = word_problems.draw(rng, split)
        (name, pron), (other, _) = rng.sample(NAMES, 2)
        obj, obj2 = rng.sample(OBJECTS, 2)
        question = template.format(name=name, other=other, Pron=pron.capitalize(), pron=pron, obj=obj, obj2=obj2,
                                   **fields)
        if question in seen:
            continue
        seen.add(question)
        problem = Problem(id=f"synth-word-{split}-{seed}-{len(items)}", question=question, answer=str(answer),
                          source="synthetic")
        items.append(SyntheticItem(problem=problem, template=template, operands=operands, ops=op))
    return items


def synthetic_problems(n: int, seed: int = 0, difficulty: str = "add1", split: str = "train") -> list[Problem]:
    """`n` distinct word problems with exact integer answers; same arguments, same output."""
    return [item.problem for item in synthetic_items(n, seed=seed, difficulty=difficulty, split=split)]
