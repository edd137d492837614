"""The chats SSB shows the model: tutor (rollouts and the student), and teacher.

Rollouts are sampled with solved examples in the chat (`rollout_shots`): a small model
almost never finishes with `\\boxed{}` zero-shot, so curation would keep nothing. The student
is trained and evaluated on the bare question under the tutor system prompt, the prompt
inference uses. The teacher is shown worked examples *of the teacher task* for the same
reason (on SmolLM2-135M, 4% → 53% of teacher answers accepted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

Message = dict[str, str]

TUTOR_SYSTEM = (
    "You are a careful math tutor. Solve the problem step by step, showing each "
    "calculation. Finish with the final answer in the form \\boxed{answer}."
)

TEACHER_SYSTEM = (
    "You are an expert math teacher. You see a problem, a right solution and a wrong one. "
    "Write your own short, complete solution, warn in one sentence about the mistake, and "
    "finish with \\boxed{answer}. Never mention the other solutions."
)

# (question, solution) pairs shown before the real question in rollouts.
SOLVED_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Sara has 5 pencils. Her friend gives her 3 more pencils. How many pencils does Sara have now?",
        "Sara starts with 5 pencils.\nShe gets 3 more: 5 + 3 = 8.\nSara has 8 pencils.\n\\boxed{8}",
    ),
    (
        "A shop had 12 cakes and sold 4 of them. How many cakes are left?",
        "The shop starts with 12 cakes.\nIt sells 4: 12 - 4 = 8.\nThere are 8 cakes left.\n\\boxed{8}",
    ),
    (
        "Ben reads 6 pages on Monday and 9 pages on Tuesday. How many pages does he read in all?",
        "Monday: 6 pages. Tuesday: 9 pages.\nIn all: 6 + 9 = 15.\nBen reads 15 pages.\n\\boxed{15}",
    ),
    (
        "There are 3 boxes with 4 apples in each box. How many apples are there?",
        "Each box has 4 apples and there are 3 boxes.\n3 * 4 = 12.\nThere are 12 apples.\n\\boxed{12}",
    ),
)

# Worked examples of the teacher task: (question, correct, wrong, wrong_answer, model answer).
# Short answers on purpose: a small model copies their length, and long ones ramble past the box.
TEACHER_EXAMPLES: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "Mia has 7 stickers. She gives 2 stickers to her brother. How many stickers does Mia have now?",
        "Mia has 7 stickers and gives away 2: 7 - 2 = 5.\n\\boxed{5}",
        "Mia has 7 stickers and 2 more: 7 + 2 = 9.\n\\boxed{9}",
        "9",
        "Mia gives stickers away, so we subtract: 7 - 2 = 5.\n"
        "Be careful: giving away means taking away, not adding.\n\\boxed{5}",
    ),
    (
        "Leo has 4 red balls and 5 blue balls. How many balls does Leo have?",
        "Leo has 4 + 5 = 9 balls.\n\\boxed{9}",
        "Leo has 5 - 4 = 1 ball.\n\\boxed{1}",
        "1",
        "We want all the balls together, so we add: 4 + 5 = 9.\n"
        "Be careful: the question asks for the total, not the difference.\n\\boxed{9}",
    ),
    (
        "There are 3 bags with 6 oranges in each bag. How many oranges are there?",
        "3 bags of 6 oranges: 3 * 6 = 18.\n\\boxed{18}",
        "3 + 6 = 9 oranges.\n\\boxed{9}",
        "9",
        "Each of the 3 bags holds 6 oranges, so we multiply: 3 * 6 = 18.\n"
        "Be careful: equal groups mean multiplying, not adding the two numbers.\n\\boxed{18}",
    ),
)


@dataclass(frozen=True)
class Prompts:
    tutor_system: str = TUTOR_SYSTEM
    teacher_system: str = TEACHER_SYSTEM
    rollout_shots: int = 2
    teacher_shots: int = 3

    @classmethod
    def from_config(cls, cfg: Any) -> "Prompts":
        """Takes a `ssb.config.PromptConfig`; None texts fall back to the built-in ones."""
        return cls(
            tutor_system=cfg.tutor_system or TUTOR_SYSTEM,
            teacher_system=cfg.teacher_system or TEACHER_SYSTEM,
            rollout_shots=cfg.rollout_shots,
            teacher_shots=cfg.teacher_shots,
        )


def student_messages(question: str, prompts: Prompts = Prompts()) -> list[Message]:
    """The prompt the student is trained on and evaluated with: no examples, no hints."""
    return [{"role": "system", "content": prompts.tutor_system}, {"role": "user", "content": question}]


def rollout_messages(question: str, prompts: Prompts = Prompts()) -> list[Message]:
    messages = [{"role": "system", "content": prompts.tutor_system}]
    for q, a in SOLVED_EXAMPLES[: prompts.rollout_shots]:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages.append({"role": "user", "content": question})
    return messages


def teacher_request(question: str, correct: str, incorrect: str, incorrect_answer: str | None) -> str:
    wrong = incorrect_answer if incorrect_answer is not None else "no final answer"
    return (
        f"Problem: {question}\n\n"
        f"Right solution:\n{correct.strip()}\n\n"
        f"Wrong solution (it ends with {wrong}):\n{incorrect.strip()}\n\n"
        "Write your own solution to the problem and end with \\boxed{answer}."
    )


def teacher_messages(
    question: str, correct: str, incorrect: str, incorrect_answer: str | None, prompts: Prompts = Prompts()
) -> list[Message]:
    messages = [{"role": "system", "content": prompts.teacher_system}]
    for q, good, bad, bad_answer, answer in TEACHER_EXAMPLES[: prompts.teacher_shots]:
        messages += [
            {"role": "user", "content": teacher_request(q, good, bad, bad_answer)},
            {"role": "assistant", "content": answer},
        ]
    messages.append({"role": "user", "content": teacher_request(question, correct, incorrect, incorrect_answer)})
    return messages


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: Sequence[Message], **kwargs: Any) -> Any: ...


def render_ids(tokenizer: ChatTokenizer, messages: Sequence[Message]) -> list[int]:
    """Token ids of the chat with the assistant turn opened: exactly what the engine is given."""
    out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return [int(i) for i in out]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Names a vocabulary: shards made under another tokenizer must be refused, whatever it is called."""
    import hashlib
    import json

    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()[:12]
    return f"{type(tokenizer).__name__}/{len(vocab)}/{digest}"
