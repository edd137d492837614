"""Loading problems from real benchmark files, malformed files, and the synthetic generator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssb.config import DataConfig, SyntheticConfig
from ssb.data import MAX_LINE_BYTES, check_source, extract_reference_answer, last_boxed, load_problems
from ssb.synthetic import TEMPLATES, apply_ops, synthetic_items, synthetic_problems

DATA = Path("/work/shared/data")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared benchmark data not present")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- real benchmark files ---------------------------------------------------------------


@needs_data
def test_gsm8k_train_loads_every_row_with_a_plain_number_answer() -> None:
    problems, report = load_problems(DataConfig(source=str(DATA / "gsm8k/train.jsonl")))
    assert report.total == report.loaded == len(problems) == 7473
    assert report.skipped == {}
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", p.answer) for p in problems)
    assert problems[0].answer == "72" and problems[0].source == "gsm8k"
    assert len({p.id for p in problems}) == 7473


@needs_data
def test_gsm8k_thousands_commas_are_dropped() -> None:
    problems, _ = load_problems(DataConfig(source=str(DATA / "gsm8k/train.jsonl")))
    raw = _rows(DATA / "gsm8k/train.jsonl")
    with_comma = [(p, r) for p, r in zip(problems, raw) if "," in r["answer"].rsplit("####", 1)[1]]
    assert with_comma, "GSM8K train has answers like '#### 1,200'"
    for p, r in with_comma:
        assert p.answer == r["answer"].rsplit("####", 1)[1].strip().replace(",", "")


@needs_data
def test_directory_and_split_pick_the_split_file() -> None:
    test, report = load_problems(DataConfig(source=str(DATA / "gsm8k"), split="test"))
    assert report.loaded == len(test) == 1319
    train, _ = load_problems(DataConfig(source=str(DATA / "gsm8k"), split="train", limit=5))
    assert [p.id for p in train] == [f"gsm8k-train-{i}" for i in range(5)]
    assert not {p.id for p in test} & {p.id for p in train}  # ids differ across splits
    with pytest.raises(FileNotFoundError, match="validation"):
        load_problems(DataConfig(source=str(DATA / "gsm8k"), split="validation"))


@needs_data
def test_math500_answers_equal_its_answer_field() -> None:
    problems, report = load_problems(DataConfig(source=str(DATA / "math500/test.jsonl"), split="test"))
    raw = _rows(DATA / "math500/test.jsonl")
    assert report.loaded == len(problems) == 500 and report.skipped == {}
    assert [p.answer for p in problems] == [r["answer"] for r in raw]
    assert [p.id for p in problems] == [r["id"] for r in raw]
    assert problems[0].question == raw[0]["problem"].strip()


@needs_data
def test_math500_solution_field_gives_the_same_answers_via_last_boxed() -> None:
    # The README says `answer` is the last \boxed{} of `solution`: check our extractor agrees.
    cfg = DataConfig(source=str(DATA / "math500/test.jsonl"), answer_field="solution")
    problems, report = load_problems(cfg)
    raw = _rows(DATA / "math500/test.jsonl")
    assert report.loaded == 500
    assert [p.answer for p in problems] == [r["answer"] for r in raw]


@needs_data
def test_aime24_loads_30() -> None:
    problems, report = load_problems(DataConfig(source=str(DATA / "aime24"), split="test"))
    assert report.loaded == len(problems) == 30
    assert all(p.answer.isdigit() for p in problems)


# --- malformed files --------------------------------------------------------------------


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _obj(**kw: object) -> bytes:
    return json.dumps(kw).encode()


def test_bad_lines_are_counted_per_reason_and_the_rest_loads(tmp_path: Path) -> None:
    lines = [
        _obj(question="Good one?", answer="1"),  # line 1
        b'{"question": "broken", ',  # 2 invalid_json
        b"\xff\xfe\x00\x9c binary \x80\x81",  # 3 invalid_json (not UTF-8)
        _obj(question="x" * (MAX_LINE_BYTES * 3), answer="1"),  # 4 line_too_long
        b"[1, 2, 3]",  # 5 not_an_object
        _obj(question="", answer="1"),  # 6 missing_question (empty)
        _obj(answer="3"),  # 7 missing_question
        _obj(question="No answer?"),  # 8 missing_answer
        _obj(question=5, answer="1"),  # 9 wrong_type
        _obj(question="List answer?", answer=[1]),  # 10 wrong_type
        _obj(question="Number answer?", answer=7),  # 11 ok -> "7"
        _obj(id="a", question="First a?", answer="2"),  # 12 ok
        _obj(id="a", question="Second a?", answer="3"),  # 13 duplicate_id
        _obj(question="y" * 5000, answer="1"),  # 14 question_too_long
        _obj(question="Unboxed?", solution="no box here"),  # 15 unparseable_answer
        _obj(question="Boxed?", solution="so \\boxed{\\frac{1}{2}}."),  # 16 ok
        b"",  # 17 blank: not a record
        _obj(question="GSM?", answer="step\n#### 1,234"),  # 18 ok -> "1234"
        _obj(question="  Padded question?  ", answer=" 9 "),  # 19 ok, stripped
    ]
    problems, report = load_problems(DataConfig(source=str(_write_lines(tmp_path / "bad.jsonl", lines))))
    assert report.skipped == {
        "invalid_json": 2, "line_too_long": 1, "not_an_object": 1, "missing_question": 2,
        "missing_answer": 1, "wrong_type": 2, "duplicate_id": 1, "question_too_long": 1,
        "unparseable_answer": 1,
    }
    assert [(p.question, p.answer) for p in problems] == [
        ("Good one?", "1"), ("Number answer?", "7"), ("First a?", "2"), ("Boxed?", "\\frac{1}{2}"),
        ("GSM?", "1234"), ("Padded question?", "9"),
    ]
    assert report.total == 18 and report.loaded == 6
    assert report.total == report.loaded + sum(report.skipped.values())
    assert report.examples["line_too_long"] == ["line 4: longer than 1048576 bytes"]
    assert report.examples["duplicate_id"][0].startswith("line 13:")
    summary = report.summary()
    assert "loaded 6 of 18" in summary and "invalid_json: 2" in summary


def test_examples_are_capped_at_five_per_reason(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "many.jsonl", [b"{nope"] * 12 + [_obj(question="q?", answer="1")])
    problems, report = load_problems(DataConfig(source=str(path)))
    assert len(problems) == 1 and report.skipped == {"invalid_json": 12}
    assert len(report.examples["invalid_json"]) == 5


def test_a_file_with_no_valid_problem_is_an_error_naming_it_and_why(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "all_bad.jsonl", [b"{nope"] * 4 + [_obj(question="No answer?")] + [b"[1]"])
    with pytest.raises(ValueError) as err:
        load_problems(DataConfig(source=str(path)))
    message = str(err.value)
    assert str(path) in message and "no valid problem in 6 records" in message and "\n" not in message
    assert re.search(r"invalid_json x4 \(e\.g\. line 1: .*missing_answer x1 \(e\.g\. line 5", message)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl: no valid problem in 0 records$"):
        load_problems(DataConfig(source=str(tmp_path / "empty.jsonl")))


def test_fallback_ids_are_stable_row_positions_not_shifted_by_skips(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "mine.jsonl",
                        [_obj(question="a?", answer="1"), b"{bad", _obj(question="c?", answer="3")])
    problems, _ = load_problems(DataConfig(source=str(path)))
    assert [p.id for p in problems] == ["mine-0", "mine-2"]
    assert {p.source for p in problems} == {"mine"}


def test_explicit_fields_and_limit(tmp_path: Path) -> None:
    rows = [{"key": f"k{i}", "q": f"Q{i}?", "gold": i, "answer": "ignored"} for i in range(10)]
    path = _write_lines(tmp_path / "custom.jsonl", [json.dumps(r).encode() for r in rows])
    cfg = DataConfig(source=str(path), question_field="q", answer_field="gold", id_field="key", limit=3)
    problems, report = load_problems(cfg)
    assert [(p.id, p.question, p.answer) for p in problems] == [("k0", "Q0?", "0"), ("k1", "Q1?", "1"),
                                                                 ("k2", "Q2?", "2")]
    assert report.stopped_at_limit and report.loaded == 3


def test_limit_counts_loaded_problems_after_skipping(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "skips.jsonl", [b"{bad"] * 3 + [_obj(question=f"{i}?", answer="1") for i in range(5)])
    problems, report = load_problems(DataConfig(source=str(path), limit=2))
    assert [p.question for p in problems] == ["0?", "1?"] and report.skipped == {"invalid_json": 3}


def test_json_list_and_parquet_files(tmp_path: Path) -> None:
    rows = [{"problem": "P0?", "answer": "0"}, "not an object", {"problem": "P2?", "answer": 2.0},
            {"problem": "P3?", "answer": 0.5}]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    problems, report = load_problems(DataConfig(source=str(tmp_path / "list.json")))
    assert [p.answer for p in problems] == ["0", "2", "0.5"]
    assert report.skipped == {"not_an_object": 1} and report.examples["not_an_object"][0].startswith("item 1")

    table = pa.table({"unique_id": ["u0", "u1", "u0"], "question": ["A?", "B?", "C?"], "answer": ["1", "2", "3"]})
    pq.write_table(table, tmp_path / "train.parquet")
    problems, report = load_problems(DataConfig(source=str(tmp_path), split="train"))
    assert [p.id for p in problems] == ["u0", "u1"] and report.skipped == {"duplicate_id": 1}


def test_a_json_file_that_is_not_a_list_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "obj.json").write_text('{"question": "q", "answer": "1"}')
    with pytest.raises(ValueError, match="list of objects"):
        load_problems(DataConfig(source=str(tmp_path / "obj.json")))


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_problems(DataConfig(source=str(tmp_path / "nope.jsonl")))


def test_hub_failure_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="Offline.*synthetic"):
        load_problems(DataConfig(source="someone/some-dataset"))


# --- answer extraction ------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{42}.", "42"),
    ("\\boxed{1} then \\boxed{\\frac{a}{b}}", "\\frac{a}{b}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are not grouping
    ("\\fbox{7}", "7"),
    ("$\\framebox{204}$ minutes", "204"),
    ("the answer is $\\boxed 5$", "5"),
    ("\\boxed{unclosed", None),
    ("no box", None),
    ("\\boxedfoo{1}", None),
])
def test_last_boxed(text: str, expected: str | None) -> None:
    assert last_boxed(text) == expected


@pytest.mark.parametrize("value, field_name, expected", [
    ("work\n#### 1,234,567", "answer", "1234567"),
    ("#### -3.5", "answer", "-3.5"),
    ("####   ", "answer", None),
    ("solve... \\boxed{x+1}", "solution", "x+1"),
    ("no box", "solution", None),
    ("\\frac{1}{2}", "answer", "\\frac{1}{2}"),
    (12, "answer", "12"),
    (True, "answer", None),
    (float("nan"), "answer", None),
])
def test_extract_reference_answer(value: object, field_name: str, expected: str | None) -> None:
    assert extract_reference_answer(value, field_name) == expected


# --- synthetic generator ----------------------------------------------------------------


@pytest.mark.parametrize("difficulty", ["add1", "addsub", "twostep"])
def test_synthetic_answers_recompute_from_the_operands(difficulty: str) -> None:
    for split in ("train", "test"):
        items = synthetic_items(300, seed=3, difficulty=difficulty, split=split)
        for item in items:
            value = apply_ops(item.operands, item.ops)
            assert item.problem.answer == str(value) and value >= 0
            assert all(str(x) in item.problem.question for x in item.operands)
            assert item.template in TEMPLATES[split][item.ops]
        limit = {"add1": 9, "addsub": 20, "twostep": 50}[difficulty]
        assert all(2 <= x <= limit for item in items for x in item.operands)
        assert {len(item.ops) for item in items} == ({2} if difficulty == "twostep" else {1})


def test_synthetic_by_hand() -> None:
    item = synthetic_items(1, seed=0, difficulty="add1")[0]
    a, b = item.operands
    assert item.problem.answer == str(a + b) and item.ops == "+"
    for item in synthetic_items(50, seed=1, difficulty="addsub"):
        a, b = item.operands
        assert item.problem.answer == str(a + b if item.ops == "+" else a - b)


def test_synthetic_is_deterministic_and_seed_dependent() -> None:
    assert synthetic_problems(100, seed=7, difficulty="addsub") == synthetic_problems(100, seed=7, difficulty="addsub")
    other = synthetic_problems(100, seed=8, difficulty="addsub")
    assert [p.question for p in other] != [p.question for p in synthetic_problems(100, seed=7, difficulty="addsub")]
    assert not {p.id for p in other} & {p.id for p in synthetic_problems(100, seed=7, difficulty="addsub")}


@pytest.mark.parametrize("difficulty", ["add1", "addsub", "twostep"])
def test_synthetic_has_no_duplicate_questions(difficulty: str) -> None:
    problems = synthetic_problems(1000, seed=0, difficulty=difficulty)
    assert len({p.question for p in problems}) == len({p.id for p in problems}) == 1000
    assert {p.source for p in problems} == {"synthetic"}


def _template_regex(template: str) -> re.Pattern[str]:
    # Literal text with every {placeholder} as a wildcard: matches anything the template renders.
    parts = re.split(r"\{\w+\}", template)
    return re.compile(".+?".join(re.escape(p) for p in parts), re.DOTALL)


def test_train_and_test_templates_are_disjoint() -> None:
    train = {t for ts in TEMPLATES["train"].values() for t in ts}
    test = {t for ts in TEMPLATES["test"].values() for t in ts}
    assert not train & test
    train_res = [_template_regex(t) for t in train]
    test_res = [_template_regex(t) for t in test]
    for difficulty in ("add1", "addsub", "twostep"):
        heldout = synthetic_problems(300, seed=0, difficulty=difficulty, split="test")
        curated = synthetic_problems(300, seed=0, difficulty=difficulty, split="train")
        # No held-out question can come from a curation template, nor the other way round.
        assert not any(r.fullmatch(p.question) for p in heldout for r in train_res)
        assert not any(r.fullmatch(p.question) for p in curated for r in test_res)
        assert not {p.question for p in heldout} & {p.question for p in curated}
        assert not {p.id for p in heldout} & {p.id for p in curated}


def test_heldout_is_an_alias_of_test() -> None:
    assert synthetic_problems(20, seed=2, split="heldout") == synthetic_problems(20, seed=2, split="test")


def test_synthetic_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        synthetic_problems(5, difficulty="calculus")
    with pytest.raises(ValueError, match="split"):
        synthetic_problems(5, split="validation")
    with pytest.raises(ValueError, match="distinct"):
        synthetic_problems(10**7, difficulty="add1")


def test_load_problems_synthetic_source() -> None:
    cfg = DataConfig(source="synthetic", split="test", limit=10,
                     synthetic=SyntheticConfig(n=40, seed=5, difficulty="twostep"))
    problems, report = load_problems(cfg)
    assert problems == synthetic_problems(40, seed=5, difficulty="twostep", split="test")[:10]
    assert report.loaded == 10 and report.skipped == {}


def test_a_named_dataset_reads_its_local_copy_under_the_data_root(tmp_path, monkeypatch):
    (tmp_path / "svamp").mkdir()
    (tmp_path / "svamp" / "train.jsonl").write_text('{"id": "s1", "question": "2 and 3?", "answer": "5"}\n')
    problems, report = load_problems(DataConfig(source="svamp", split="train", data_root=str(tmp_path)))
    assert [(p.id, p.answer, p.source) for p in problems] == [("s1", "5", "svamp")] and report.source == "svamp"
    monkeypatch.setenv("SSB_DATA_ROOT", str(tmp_path))  # the environment names the root when the config does not
    assert load_problems(DataConfig(source="svamp", split="train"))[0] == problems


def test_a_named_dataset_without_that_split_is_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match="has no split 'train'"):
        check_source(DataConfig(source="math500", split="train", data_root=str(tmp_path)))


def _mix(tmp_path, limit, weights=(1, 1)):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": f"a{i}", "question": f"q{i}?", "answer": str(i)}) + "\n"
                                              for i in range(30)))
    return DataConfig(sources=[{"source": str(tmp_path / "a.jsonl"), "weight": weights[0]},
                               {"source": "synthetic", "synthetic": {"n": 50, "difficulty": "word"}, "weight": weights[1]}],
                      limit=limit)


def test_a_mix_splits_the_limit_by_weight_and_is_seeded(tmp_path):
    problems, report = load_problems(_mix(tmp_path, 20, weights=(1, 3)))
    file_ids = [p.id for p in problems if p.id.startswith("a")]
    assert len(problems) == 20 and len(file_ids) == 5 and report.source == "mix (a 5, synthetic 15)"
    assert problems == load_problems(_mix(tmp_path, 20, weights=(1, 3)))[0]  # same config, same problems and order
    assert problems != sorted(problems, key=lambda p: p.id.startswith("a"))  # shuffled together, not one after the other
    other_seed = _mix(tmp_path, 20, weights=(1, 3)).model_copy(update={"mix_seed": 1})
    assert load_problems(other_seed)[0] != problems


def test_a_mix_without_a_limit_takes_what_the_scarcest_source_allows(tmp_path):
    problems, report = load_problems(_mix(tmp_path, None, weights=(1, 1)))  # 30 from the file, so 30 synthetic
    assert len(problems) == 60 and report.source == "mix (a 30, synthetic 30)"


def test_a_source_short_of_its_share_is_reported(tmp_path):
    _, report = load_problems(_mix(tmp_path, 100, weights=(1, 1)))
    assert report.source == "mix (a 30 of 50 asked, synthetic 50)"


def test_data_source_and_sources_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        DataConfig(source="svamp", sources=[{"source": "synthetic"}])


def test_word_problems_use_all_four_operations_with_exact_answers_and_disjoint_templates():
    train = synthetic_items(400, seed=0, difficulty="word")
    test = synthetic_items(400, seed=0, difficulty="word", split="test")
    assert {i.ops for i in train} == {"+", "-", "*", "/"}
    for item in train + test:
        a, b = item.operands
        expected = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[item.ops]
        assert int(item.problem.answer) == expected and expected > 0 and (item.ops != "/" or a % b == 0)
    assert not {i.template for i in train} & {i.template for i in test}
    assert any(len(re.findall(r"\d+", i.problem.question)) > 2 for i in train)  # distractor numbers
    assert synthetic_problems(50, seed=3, difficulty="word") == synthetic_problems(50, seed=3, difficulty="word")
