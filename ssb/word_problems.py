"""The "word" synthetic difficulty: one-step word problems in all four operations, with
two-digit numbers, comparisons and, in half of them, a distractor sentence holding a number
the question does not use: the shape of real grade-school problems (SVAMP's are one- and
two-step, and it was built by adding exactly such distractors).

Curation and evaluation draw from disjoint template sets, as for the other difficulties;
so do the distractor sentences.
"""

from __future__ import annotations

import random

# Placeholders: {name} {other} {Pron} {pron} {obj} {a} {b}; {unit} is the object of a
# per-item rate ("bags", "boxes"). The answer is a op b.
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "train": {
        "+": [
            "{name} has {a} {obj}. {Pron} buys {b} more {obj}. How many {obj} does {name} have now?",
            "There are {a} {obj} in the garden and {b} {obj} in the house. How many {obj} are there in all?",
            "{name} collected {a} {obj} last week and {b} {obj} this week. How many {obj} did {pron} collect altogether?",
            "{name} gave away {b} {obj} and now has {a} {obj} left. How many {obj} did {name} have at first?",
        ],
        "-": [
            "{name} had {a} {obj}. {Pron} gave {b} {obj} to {other}. How many {obj} does {name} have now?",
            "A store had {a} {obj}. It sold {b} of them. How many {obj} are left in the store?",
            "{name} wants to collect {a} {obj}. {Pron} already has {b}. How many more {obj} does {pron} need?",
            "{name} has {a} {obj} and {other} has {b} {obj}. How many more {obj} does {name} have than {other}?",
        ],
        "*": [
            "{name} has {a} {unit}. Each {unit1} holds {b} {obj}. How many {obj} does {name} have in all?",
            "There are {a} rows of {obj} with {b} {obj} in each row. How many {obj} are there?",
            "{name} buys {b} {obj} every day for {a} days. How many {obj} does {pron} buy in total?",
            "Each of {a} children brought {b} {obj} to school. How many {obj} did the children bring?",
        ],
        "/": [
            "{name} has {a} {obj} and puts them equally into {b} {unit}. How many {obj} are in each {unit1}?",
            "{a} {obj} are shared equally among {b} friends. How many {obj} does each friend get?",
            "{name} packs {a} {obj} into {unit} of {b}. How many {unit} does {pron} fill?",
            "{name} read {a} pages in {b} days, the same number each day. How many pages did {pron} read each day?",
        ],
    },
    "test": {
        "+": [
            "In the morning {name} counted {a} {obj}. In the afternoon {pron} counted {b} more. "
            "What is the total number of {obj} {name} counted?",
            "{other} gave {name} {b} {obj}. Before that {name} had {a} {obj}. How many {obj} does {name} have now?",
            "A box has {a} red {obj} and {b} blue {obj}. How many {obj} are in the box?",
            "After using {b} {obj}, {name} still has {a} {obj}. How many {obj} did {name} start with?",
        ],
        "-": [
            "{name} started with {a} {obj} and used {b} of them. How many {obj} remain?",
            "There were {a} {obj} on a shelf. {other} took {b} of them. How many {obj} are still on the shelf?",
            "A class needs {a} {obj} for a project and has {b} so far. How many {obj} are still needed?",
            "{name} scored {a} points and {other} scored {b} points. How many fewer points did {other} score than {name}?",
        ],
        "*": [
            "A pack holds {b} {obj}. {name} buys {a} packs. How many {obj} does {name} buy?",
            "{name} saves {b} dollars each week. How many dollars does {pron} save in {a} weeks?",
            "A garden has {a} beds with {b} plants in each bed. How many plants are in the garden?",
            "There are {a} tables and {b} chairs at each table. How many chairs are there?",
        ],
        "/": [
            "{name} baked {a} {obj} and split them evenly onto {b} plates. How many {obj} are on each plate?",
            "A rope {a} meters long is cut into {b} equal pieces. How long is each piece in meters?",
            "{a} students sit in groups of {b}. How many groups are there?",
            "{name} paid {a} dollars for {b} tickets that cost the same. How much did each ticket cost in dollars?",
        ],
    },
}

# Said in the middle of a problem; the number is never used by its question.
DISTRACTORS: dict[str, list[str]] = {
    "train": [
        "{name} also has {d} {obj2}.",
        "{other} has {d} {obj2}.",
        "Last year {name} had {d} {obj2}.",
    ],
    "test": [
        "There are also {d} {obj2} in the room.",
        "{other} owns {d} {obj2} as well.",
        "Yesterday {name} saw {d} {obj2}.",
    ],
}
UNITS = [("boxes", "box"), ("bags", "bag"), ("baskets", "basket"), ("jars", "jar"), ("crates", "crate")]
OPS = ("+", "-", "*", "/")
# Roughly SVAMP's own mix: subtraction most, then addition, division and multiplication.
OP_WEIGHTS = (3, 4, 2, 2)


def draw(rng: random.Random, split: str) -> tuple[str, dict[str, object], tuple[int, ...], int, str]:
    """(template with its distractor placed, fields other than names and objects, operands,
    answer, op)."""
    op = rng.choices(OPS, weights=OP_WEIGHTS)[0]
    if op == "+":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        answer = a + b
    elif op == "-":
        a = rng.randint(20, 99)
        b = rng.randint(10, a - 1)
        answer = a - b
    elif op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 15)
        answer = a * b
    else:
        b, answer = rng.randint(2, 12), rng.randint(2, 15)
        a = answer * b
    template = rng.choice(TEMPLATES[split][op])
    if rng.random() < 0.5:
        sentences = template.split(". ")
        at = rng.randint(1, max(1, len(sentences) - 1))
        distractor = rng.choice(DISTRACTORS[split]).rstrip(".")
        template = ". ".join(sentences[:at] + [distractor] + sentences[at:])
    unit, unit1 = rng.choice(UNITS)
    return template, {"a": a, "b": b, "d": rng.randint(2, 99), "unit": unit, "unit1": unit1}, (a, b), answer, op
