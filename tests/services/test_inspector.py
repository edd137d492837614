"""`ssb inspect` over a hand-made run directory (a store, traces, eval outputs, metrics, an adapter;
no engine), started as a real subprocess and asked over HTTP."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from ssb.config import dump_config, load_config
from ssb.layout import RunLayout
from ssb.manifest import FORMAT, FORMAT_WITHOUT_TRACES
from ssb.records import CuratedExample, SkipReason
from ssb.store import LogitStore
from ssb.trace import KEPT, ProblemTrace, RolloutTrace, TeacherSampleTrace

REPO = Path(__file__).resolve().parents[2]
K = 5
XSS = "<script>alert(1)</script>"
EVIL_QUESTION = f"Tom & Ann have 2 apples {XSS} and get 3 more. How many?"
ANSWER_TEXT = "Tom has 2 apples and gets 3 more, so 2 + 3 = 5. The answer is \\boxed{5}."
BENCH = "synthetic-heldout"


@dataclass
class Run:
    root: Path
    url: str
    kept_tokens: int

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url.rstrip("/") + path, params=params, timeout=60)


def _rollouts(answers: list[str | None], truth: str) -> list[RolloutTrace]:
    return [RolloutTrace(i, f"Step by step ... so \\boxed{{{a}}}" if a else "I am not sure", "stop", a,
                         "correct" if a == truth else ("incorrect" if a else "no_answer"), 12)
            for i, a in enumerate(answers)]


def _kept_example(tok: Any, rng: np.random.Generator) -> tuple[CuratedExample, ProblemTrace]:
    from ssb.prompts import render_ids, student_messages

    response = tok.encode(ANSWER_TEXT, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = np.zeros((len(response), K), np.int64)
    for t, token in enumerate(response):
        others = rng.choice(49152, size=K + 3, replace=False)
        ids[t] = [token, *[o for o in others if o != token][:K - 1]]
    p = np.array([0.55, 0.2, 0.1, 0.05, 0.03]) * rng.uniform(0.7, 1.0, size=(len(response), 1))
    logprobs, tail = np.log(p), np.log(1 - p.sum(1))
    rollouts = _rollouts(["5", "6", "6", "5"], "5")
    ex = CuratedExample(
        problem_id="k1", question=EVIL_QUESTION, answer="5",
        student_prompt_ids=render_ids(tok, student_messages(EVIL_QUESTION)), teacher_prompt_ids=[1, 2, 3],
        response_ids=response, response_text=ANSWER_TEXT, topk_ids=ids.tolist(), topk_logprobs=logprobs.tolist(),
        tail_logprob=tail.tolist(), correct_rollout=rollouts[0].text, incorrect_rollout=rollouts[1].text,
        incorrect_answer="6", model="m", tokenizer="t", config_hash="c", seed=0)
    teacher = [TeacherSampleTrace(0, "So \\boxed{7}", "stop", "7", "incorrect", 9, "teacher_answer_wrong", False),
               TeacherSampleTrace(1, ANSWER_TEXT, "stop", "5", "correct", len(response), None, True)]
    trace = ProblemTrace("k1", EVIL_QUESTION, "5", "synthetic", KEPT, rollouts, correct_index=0, incorrect_index=1,
                         incorrect_answer="6", incorrect_count=2, teacher=teacher, rollout_tokens=48,
                         teacher_tokens=9 + len(response), engine_seconds=1.5)
    return ex, trace


def _skipped(pid: str, reason: SkipReason, question: str) -> ProblemTrace:
    answers = {SkipReason.NO_CORRECT: ["3", "3", None, "4"], SkipReason.NO_INCORRECT: ["2", "2", "2", "2"]}
    rollouts = _rollouts(answers.get(reason, ["2", "3", "3", "2"]), "2")
    pair = {} if reason in answers else dict(correct_index=0, incorrect_index=1, incorrect_answer="3", incorrect_count=2)
    teacher = [] if reason in answers else [
        TeacherSampleTrace(0, "Hmm \\boxed{3}", "stop", "3", "incorrect", 5, reason.value, False)]
    return ProblemTrace(pid, question, "2", "synthetic", reason.value, rollouts, teacher=teacher, **pair)


def _eval_row(pid: str, question: str, answer: str, given: str, right: bool) -> dict[str, Any]:
    from pipelines.eval_worker import OUT_SCHEMA

    row: dict[str, Any] = {name: None for name in OUT_SCHEMA.names}
    row.update(benchmark=BENCH, id=pid, question=question, answer=answer, status="", prompt_tokens=40,
               sample_texts=[], sample_answers=[], sample_verdicts=[], sample_finish=[], sample_tokens=0,
               greedy_text=f"so \\boxed{{{given}}}", greedy_answer=given,
               greedy_verdict="correct" if right else "incorrect", greedy_finish="stop", greedy_tokens=8,
               generate_seconds=0.1, engine_load_seconds=0.0, extra=-1, engine_model="m", worker="w")
    return row


def _write_eval(root: Path) -> None:
    from ssb.scoring import ProblemOutcome, score

    # e0: both right; e1: base right, student wrong; e2: base wrong, student right; e3: both wrong.
    verdicts = {"base": [True, True, False, False], "ssb": [True, False, True, False]}
    results: dict[str, Any] = {}
    for label, rights in verdicts.items():
        rows = [_eval_row(f"e{i}", EVIL_QUESTION if i == 1 else f"What is {i} + 1?", str(i + 1),
                          str(i + 1) if right else "0", right) for i, right in enumerate(rights)]
        path = RunLayout(root).eval_outputs(label, BENCH)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        results[label] = {BENCH: score(BENCH, label, [ProblemOutcome(greedy=r) for r in rights]).to_dict()}
    (root / "eval" / "results.json").write_text(json.dumps(results))


def build_run(root: Path, tok: Any) -> int:
    """A run directory as `ssb run` leaves it, made by hand: returns the kept answer's length."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(dump_config(load_config(None, [f"run_dir={root}"])))
    store = LogitStore.create_or_resume(str(root / "curated"), config_hash="c", model="m", tokenizer="t", top_k=K)
    ex, trace = _kept_example(tok, np.random.default_rng(0))
    reasons = [SkipReason.NO_CORRECT, SkipReason.NO_INCORRECT, SkipReason.TEACHER_WRONG,
               SkipReason.TEACHER_MENTIONS_HINTS]
    skipped = [_skipped(f"s{i:02d}", reasons[i % 4], f"What is {i} + {i}? Count the {i} apples.") for i in range(24)]
    store.append([], {t.problem_id: t.outcome for t in skipped[:12]}, skipped[:12])
    evil = _skipped("s-evil", SkipReason.NO_CORRECT, EVIL_QUESTION)
    store.append([ex], {t.problem_id: t.outcome for t in [*skipped[12:], evil]}, [trace, *skipped[12:], evil])
    (root / "curation_summary.json").write_text(json.dumps(
        {"problems": 26, "processed": 26, "already_done": 0, "kept": 1, "skipped": {}, "rollout_tokens": 1200,
         "teacher_tokens": 300, "wall_seconds": 12.5, "store": store.summary()}))
    _write_eval(root)
    (root / "train").mkdir()
    (root / "train" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in [
        {"step": 1, "loss": 2.5, "kl": 2.5, "ce": 0.0}, {"event": "resumed", "step": 1},
        {"step": 2, "loss": 1.75, "kl": 1.7, "ce": 0.0}, {"step": 3, "loss": 1.25, "kl": 1.2, "ce": 0.0}]))
    (root / "timings.json").write_text(json.dumps({"curate": 12.5, "train": 3.0, "eval": 4.0, "total": 19.5}))
    return len(ex.response_ids)


def make_adapter(model_path: str, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)) \
        .save_pretrained(out)


def start_inspector(run_dir: Path) -> tuple[subprocess.Popen, str]:
    # stderr to a file, not a pipe nobody drains: a server's tracebacks would fill one and block it.
    log = (run_dir.parent / f"{run_dir.name}-inspect.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "inspect", str(run_dir), "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    assert line.startswith("inspector: http://127.0.0.1:"), (line, Path(log.name).read_text())
    return proc, line.split(": ", 1)[1].strip()


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def run(tmp_path_factory, model_path) -> Iterator[Run]:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("inspect") / "run"
    kept_tokens = build_run(root, AutoTokenizer.from_pretrained(model_path))
    make_adapter(model_path, root / "adapter")
    shutil.copytree(root / "curated", root / "round-2" / "curated")  # round 2: curated, not trained
    shutil.copy(root / "config.yaml", root / "round-2" / "config.yaml")
    proc, url = start_inspector(root)
    yield Run(root, url, kept_tokens)
    stop(proc)


def test_the_overview_shows_the_funnel_accuracy_loss_timings_and_config(run):
    d = run.get("/", format="json").json()
    stages = {s["stage"]: s["count"] for s in d["funnel"]["stages"]}
    assert stages == {"problems": 26, "mixed": 13, "teacher accepted": 1, "kept": 1}
    assert {s["reason"]: s["count"] for s in d["funnel"]["skipped"]} == {
        "no_correct_rollout": 7, "no_incorrect_rollout": 6, "teacher_answer_wrong": 6, "teacher_mentions_hints": 6}
    acc = {(a["label"], a["benchmark"]): a for a in d["accuracy"]}
    assert acc[("base", BENCH)]["accuracy"] == 0.5 and acc[("ssb", BENCH)]["n"] == 4
    lo, hi = acc[("base", BENCH)]["ci95"]
    assert lo < 0.5 < hi
    assert d["loss"] == [[1, 2.5], [2, 1.75], [3, 1.25]] and d["timings"]["total"] == 19.5
    assert "run_dir:" in d["config"] and d["benchmarks"] == [BENCH] and d["labels"] == ["base", "ssb"]

    html = run.get("/").text
    assert "<svg" in html and "<polyline" in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing from another host
    assert 'href="/problems?outcome=teacher_answer_wrong"' in html and 'href="/problems?outcome=kept"' in html
    assert f'href="/eval/{BENCH}"' in html and "50.0%" in html
    assert re.search(r"\[\d+\.\d, \d+\.\d\]", html)  # the 95% interval
    assert "<pre>name: default" in html and "12.5" in html  # curation_summary.json's wall seconds


def test_each_round_has_its_own_pages(run):
    d = run.get("/", format="json", round=2).json()
    assert d["rounds"] == [1, 2] and d["round"] == 2 and not d["trained"] and d["loss"] == []
    html = run.get("/", round=2).text
    assert "<strong>2</strong>" in html and '<a href="/">1</a>' in html  # the rounds: this one, and a link to 1
    assert 'href="/problems?outcome=kept&amp;round=2"' in html and 'href="/problems?round=2"' in html
    assert run.get("/problems", format="json", round=2).json()["total"] == 26
    page = run.get("/problems/k1", round=2)
    assert page.status_code == 200 and 'href="/problems/k1/kl' not in page.text  # no adapter in round 2
    assert not run.get("/problems/k1", format="json", round=2).json()["kl_available"]


def test_the_problem_list_filters_and_pages(run):
    d = run.get("/problems", format="json", limit=10).json()
    assert d["total"] == 26 and d["offset"] == 0 and d["limit"] == 10 and len(d["items"]) == 10
    assert set(d["items"][0]) == {"problem_id", "outcome", "question"}
    page = run.get("/problems", format="json", offset=20, limit=10).json()
    assert page["total"] == 26 and len(page["items"]) == 6
    everything = [i["problem_id"] for i in run.get("/problems", format="json", limit=500).json()["items"]]
    assert sorted(everything) == sorted(["k1", "s-evil", *(f"s{i:02d}" for i in range(24))])
    kept = run.get("/problems", format="json", outcome="kept").json()
    assert kept["total"] == 1 and kept["items"][0]["problem_id"] == "k1"
    assert run.get("/problems", format="json", outcome="mixed").json()["total"] == 13
    assert run.get("/problems", format="json", outcome="no_correct_rollout", limit=3).json()["total"] == 7
    found = run.get("/problems", format="json", q="THE 7 APPLES").json()
    assert [i["problem_id"] for i in found["items"]] == ["s07"]
    assert run.get("/problems", format="json", q="s1", outcome="teacher_answer_wrong").json()["total"] == 3
    html = run.get("/problems", outcome="no_correct_rollout", limit=3).text
    assert "7 problems" in html and 'href="/problems?outcome=no_correct_rollout&amp;offset=3&amp;limit=3"' in html


def test_a_kept_problem_shows_its_rollouts_pair_teacher_and_token_confidence(run):
    d = run.get("/problems/k1", format="json").json()
    assert d["outcome"] == "kept" and d["question"] == EVIL_QUESTION and d["answer"] == "5"
    assert [r["chosen_as"] for r in d["rollouts"]] == ["correct", "incorrect", None, None]
    assert [r["verdict"] for r in d["rollouts"]] == ["correct", "incorrect", "incorrect", "correct"]
    assert d["selection"] == {"correct_index": 0, "incorrect_index": 1, "incorrect_answer": "6", "incorrect_count": 2}
    rejected, chosen = d["teacher"]
    assert rejected["rejection"] == "teacher_answer_wrong" and not rejected["chosen"]
    assert "tokens_confidence" not in rejected
    conf = chosen["tokens_confidence"]
    assert chosen["chosen"] and len(conf) == run.kept_tokens
    assert "".join(t["text"] for t in conf[:-1]) == ANSWER_TEXT and conf[-1]["text"] == "<|im_end|>"
    for t in conf:
        assert 0 < t["p_top1"] <= 1 and t["entropy"] > 0 and len(t["top"]) == K
        assert abs(sum(a["p"] for a in t["top"]) + t["p_tail"] - 1) < 1e-3 and t["top"][0]["id"] == t["id"]
    assert d["teacher_prompt"][-1]["role"] == "user" and EVIL_QUESTION in d["teacher_prompt"][-1]["content"]
    assert d["kl_available"]

    html = run.get("/problems/k1").text
    assert "✓ correct" in html and "✗ incorrect" in html and "shown to the teacher as right" in html
    assert "shown to the teacher as wrong" in html and "rejected: teacher answer wrong" in html
    assert "<details><summary>The teacher prompt" in html and 'href="/problems/k1/kl"' in html
    assert html.count('title="') >= run.kept_tokens and "top-1 probability" in html


def test_a_skipped_problem_says_why(run):
    d = run.get("/problems/s02", format="json").json()
    assert d["outcome"] == "teacher_answer_wrong" and d["teacher"][0]["rejection"] == "teacher_answer_wrong"
    assert not d["kl_available"] and "tokens_confidence" not in d["teacher"][0]
    d = run.get("/problems/s00", format="json").json()
    assert d["outcome"] == "no_correct_rollout" and d["teacher"] == [] and d["teacher_prompt"] is None
    assert "✗ no answer" in run.get("/problems/s00").text


def test_unknown_things_are_404(run):
    for path, params in [("/problems/nope", {}), ("/problems/nope", {"format": "json"}), ("/eval/nope", {}),
                         ("/", {"round": 3}), ("/problems/s01/kl", {"format": "json"}),
                         ("/problems/k1/kl", {"round": 2}),
                         ("/eval/" + BENCH, {"a": "nope"})]:
        r = run.get(path, **params)
        assert r.status_code == 404, (path, params, r.text[:200])
    assert "not kept" in run.get("/problems/s01/kl", format="json").json()["detail"]
    assert "no problem &#39;nope&#39;" in run.get("/problems/nope").text


def test_everything_shown_is_escaped(run):
    for path in ["/problems", "/problems/k1", "/problems/s-evil", f"/eval/{BENCH}", "/problems?q=apples"]:
        html = httpx.get(run.url.rstrip("/") + path, timeout=60).text
        assert XSS not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
    assert "Tom &amp; Ann" in run.get("/problems/k1").text


def test_the_evaluation_comparison_pairs_base_and_student(run):
    d = run.get(f"/eval/{BENCH}", format="json").json()
    assert d["a"] == "base" and d["b"] == "ssb" and d["total"] == 4
    assert d["counts"] == {"all": 4, "base_right_student_wrong": 1, "base_wrong_student_right": 1}
    item = next(i for i in d["items"] if i["problem_id"] == "e1")
    assert item["a"]["right"] is True and item["b"]["right"] is False and item["b"]["answer"] == "0"
    assert item["reference"] == "2" and item["question"] == EVIL_QUESTION
    only = run.get(f"/eval/{BENCH}", format="json", filter="base_wrong_student_right").json()
    assert only["total"] == 1 and only["items"][0]["problem_id"] == "e2"
    page = run.get(f"/eval/{BENCH}", format="json", offset=1, limit=2).json()
    assert page["total"] == 4 and [i["problem_id"] for i in page["items"]] == ["e1", "e2"]
    swapped = run.get(f"/eval/{BENCH}", format="json", a="ssb", b="base", filter="base_right_student_wrong").json()
    assert [i["problem_id"] for i in swapped["items"]] == ["e2"]
    html = run.get(f"/eval/{BENCH}", filter="base_right_student_wrong").text
    assert "✓ right" in html and "✗ wrong" in html and "base right, ssb wrong (1)" in html
    assert run.get(f"/eval/{BENCH}", filter="bogus").status_code == 400


def test_the_students_per_token_kl_is_computed_once_then_read_back(run):
    cache = RunLayout(run.root).inspect_kl("k1")
    start = time.monotonic()
    first = run.get("/problems/k1/kl", format="json")
    assert first.status_code == 200, first.text[:300]
    d = first.json()
    assert not d["cached"] and len(d["tokens"]) == run.kept_tokens
    assert all(t["kl"] >= -1e-5 for t in d["tokens"]) and d["mean_kl"] > 0
    assert all(0 <= t["p_student"] <= 1 for t in d["tokens"]) and d["tokens"][0]["text"] == "Tom"
    assert cache.is_file() and json.loads(cache.read_text())["tokens"] == d["tokens"]
    second = run.get("/problems/k1/kl", format="json").json()
    assert second["cached"] and second["tokens"] == d["tokens"]
    html = run.get("/problems/k1/kl").text
    assert "KL(teacher ‖ student)" in html and XSS not in html
    assert time.monotonic() - start < 30


def test_a_damaged_trace_file_is_a_409_page_naming_it(run, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(run.root / "curated", damaged / "curated")
    shutil.copy(run.root / "config.yaml", damaged / "config.yaml")
    path = damaged / "curated" / "trace-00001.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    proc, url = start_inspector(damaged)
    try:
        for page in ["/", "/problems", "/problems/k1"]:
            r = httpx.get(url.rstrip("/") + page, timeout=60)
            assert r.status_code == 409 and "trace-00001.parquet" in r.text, page
            j = httpx.get(url.rstrip("/") + page, params={"format": "json"}, timeout=60)
            assert j.status_code == 409 and "trace-00001.parquet" in json.dumps(j.json()), page
        path.unlink()
        r = httpx.get(url.rstrip("/") + "/problems", timeout=60)
        assert r.status_code == 409 and "trace-00001.parquet: missing from the store" in r.text
        manifest = damaged / "curated" / "manifest.json"  # a store from before traces
        manifest.write_text(manifest.read_text().replace(FORMAT, FORMAT_WITHOUT_TRACES))
        r = httpx.get(url.rstrip("/") + "/problems", timeout=60)
        assert r.status_code == 409 and "written before traces were kept" in r.text
    finally:
        stop(proc)


def test_a_directory_without_a_store_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("name: x\n")
    done = subprocess.run([sys.executable, "-m", "cluster.cli", "inspect", str(tmp_path), "--port", "0"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "has no curated store" in done.stderr


def _serve_in_thread(app: Any) -> tuple[Any, str, threading.Thread]:
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", root_path="/outer"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}", thread


def test_the_pages_mount_under_a_prefix_for_a_jobs_run_directory(run, tmp_path):
    from fastapi import FastAPI, HTTPException

    from services.inspector import build_inspector_router

    job = tmp_path / "jobs" / "j-1"  # a service job: curates only
    shutil.copytree(run.root / "curated", job / "curated")
    for name in ("config.yaml", "curation_summary.json"):
        shutil.copy(run.root / name, job / name)

    def resolve(job_id: str) -> Path:
        if job_id != "j-1":
            raise HTTPException(404, "no such job")
        return job

    app = FastAPI()
    app.include_router(build_inspector_router(resolve), prefix="/ui/jobs/{job_id}")
    server, url, thread = _serve_in_thread(app)
    try:
        get = lambda path, **params: httpx.get(url + path, params=params, timeout=60)
        html = get("/ui/jobs/j-1/").text
        assert 'href="/outer/ui/jobs/j-1/problems?outcome=kept"' in html and "No evaluation" in html
        assert 'href="/problems' not in html
        page = get("/ui/jobs/j-1/problems", limit=5).text
        assert 'href="/outer/ui/jobs/j-1/problems/s00"' in page
        assert 'href="/outer/ui/jobs/j-1/problems?offset=5&amp;limit=5"' in page
        problem = get("/ui/jobs/j-1/problems/k1")
        assert problem.status_code == 200 and "/kl" not in problem.text
        assert get("/ui/jobs/j-1/problems/k1/kl").status_code == 404
        assert get("/ui/jobs/j-2/").status_code == 404
        assert get(f"/ui/jobs/j-1/eval/{BENCH}").status_code == 404
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_benchmark_runs_at_its_smoke_size():
    done = subprocess.run([sys.executable, "bench/inspector.py", "--smoke"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"RESULT inspector list_ms=[\d.]+ problem_ms=[\d.]+ index_ms=[\d.]+ problems=200", last), last
