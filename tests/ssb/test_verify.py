"""Answer extraction and equivalence, against real math-verify (no mocks)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from ssb.records import Verdict
from ssb.verify import Verifier, extract_answer, is_equivalent

DATA = Path("/work/shared/data")
SHORT_TIMEOUT_S = 1.0
# A lazy restart after a time-out (spawn + importing sympy) lands on the next call.
SLACK_S = 3.0


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        pytest.skip(f"{path} is not on this machine")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def verifier():
    with Verifier(timeout_s=5.0, fallbacks=("answer_is",)) as v:
        yield v


@pytest.fixture(scope="module")
def quick():
    """A verifier with a short deadline, for inputs that are meant to time out."""
    with Verifier(timeout_s=SHORT_TIMEOUT_S) as v:
        v.check("\\boxed{1}", "1")  # start the child outside any timed section
        yield v


# --- extraction -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{ 2 }", "2"),
        ("\\fbox{7}", "7"),
        ("\\boxed {\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),
        ("\\boxed{3} and an unfinished \\boxed{\\frac{1}{2}", "3"),
        ("The answer is $18$.", "18"),
        ("**Answer:** 18 dollars.", "18 dollars"),
        ("the answer is 3. Later: the final answer is 4", "4"),
        ("The answer is: \\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("The answer is 3. So we are done.", "3"),
        ("The answer is 3.5 m", "3.5 m"),
        ("no answer here", None),
        ("", None),
        ("\\boxed{}", None),
    ],
)
def test_extract_answer_prefers_last_boxed_then_answer_is(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_fallbacks_run_in_the_configured_order():
    text = "x = 3\n#### 1,000\nwe used 12 eggs"
    assert extract_answer(text, ("gsm8k", "last_number")) == "1,000"
    assert extract_answer(text, ("last_number", "gsm8k")) == "12"
    assert extract_answer(text, ()) is None
    assert extract_answer("The answer is 5. \\boxed{6}", ("answer_is",)) == "6"
    with pytest.raises(ValueError):
        extract_answer(text, ("nonsense",))


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 10_000,
        "}" * 10_000 + "{" * 10_000,
        "1" * 1_000_000,
        "the answer is " * 70_000,
        "\\boxed{\\boxed{" * 5_000 + "1" + "}" * 3_000,
    ],
)
def test_extract_answer_is_fast_on_hostile_text(text):
    start = time.perf_counter()
    extract_answer(text, ("gsm8k", "answer_is", "last_number"))
    assert time.perf_counter() - start < 1.0  # a backtracking regex takes minutes


# --- MATH500 and GSM8K references -------------------------------------------------------


def test_math500_answers_are_equivalent_to_themselves(verifier):
    rows = _jsonl(DATA / "math500" / "test.jsonl")
    failed = [r["id"] for r in rows if not verifier.equivalent(r["answer"], r["answer"])]
    assert failed == []


def test_math500_boxed_solution_answers_match_the_reference(verifier):
    rows = _jsonl(DATA / "math500" / "test.jsonl")
    results = verifier.check_many([(r["solution"], r["answer"]) for r in rows])
    failed = [(r["id"], pred, v) for r, (pred, v) in zip(rows, results) if v != Verdict.CORRECT]
    assert failed == []


def test_math500_answers_differ_from_their_neighbours(verifier):
    """A negative control: a verifier that says yes too easily fails here."""
    rows = _jsonl(DATA / "math500" / "test.jsonl")
    answers = [r["answer"] for r in rows]
    pairs = list(zip(answers[1:], answers[:-1]))  # (pred, gold)
    results = verifier.check_many([(f"\\boxed{{{p}}}", g) for p, g in pairs])
    said_equal = {i for i, (_, v) in enumerate(results) if v == Verdict.CORRECT}
    same_value = {i for i, (p, g) in enumerate(pairs) if p.split("=")[-1].strip() == g.split("=")[-1].strip()}
    assert said_equal == same_value


def test_gsm8k_answers_are_equivalent_to_themselves(verifier):
    rows = _jsonl(DATA / "gsm8k" / "test.jsonl")
    golds = [extract_answer(r["answer"], ("gsm8k",)) for r in rows]
    assert None not in golds
    failed = [g for g in golds if not verifier.equivalent(g, g)]
    assert failed == []


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("$18", "18"),
        ("\\$18", "18"),
        ("18.00", "18"),
        ("$18.00", "18"),
        ("1,000", "1000"),
        ("1000", "1,000"),
        ("1,000,000.00", "1000000"),
        ("18 dollars", "18"),
        ("5 apples", "5"),
        ("7 pencils", "7"),
        ("$1,200 per month", "1200"),
        ("18 \\text{ dollars}", "18"),
        ("-3", "-3"),
        ("18.", "18"),
    ],
)
def test_gsm8k_style_predictions_match(verifier, pred, gold):
    assert verifier.equivalent(pred, gold)


def test_boxed_answer_inside_a_sentence_is_correct(verifier):
    text = "She makes 9 * 2 = 18 dollars, so the total is \\boxed{18} dollars a day."
    assert verifier.check(text, "18") == ("18", Verdict.CORRECT)
    assert verifier.check("Answer: $18", "18") == ("$18", Verdict.CORRECT)


# --- symbolic equivalence --------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("0.5", "\\frac{1}{2}"),
        ("\\frac{1}{2}", "0.5"),
        ("1/2", "\\dfrac12"),
        ("(1,2)", "(1, 2)"),
        ("[0, 1)", "[0,1)"),
        ("-\\frac{3}{4}", "-0.75"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
        ("x^2+2x+1", "(x+1)^2"),
        ("90^\\circ", "90"),
        ("5 \\text{ cm}", "5"),
        ("[1,2]", "x \\in [1,2]"),
        ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("\\text{(C)}", "\\text{(C)}"),
    ],
)
def test_equivalent_forms_are_equivalent(verifier, pred, gold):
    assert verifier.equivalent(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("3", "4"),
        ("(2,1)", "(1,2)"),
        ("[0, 1]", "[0, 1)"),
        ("-3", "3"),
        ("0.51", "\\frac{1}{2}"),
        ("18 dollars", "19"),
        ("1,001", "1000"),
        ("x^2", "x^3"),
    ],
)
def test_different_answers_are_not_equivalent(verifier, pred, gold):
    assert not verifier.equivalent(pred, gold)


@pytest.mark.parametrize("pred", [None, "", "   "])
def test_missing_prediction_is_never_equivalent(verifier, pred):
    assert not verifier.equivalent(pred, "1")
    assert not is_equivalent(pred, "1")


def test_check_reports_no_answer_without_a_final_answer(verifier):
    assert verifier.check("I am not sure.", "3") == (None, Verdict.NO_ANSWER)
    assert verifier.check("\\boxed{4}", "3") == ("4", Verdict.INCORRECT)


def test_module_level_is_equivalent():
    assert is_equivalent("\\frac{2}{4}", "0.5")
    assert not is_equivalent("3", "4")


# --- hostile input, time-outs, threads -------------------------------------------------

HANGS = ["9^{9^{9^{9}}}", "10^{10^{10^{10}}}", "2^{2^{40}}"]


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 10_000,
        "\\boxed{9**9**9**9}",
        "\\boxed{10^{10^{10^{10}}}}",
        "\\boxed{9^{9^{9^{9}}}}",
        "x" * 1_000_000,
        "The answer is " + "(" * 5_000,
        "\\boxed{" + "\\frac{1}{" * 2_000 + "2" + "}" * 2_000 + "}",
        "\\boxed{1}}}}{{{\\frac{",
        "\\boxed{" + "x+" * 9_000 + "1}",
        "\\boxed{" + "(" * 3_000 + "1" + ")" * 3_000 + "}",
        "\\boxed{" + "1" * 15_000 + "}",
    ],
)
def test_check_returns_within_the_deadline_on_hostile_input(quick, text):
    start = time.perf_counter()
    pred, verdict = quick.check(text, "3")
    assert time.perf_counter() - start < SHORT_TIMEOUT_S + SLACK_S
    assert verdict in set(Verdict) and verdict != Verdict.CORRECT


def test_timeout_is_reported_and_the_verifier_restarts(quick):
    before = dict(quick.stats)
    assert quick.check(f"\\boxed{{{HANGS[0]}}}", "3") == (HANGS[0], Verdict.TIMEOUT)
    assert quick.stats["timeouts"] == before["timeouts"] + 1
    assert quick.check("\\boxed{3}", "3") == ("3", Verdict.CORRECT)
    assert quick.stats["restarts"] == before["restarts"] + 1
    assert not quick.equivalent(HANGS[1], "3")


def test_check_many_keeps_going_after_a_timed_out_item(quick):
    items = [("\\boxed{1}", "1"), (f"\\boxed{{{HANGS[2]}}}", "3"), ("\\boxed{4}", "3"), ("hm", "3"), ("\\boxed{2}", "2")]
    verdicts = [v for _, v in quick.check_many(items)]
    assert verdicts == ["correct", "timeout", "incorrect", "no_answer", "correct"]


def test_is_equivalent_times_out_to_false():
    start = time.perf_counter()
    assert not is_equivalent(HANGS[0], "3", timeout_s=SHORT_TIMEOUT_S)
    assert time.perf_counter() - start < SHORT_TIMEOUT_S + SLACK_S


def test_works_from_a_non_main_thread(verifier):
    out: list = []
    worker = threading.Thread(target=lambda: out.append(verifier.check("\\boxed{0.5}", "\\frac12")))
    worker.start()
    worker.join(timeout=30)
    assert out == [("0.5", Verdict.CORRECT)]


def test_works_from_several_threads_at_once(quick):
    cases = [(f"\\boxed{{{n}}}", str(n), Verdict.CORRECT) for n in range(6)]
    cases += [(f"\\boxed{{{n + 1}}}", str(n), Verdict.INCORRECT) for n in range(6)]
    cases.append((f"\\boxed{{{HANGS[1]}}}", "3", Verdict.TIMEOUT))
    got: dict[int, str] = {}

    def run(i: int) -> None:
        text, gold, _ = cases[i]
        got[i] = quick.check(text, gold)[1]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert got == {i: expected for i, (_, _, expected) in enumerate(cases)}


def test_close_stops_the_child_and_a_closed_verifier_can_start_again():
    v = Verifier(timeout_s=5.0)
    assert v.check("\\boxed{2}", "2")[1] == Verdict.CORRECT
    zygote = v._zygote
    v.close()
    assert zygote is not None and zygote.poll() is not None
    assert v.check("\\boxed{2}", "2")[1] == Verdict.CORRECT
    v.close()
