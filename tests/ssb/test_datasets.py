"""The evaluation data in the repo (data/), the data roots' lookup order, and a benchmark's name
meaning the same problems: the digest and count each evaluation records, and a differing copy
refused. No engine, no Ray: these read files only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

import ssb.datasets as ds
from pipelines.evaluate import load_benchmark, merge_results
from ssb.config import DataConfig, load_config
from ssb.data import load_problems, resolved_source
from ssb.datasets import PINNED, BenchmarkMismatch, file_sha256, problems_digest
from ssb.layout import RunLayout
from ssb.report import build_report, render_markdown
from ssb.scoring import BenchmarkResult, ProblemOutcome, score

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data"
NAMED = {"svamp": 311, "gsm8k-test": 1319, "math500": 500, "aime24": 30}


@pytest.fixture
def no_other_roots(monkeypatch):
    """Only the repo's data/ (and a root a test names): no $SSB_DATA_ROOT, no shared/data."""
    monkeypatch.delenv(ds.DATA_ROOT_ENV, raising=False)
    monkeypatch.setattr(ds, "shared_data_dirs", list)


def test_the_repo_holds_the_pinned_files_their_licences_and_a_readme():
    readme = (DATA / "README.md").read_text()
    total = 0
    for pin in PINNED.values():
        path = DATA / pin.file
        problems, report = load_problems(DataConfig(source=str(path)))
        assert file_sha256(path) == pin.sha256 and pin.sha256 in readme, pin.file
        assert len(problems) == report.total == pin.problems and not report.skipped, pin.file
        assert problems_digest(problems) == pin.problems_sha256 and pin.problems_sha256 in readme, pin.file
        assert f"| {pin.problems:,} |" in readme, pin.file
        assert (path.parent / "LICENSE").is_file() or (path.parent / "SOURCE").is_file(), pin.file
        total += path.stat().st_size
    in_repo = sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*.jsonl"))
    assert in_repo == sorted(p.file for p in PINNED.values())
    assert total < 2_000_000  # the small sets only: GSM8K train stays out
    assert not (DATA / "gsm8k" / "train.jsonl").exists()


def test_with_no_setting_no_shared_folder_and_no_hub_the_named_benchmarks_are_the_repos(tmp_path):
    """In a subprocess run from an empty directory, offline, with no data root set and the
    shared/data folders taken out of the lookup: the repo's copies, whole."""
    script = textwrap.dedent(f"""
        import json
        import ssb.datasets as ds
        ds.shared_data_dirs = lambda: []  # /work/shared/data may sit beside the checkout: not here
        from pipelines.evaluate import load_benchmark
        from ssb.config import DataConfig, load_config
        from ssb.data import load_problems
        out = {{"roots": [str(r) for r in ds.data_roots()]}}
        cfg = load_config(None, ["eval.limit=null"])
        for name in {sorted(NAMED)!r}:
            problems, _, data = load_benchmark(name, cfg)
            out[name] = [len(problems), data]
        out["curate_svamp_test"] = len(load_problems(DataConfig(source="svamp", split="test"))[0])
        try:  # GSM8K train is not in the repo: the hub, which is offline here
            load_problems(DataConfig(source="gsm8k", split="train", limit=1))
            out["gsm8k_train"] = "loaded"
        except RuntimeError as exc:
            out["gsm8k_train"] = str(exc)[:200]
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "SSB_DATA_ROOT"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["roots"] == [str(DATA)]
    for name, count in NAMED.items():
        n, data = out[name]
        pin = PINNED[ds.BENCHMARKS[name]]
        assert n == count == data["data_problems"] == pin.problems, name
        assert data["data_file"] == f"data/{pin.file}" and data["data_sha256"] == pin.sha256, name
        assert data["data_problems_sha256"] == pin.problems_sha256, name
    assert out["curate_svamp_test"] == 311
    assert "could not load 'openai/gsm8k'" in out["gsm8k_train"]


def test_the_lookup_order_setting_then_environment_then_repo_then_shared_then_hub(tmp_path, monkeypatch,
                                                                                   no_other_roots):
    setting, env, shared = (tmp_path / d for d in ("setting", "env", "shared"))
    for root in (setting, env, shared):
        (root / "svamp").mkdir(parents=True)
        (root / "svamp" / "train.jsonl").write_text(json.dumps({"question": f"{root.name}?", "answer": "1"}) + "\n")
    (shared / "gsm8k").mkdir()
    (shared / "gsm8k" / "train.jsonl").write_text(json.dumps({"question": "g?", "answer": "#### 2"}) + "\n")

    def read(split: str, name: str = "svamp", root: Path | None = None) -> str:
        return resolved_source(DataConfig(source=name, split=split, data_root=str(root) if root else None)).source

    # without shared/data: GSM8K train is the hub's; the repo's SVAMP otherwise
    assert read("train", "gsm8k") == "openai/gsm8k" and read("train") == str(DATA / "svamp")
    monkeypatch.setattr(ds, "shared_data_dirs", lambda: [shared])
    assert read("train", "gsm8k") == str(shared / "gsm8k")  # what shared/data is still for
    assert read("train") == str(DATA / "svamp")  # the repo's copy before shared/data
    monkeypatch.setenv(ds.DATA_ROOT_ENV, str(env))
    assert read("train") == str(env / "svamp")
    assert read("train", root=setting) == str(setting / "svamp")
    # a root is looked in for each file: one without SVAMP test leaves it to the repo's
    assert read("test", root=setting) == str(DATA / "svamp")
    assert ds.data_roots(str(setting)) == [setting, env, DATA, shared]


def test_a_copy_with_other_problems_is_refused_by_name_and_recorded_by_path(tmp_path, no_other_roots):
    lines = (DATA / "svamp" / "test.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "short" / "svamp").mkdir(parents=True)
    short = tmp_path / "short" / "svamp" / "test.jsonl"
    short.write_text("".join(lines[:-1]))
    with pytest.raises(BenchmarkMismatch, match="310 problems where the repo's has 311"):
        load_benchmark("svamp", load_config(None, [f"eval.data_root={tmp_path / 'short'}"]))
    with pytest.raises(BenchmarkMismatch, match="310 problems"):  # under a label of its own too: the name is svamp
        load_benchmark("mine=svamp", load_config(None, [f"eval.data_root={tmp_path / 'short'}"]))

    # same count, one answer changed: the digest tells
    row = json.loads(lines[0])
    row["answer"] = str(int(row["answer"]) + 1)
    (tmp_path / "edited" / "svamp").mkdir(parents=True)
    (tmp_path / "edited" / "svamp" / "test.jsonl").write_text(json.dumps(row) + "\n" + "".join(lines[1:]))
    with pytest.raises(BenchmarkMismatch, match=r"the same count \(311\) but other problems or answers"):
        load_benchmark("svamp", load_config(None, [f"eval.data_root={tmp_path / 'edited'}"]))

    # the differing copy given by path is evaluated, with its own file, digest and count on record
    problems, _, data = load_benchmark(f"short-svamp={short}", load_config(None, ["eval.limit=5"]))
    assert len(problems) == 5 and data["data_problems"] == 310 and data["data_sha256"] == file_sha256(short)
    assert data["data_problems_sha256"] != PINNED["svamp", "test"].problems_sha256
    assert data["data_file"] == str(short.resolve())  # not in or beside the checkout: as it is

    # an identical copy elsewhere is the same benchmark, and says where it was read
    (tmp_path / "same" / "svamp").mkdir(parents=True)
    (tmp_path / "same" / "svamp" / "test.jsonl").write_text("".join(lines))
    problems, _, data = load_benchmark("svamp", load_config(None, [f"eval.data_root={tmp_path / 'same'}",
                                                                    "eval.limit=64"]))
    assert len(problems) == 64 and data["data_problems"] == 311
    assert data["data_problems_sha256"] == PINNED["svamp", "test"].problems_sha256
    assert data["data_file"] == str((tmp_path / "same" / "svamp" / "test.jsonl").resolve())


def test_the_digest_ignores_ids_and_whitespace_but_not_order():
    problems, _ = load_problems(DataConfig(source=str(DATA / "aime24"), split="test"))
    renamed = [replace(p, id=f"x{i}", question="  " + p.question.replace(" ", "\n ")) for i, p in enumerate(problems)]
    assert problems_digest(renamed) == problems_digest(problems)
    assert problems_digest(problems[::-1]) != problems_digest(problems)


def test_the_data_read_goes_through_results_json_and_the_report(tmp_path, no_other_roots):
    problems, _, data = load_benchmark("svamp", load_config(None, ["eval.limit=4"]))
    outcomes = [ProblemOutcome(greedy=i % 2 == 0, answered=1) for i in range(len(problems))]
    base = replace(score("svamp", "base", outcomes), **data)
    ssb = replace(score("svamp", "ssb", [ProblemOutcome(greedy=True, answered=1)] * 4), **data)
    assert BenchmarkResult.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    assert (base.data_file, base.data_problems, base.n) == ("data/svamp/test.jsonl", 311, 4)
    assert base.data_sha256 == PINNED["svamp", "test"].sha256
    assert BenchmarkResult.from_dict({k: v for k, v in base.to_dict().items()
                                      if not k.startswith("data_")}).data_file is None  # an older results.json

    layout = RunLayout(tmp_path / "run")
    merge_results(layout.eval_results, {"base": {"svamp": base}, "ssb": {"svamp": ssb}})
    report = build_report(layout.root)
    entry = report["benchmarks"]["svamp"]
    assert entry["data"] == data and entry["ssb"]["data_problems_sha256"] == data["data_problems_sha256"]
    assert "data_differs" not in entry and entry["verdict"].startswith("higher")
    md = render_markdown(report)
    assert "## Benchmark data" in md and "`data/svamp/test.jsonl` | 311 | 4 |" in md
    assert f"`{PINNED['svamp', 'test'].sha256[:16]}…`" in md

    # a base result kept from an evaluation of other problems: said, and no verdict drawn
    other = replace(base, data_problems=310, data_problems_sha256="0" * 64)
    merge_results(layout.eval_results, {"base": {"svamp": other}})
    report = build_report(layout.root)
    assert report["benchmarks"]["svamp"]["data_differs"] is True
    assert report["benchmarks"]["svamp"]["verdict"].startswith("not comparable")
    assert "Base and SSB were evaluated on different problems for: svamp" in render_markdown(report)
