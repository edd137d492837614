"""Property-based fuzzing of answer extraction and verification (hypothesis, no mocks).

Hostile model outputs and hostile problem files both reach these functions: deep nesting,
huge numbers, unbalanced braces, LaTeX bombs (nested fractions, root towers, power towers
like 9^9^9^9, underbrace chains), unicode, NUL bytes, very long strings. Properties:
- nothing raises (extraction documents no exception for a string argument);
- results are well-typed (None or a stripped, non-empty string taken from the input;
  verdicts are members of `Verdict`);
- no call runs past its bound: extraction is pure string work (well under a second even
  for 200k characters); a `Verifier` call ends within its per-item deadline plus a small
  slack for killing the child (restarting the child after a time-out is lazy; the test
  pays it untimed through `Verifier.start()` before each measured call).
  On a shared 2-core machine the scheduler alone can stall a process for seconds, so a
  call over the slack is counted and listed, and fails the test past 1% of calls; a call
  past HARD_LIMIT_S (a missing deadline: `9^{9^{9^9}}` runs for hours) fails at once.

Every example is counted, and the last test asserts the total is at least 10,000: a
strategy that hypothesis exhausts early cannot pass silently. Runs are derandomized, so
CI sees the same inputs every time.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssb.data import extract_reference_answer, last_boxed
from ssb.records import Verdict
from ssb.verify import Verifier, extract_answer

pytestmark = pytest.mark.slow  # ~2 min on a quiet 2-core box; 13 min at load 25 with 1,000 verifier calls

# Examples per test (hypothesis may stop a strategy early; the counters are what count).
EXTRACT_EXAMPLES = 7_000
REFERENCE_EXAMPLES = 2_600
CHECK_EXAMPLES = 300
EQUIVALENT_EXAMPLES = 150
REQUIRED_TOTAL = 10_000

EXTRACT_BOUND_S = 1.0  # pure string work; ~1 ms typical, a backtracking regex takes minutes
VERIFY_TIMEOUT_S = 1.0  # the per-item deadline of the fuzzed Verifier
KILL_SLACK_S = 2.0  # extraction + SIGKILL and reaping a hung child on a loaded machine
HARD_LIMIT_S = 15.0  # past this no scheduler explains it: the bound is not enforced
MAX_LATE_SHARE = 0.01

COUNTS: Counter[str] = Counter()  # examples run, per test
OUTCOMES: Counter[str] = Counter()  # verdicts seen, for the report
SLOWEST: dict[str, float] = {}
LATE: dict[str, list[str]] = {}  # calls over their bound + slack, per test


def _fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example, HealthCheck.filter_too_much])


# --- strategies ----------------------------------------------------------------------------

ATOMS = [
    "{", "}", "\\{", "\\}", "\\\\", "\\", "\\boxed{", "\\boxed ", "\\boxed", "\\fbox{", "\\framebox{",
    "\\boxedfoo{", "$", "$$", "####", "The answer is ", "the final answer is: ", "Answer:", "**Answer:** ",
    "\n", " ", "\t", ".", ". ", ",", "-", "+", "*", "**", "/", "^", "_", "!", "(", ")", "[", "]", "=", "%", "&",
    "\\frac{", "\\dfrac", "\\sqrt{", "\\sqrt[", "\\underbrace{", "}_{", "\\overbrace{", "\\left(", "\\right)",
    "\\left\\{", "\\right.", "\\text{", "\\mathrm{", "\\pi", "\\infty", "\\cdot", "\\times", "\\div", "\\pm",
    "\\begin{pmatrix}", "\\end{pmatrix}", "\\begin{cases}", "\\end{cases}", "\\sum_{i=1}^{", "\\int_0^{",
    "\\log", "\\ln", "\\sin", "\\binom{", "\\operatorname{", "\\mathbb{R}", "\\cup", "\\in", "\\le",
    "x", "y", "n", "i", "e", "0", "1", "9", "42", "-7", "3.14", ".5", "1,000", "1,2", "50%", "18 dollars",
    "10^{10000}", "9^9^9^9", "9^{9^{9^{9}}}", "1e400", "NaN", "inf", "0x1F",
    "\x00", "\x07", "\ufeff", "\u200b", "\u202e", "é", "ß", "𝟘", "٣", "½", "²", "∞", "√", "÷", "×", "−",
    "\ud800", "\udfff", "日本", "🙂",
    "__import__('os')", "eval(", "lambda: 0", "${", "%s", "\\input{/etc/passwd}",
]

atoms = st.sampled_from(ATOMS)


def _repeat(s: st.SearchStrategy[str], most: int) -> st.SearchStrategy[str]:
    return st.builds(lambda a, k: a * k, s, st.integers(1, most))


def _nest(open_: str, close: str) -> callable:
    return lambda depth, leaf: open_ * depth + leaf + close * depth


BOMBS = {
    "frac": _nest("\\frac{1}{", "}"),
    "dfrac_both": _nest("\\dfrac{", "}{2}"),
    "sqrt_tower": _nest("\\sqrt{", "}"),
    "sqrt_index": _nest("\\sqrt[9]{", "}"),
    "power_tower": lambda d, leaf: "^".join(["9"] * (d + 1)) + leaf,
    "braced_power_tower": _nest("9^{", "}"),
    "underbrace_chain": _nest("\\underbrace{", "}_{\\text{x}}"),
    "overbrace_chain": _nest("\\overbrace{", "}^{n}"),
    "parens": _nest("(", ")"),
    "braces": _nest("{", "}"),
    "left_right": _nest("\\left(", "\\right)"),
    "set_braces": _nest("\\{", "\\}"),
    "boxed_nest": _nest("\\boxed{", "}"),
    "unclosed": lambda d, leaf: "\\boxed{" + "{" * d + leaf,
    "overclosed": lambda d, leaf: "\\boxed{" + leaf + "}" * d,
    "closed_first": lambda d, leaf: "}" * d + "\\boxed{" + leaf + "}" + "{" * d,
    "huge_number": lambda d, leaf: "9" * (d * 7) + leaf,
    "huge_decimal": lambda d, leaf: "0." + "0" * (d * 5) + "1" + leaf,
    "huge_exponent": lambda d, leaf: f"10^{{{10 ** min(d, 60)}}}" + leaf,
    "factorials": lambda d, leaf: "9" + "!" * d + leaf,
    "sum_bound": lambda d, leaf: f"\\sum_{{i=1}}^{{10^{{{d}}}}} i^{{{d}}}" + leaf,
    "binomial": _nest("\\binom{", "}{3}"),
    "matrix": lambda d, leaf: "\\begin{pmatrix}" + "\\\\".join(["&".join([leaf or "1"] * min(d, 60))] * min(d, 60))
    + "\\end{pmatrix}",
    "long_sum": lambda d, leaf: "+".join(["x"] * d) + leaf,
    "product_chain": lambda d, leaf: "\\cdot".join(["(x+1)"] * min(d, 400)) + leaf,
    "commas": lambda d, leaf: ",".join(["1"] * d) + leaf,
    "equals_chain": lambda d, leaf: "=".join(["x"] * d) + leaf,
    "dollars": _nest("$", "$"),
    "text_nest": _nest("\\text{", "}"),
    "backslashes": lambda d, leaf: "\\" * d + "{" + leaf + "}",
}
LEAVES = ["1", "x", "9", "2", "\\pi", "10^{10000}", "", "é\x00", "\\frac{1}{0}", "1/0", "0^0", "i", "∞"]


@st.composite
def latex_bombs(draw: st.DrawFn, most: int = 3_000) -> str:
    kind = draw(st.sampled_from(sorted(BOMBS)))
    depth = draw(st.one_of(st.integers(1, 12), st.integers(1, most)))
    return BOMBS[kind](depth, draw(st.sampled_from(LEAVES)))


def _texts(bomb_depth: int, longest_repeat: int) -> st.SearchStrategy[str]:
    pieces = st.one_of(
        atoms,
        latex_bombs(bomb_depth),
        _repeat(atoms, longest_repeat),
        st.text(max_size=40),  # any unicode (no surrogates)
        st.text(st.characters(codec="utf-8"), max_size=20),
        st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
        st.integers(-(10**40), 10**40).map(str),
    )
    return st.lists(pieces, max_size=12).map("".join)


texts = _texts(bomb_depth=3_000, longest_repeat=20_000)
fallback_orders = st.permutations(["gsm8k", "answer_is", "last_number"]).flatmap(
    lambda order: st.integers(0, 3).map(lambda k: tuple(order[:k])))


def _well_typed_answer(found: object, source: str) -> None:
    assert found is None or isinstance(found, str), type(found)
    if found is not None:
        assert found and found == found.strip(), repr(found[:80])
        assert found in source  # extraction never invents text


def _timed(fn, *args):  # -> (result, seconds)
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def _note(name: str, seconds: float, bound: float, what: str) -> None:
    COUNTS[name] += 1
    SLOWEST[name] = max(SLOWEST.get(name, 0.0), seconds)
    assert seconds < HARD_LIMIT_S, f"{name}: {seconds:.1f} s on {what[:120]!r}"
    if seconds >= bound:
        LATE.setdefault(name, []).append(f"{seconds:.2f} s on {what[:120]!r}")


def _assert_on_time(name: str) -> None:
    late = LATE.get(name, [])
    assert COUNTS[name] and len(late) <= MAX_LATE_SHARE * COUNTS[name], late


# --- extraction: in-process, fast ------------------------------------------------------------


@_fuzz_settings(EXTRACT_EXAMPLES)
@given(text=texts, fallbacks=fallback_orders)
def _fuzz_extraction(text: str, fallbacks: tuple[str, ...]) -> None:
    found, seconds = _timed(extract_answer, text, fallbacks)
    _well_typed_answer(found, text)
    boxed, seconds2 = _timed(last_boxed, text)
    assert boxed is None or (isinstance(boxed, str) and boxed in text)
    _note("extract", max(seconds, seconds2), EXTRACT_BOUND_S, text)


reference_values = st.one_of(
    texts,
    st.integers(-(10**40), 10**40),
    st.sampled_from([10**5000, -(10**10000), 2**64, 0, -0]),  # past Python's int->str digit limit
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.builds(lambda body: body + "\n#### " + body, texts),  # GSM8K style
)


@_fuzz_settings(REFERENCE_EXAMPLES)
@given(value=reference_values, field_name=st.sampled_from(["answer", "solution", "final_answer"]))
def _fuzz_reference(value: object, field_name: str) -> None:
    found, seconds = _timed(extract_reference_answer, value, field_name)
    assert found is None or (isinstance(found, str) and found.strip() == found and found), repr(found)
    _note("reference", seconds, EXTRACT_BOUND_S, repr(value)[:120] if not isinstance(value, int) else "an int")


# --- verification: a child process with a hard deadline -----------------------------------


_VERIFIER: list[Verifier] = []  # the module's verifier, for the hypothesis bodies


@pytest.fixture(scope="module")
def fuzz_verifier():
    with Verifier(timeout_s=VERIFY_TIMEOUT_S, fallbacks=("answer_is", "last_number")) as v:
        _VERIFIER[:] = [v]
        v.start()  # the first start-up (the fork server importing sympy) is no call's time
        yield v


# Verification inputs are mostly boxed (an unboxed text often has no answer and never
# reaches the child). Each time-out costs a child restart, so most inputs are shallow and
# one branch in four is a deep bomb.
shallow = _texts(bomb_depth=8, longest_repeat=200)
deep = st.one_of(latex_bombs(600), _texts(bomb_depth=600, longest_repeat=3_000))
verify_answers = st.one_of(shallow, shallow, shallow, deep)
verify_texts = st.one_of(
    verify_answers.map(lambda t: "\\boxed{" + t + "}"),
    verify_answers.map(lambda t: "so \\boxed{" + t + "}."),
    verify_answers,
)
golds = st.one_of(st.sampled_from(["3", "1", "\\frac{1}{2}", "x+1", "18", "\\pi", "0.5", "\\{1,2\\}"]),
                  verify_answers)


@_fuzz_settings(CHECK_EXAMPLES)
@given(text=verify_texts, gold=golds)
def _fuzz_check(text: str, gold: str) -> None:
    fuzz_verifier = _VERIFIER[0]
    fuzz_verifier.start()  # after a time-out the child is gone: start the next one untimed
    (pred, verdict), seconds = _timed(fuzz_verifier.check, text, gold)
    _well_typed_answer(pred, text)
    assert isinstance(verdict, Verdict)
    assert (pred is None) == (verdict == Verdict.NO_ANSWER)
    OUTCOMES[verdict.value] += 1
    _note("check", seconds, VERIFY_TIMEOUT_S + KILL_SLACK_S, text)


@_fuzz_settings(EQUIVALENT_EXAMPLES)
@given(pred=verify_answers, gold=golds)
def _fuzz_equivalent(pred: str, gold: str) -> None:
    fuzz_verifier = _VERIFIER[0]
    fuzz_verifier.start()
    timeouts = fuzz_verifier.stats["timeouts"]
    same, seconds = _timed(fuzz_verifier.equivalent, pred, gold)
    assert isinstance(same, bool)
    _note("equivalent", seconds, VERIFY_TIMEOUT_S + KILL_SLACK_S, f"{pred[:60]} vs {gold[:60]}")
    if fuzz_verifier.stats["timeouts"] > timeouts:
        OUTCOMES["equivalent_timeout"] += 1


def test_extraction_never_crashes_is_well_typed_and_fast() -> None:
    _fuzz_extraction()
    _assert_on_time("extract")


def test_reference_answer_extraction_never_crashes() -> None:
    _fuzz_reference()
    _assert_on_time("reference")


def test_verifier_check_never_crashes_and_keeps_its_deadline(fuzz_verifier: Verifier) -> None:
    _fuzz_check()
    _assert_on_time("check")


def test_verifier_equivalent_on_raw_answers_keeps_its_deadline(fuzz_verifier: Verifier) -> None:
    _fuzz_equivalent()
    _assert_on_time("equivalent")


def test_the_fuzzed_inputs_add_up_to_at_least_ten_thousand(fuzz_verifier: Verifier) -> None:
    parts = ("extract", "reference", "check", "equivalent")
    if not all(COUNTS[p] for p in parts):
        pytest.skip("run with the whole file: the fuzz tests above did not all run")
    total = sum(COUNTS[p] for p in parts)
    print(f"\nfuzzed inputs: {dict(COUNTS)} total={total}; verdicts: {dict(OUTCOMES)}; "
          f"verifier stats: {fuzz_verifier.stats}; slowest call (s): "
          + ", ".join(f"{k}={v:.3f}" for k, v in SLOWEST.items())
          + f"; over the bound: { {k: len(v) for k, v in LATE.items()} }")
    assert total >= REQUIRED_TOTAL
    # The bombs must reach the child: a fuzzer whose inputs all stop at extraction proves little.
    assert OUTCOMES["incorrect"] + OUTCOMES["correct"] > CHECK_EXAMPLES // 4
