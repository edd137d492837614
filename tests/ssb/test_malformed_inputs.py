"""Malformed problem files beyond tests/ssb/test_data.py: every bad record is counted under a
reason, the rest loads, nothing crashes, and a 50 MB line never enters memory whole.

What test_data.py already covers (broken JSON, non-UTF-8 lines, a 3 MB line, wrong types,
missing fields, duplicates, a non-list .json) is not repeated here.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ssb.config import DataConfig
from ssb.data import MAX_ANSWER_CHARS, MAX_ID_CHARS, MAX_LINE_BYTES, NoValidProblems, load_problems


def _load(path: Path, **kw: object):
    problems, report = load_problems(DataConfig(source=str(path), **kw))
    assert report.total == report.loaded + sum(report.skipped.values())  # every record accounted for
    assert report.loaded == len(problems)
    return problems, report


def _obj(**kw: object) -> bytes:
    return json.dumps(kw).encode()


GOOD = _obj(question="Good?", answer="1")


def test_a_50mb_line_is_skipped_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(GOOD + b"\n")
        f.write(b'{"question": "' + b"x" * (50 << 20) + b'", "answer": "1"}\n')  # 50 MB, one line
        f.write(b"\xff" * (3 << 20))  # 3 MB of binary without a newline, ending the file
        f.write(b"\n" + _obj(question="After?", answer="2") + b"\n")
    tracemalloc.start()
    try:
        problems, report = _load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [p.question for p in problems] == ["Good?", "After?"]
    assert report.skipped == {"line_too_long": 2}
    assert peak < 4 * MAX_LINE_BYTES, f"peak {peak / 1e6:.1f} MB while reading a 50 MB line"


def test_odd_but_valid_and_invalid_jsonl_records(tmp_path: Path) -> None:
    lines = [
        "\ufeff".encode() + _obj(question="BOM first?", answer="1"),  # ok: BOM stripped on line 1
        "\ufeff".encode() + _obj(question="BOM later?", answer="1"),  # invalid_json
        _obj(question=None, answer=None),  # missing_question
        _obj(question="Nested null answer?", answer={"value": None}),  # wrong_type
        _obj(question=[None], answer="1"),  # wrong_type
        _obj(question="Null id?", answer="3", id=None),  # ok, positional id
        _obj(question="Dict id?", answer="3", id={"x": None}),  # wrong_type
        _obj(question="Huge id?", answer="3", id="i" * (MAX_ID_CHARS + 1)),  # invalid_id
        _obj(question="Wide int id?", answer="3", id=2**80),  # invalid_id
        b'{"question": "NaN answer?", "answer": NaN}',  # unparseable_answer
        b'{"question": "Inf answer?", "answer": -Infinity}',  # unparseable_answer
        b'{"question": "Huge int?", "answer": ' + b"9" * 5000 + b"}",  # invalid_json (int limit)
        _obj(question="Long answer?", answer="7" * (MAX_ANSWER_CHARS + 1)),  # answer_too_long
        b'{"question": "Lone \\ud800 surrogate?", "answer": "1"}',  # invalid_text
        b'{"question": "Surrogate answer?", "answer": "\\udfff"}',  # invalid_text
        _obj(question="NUL \x00 and \u202e bidi?", answer="\x00 5"),  # ok: strings are data
        b"[" * 100_000 + b"]" * 100_000,  # invalid_json (nesting)
        b"\x00\x00\x00\x00",  # invalid_json
        b"null",  # not_an_object
        b'"just a string"',  # not_an_object
        b"   \t  ",  # blank: not a record
        _obj(question="Solution with unclosed box?", solution="so \\boxed{3"),  # unparseable_answer
        _obj(question="Truncated last line", answer="1")[:-5],  # invalid_json, no final newline
    ]
    path = tmp_path / "odd.jsonl"
    path.write_bytes(b"\n".join(lines))
    problems, report = _load(path)
    assert [p.question for p in problems] == ["BOM first?", "Null id?", "NUL \x00 and \u202e bidi?"]
    assert problems[1].id == "odd-5" and problems[2].answer == "\x00 5"
    assert report.skipped == {
        "invalid_json": 5, "missing_question": 1, "wrong_type": 3, "invalid_id": 2,
        "unparseable_answer": 3, "answer_too_long": 1, "invalid_text": 2, "not_an_object": 2,
    }
    assert report.examples["invalid_text"][0].startswith("line 14:")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_an_empty_jsonl_file_is_an_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(NoValidProblems, match=r"empty\.jsonl: no valid problem in 0 records") as err:
        _load(path)
    assert err.value.report.total == 0 and "loaded 0 of 0" in err.value.report.summary()


def test_a_binary_jsonl_file_is_all_counted_never_raised(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    blob = bytes(rng.randrange(256) for _ in range(200_000))
    path = tmp_path / "noise.jsonl"
    path.write_bytes(blob + b"\n" + GOOD + b"\n")
    problems, report = _load(path)
    assert [p.question for p in problems] == ["Good?"]
    assert set(report.skipped) <= {"invalid_json", "not_an_object"} and report.total == blob.count(b"\n") + 2 - sum(
        1 for line in blob.split(b"\n") if not line.strip())


def test_a_truncated_json_list_keeps_the_items_before_the_cut(tmp_path: Path) -> None:
    items = [{"question": f"Q{i}?", "answer": str(i)} for i in range(5)]
    text = json.dumps(items)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('"Q3?"') + 3])  # cut inside item 3
    problems, report = _load(path)
    assert [p.answer for p in problems] == ["0", "1", "2"]
    assert report.skipped == {"invalid_json": 1} and report.examples["invalid_json"][0].startswith("item 3:")


def test_a_json_list_with_a_bomb_item_keeps_the_items_before_it(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b'\xef\xbb\xbf[{"question": "A?", "answer": "1"}, {"question": "B?", "answer": '
                     + b"[" * 200_000 + b"]" * 200_000 + b"}]")
    problems, report = _load(path)
    assert [p.question for p in problems] == ["A?"] and report.skipped == {"invalid_json": 1}


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02binary", b'{"truncated": ', b"\xff\xfe[1]"])
def test_a_json_file_that_is_not_a_list_at_all_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"bad\.json"):
        load_problems(DataConfig(source=str(path)))


def test_parquet_with_wrong_types_and_nulls_counts_each_row(tmp_path: Path) -> None:
    table = pa.table({
        "question": pa.array(["Fine?", None, "List answer?", "Null answer?", "Float answer?", "Big?"]),
        "answer": pa.array([["1"], ["2"], [None], None, ["x"], ["y"]], pa.list_(pa.string())),
    })
    # A list-typed answer column is a wrong type for every row; a string one is not.
    path = tmp_path / "typed.parquet"
    pq.write_table(table, path)
    with pytest.raises(NoValidProblems, match=r"typed\.parquet: no valid problem in 6 records: wrong_type x4") as err:
        _load(path)
    assert err.value.report.skipped == {"wrong_type": 4, "missing_question": 1, "missing_answer": 1}

    table = pa.table({"question": ["A?", "B?", "C?", "D?"], "answer": [1.5, float("nan"), None, 2.0],
                      "id": [1, 2**40, 3, 4]})
    pq.write_table(table, tmp_path / "mixed.parquet")
    problems, report = _load(tmp_path / "mixed.parquet")
    assert [(p.id, p.answer) for p in problems] == [("1", "1.5"), ("4", "2")]
    assert report.skipped == {"unparseable_answer": 1, "missing_answer": 1}


@pytest.mark.parametrize("content", [b"", b"PAR1 garbage not parquet", b"\x00" * 1000])
def test_a_file_that_is_not_parquet_is_a_clear_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.parquet"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"junk\.parquet.*not a readable Parquet file"):
        load_problems(DataConfig(source=str(path)))


def test_a_truncated_parquet_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.parquet"
    pq.write_table(pa.table({"question": ["A?"] * 100, "answer": ["1"] * 100}), path)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(ValueError, match=r"cut\.parquet"):
        load_problems(DataConfig(source=str(path)))


def test_a_damaged_parquet_row_group_costs_only_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "groups.parquet"
    table = pa.table({"id": [f"p{i}" for i in range(30)], "question": [f"Question {i}?" * 20 for i in range(30)],
                      "answer": [str(i) for i in range(30)]})
    pq.write_table(table, path, row_group_size=10, write_page_checksum=True, compression="none")
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata.row_group(1).column(1)  # the questions of rows 10-19
    start = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
    data[start + meta.total_compressed_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    problems, report = _load(path)
    assert [p.id for p in problems] == [f"p{i}" for i in range(10)] + [f"p{i}" for i in range(20, 30)]
    assert report.skipped == {"unreadable_parquet": 10}
