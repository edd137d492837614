from ssb.prompts import Prompts, render_ids, rollout_messages, student_messages, teacher_messages


def test_student_sees_only_the_bare_question():
    msgs = student_messages("What is 2+3?")
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[-1]["content"] == "What is 2+3?"


def test_rollouts_carry_solved_examples():
    msgs = rollout_messages("What is 2+3?", Prompts(rollout_shots=2))
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert all("\\boxed{" in m["content"] for m in msgs if m["role"] == "assistant")


def test_teacher_sees_both_rollouts_and_the_wrong_answer():
    msgs = teacher_messages("Q?", "right way \\boxed{5}", "wrong way \\boxed{7}", "7", Prompts(teacher_shots=1))
    last = msgs[-1]["content"]
    assert "right way" in last and "wrong way" in last and "ends with 7" in last
    assert len(msgs) == 4  # system, one worked example (user + assistant), the request


def test_render_ids_matches_the_chat_template(model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    ids = render_ids(tok, student_messages("What is 2+3?"))
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>assistant\n") and "What is 2+3?" in text
    assert all(isinstance(i, int) for i in ids)
