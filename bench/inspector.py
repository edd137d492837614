"""`ssb inspect` on a large store: how long the problem list and a problem's page take.

Builds a run directory without an engine (default 10,000 problems: 4 rollouts of ~150 words
each, ~25% kept with a teacher answer of ~120 tokens and k=20, committed ~32 problems at a
time as curation does, token ids inside the default tokenizer's vocabulary so texts decode),
serves the inspector in this process (uvicorn in a thread, a free port) and asks it over HTTP:

- index_ms: the first list page, which builds the store's trace index (every trace file read
  and verified);
- list_ms: the median of `--requests` list pages after it, each with a filter (an outcome, a
  text search, an offset);
- problem_ms: the median of `--requests` problem pages, half kept (the answer's tokens with
  their top-k, read from its shard) and half skipped, after one warm-up page (the tokenizer).

    .venv/bin/python bench/inspector.py                    # 10,000 problems
    .venv/bin/python bench/inspector.py --smoke            # 200 problems, 5 requests: seconds

Smoke (tests/test_bench_smoke.py, tests/services/test_inspector.py): `--smoke`. Ends with:

    RESULT inspector list_ms=... problem_ms=... index_ms=... problems=...
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB = 49152  # the default tokenizer's
K, ANSWER_TOKENS, COMMIT = 20, 120, 32
WORDS = ("the of and to a in is that for it as was with be by on not so we first then total each apples "
         "more left has have gives buys sells how many does what step add subtract multiply divide half twice "
         "number answer check result sum difference product equals therefore now after before").split()
REASONS = ("no_correct_rollout", "no_incorrect_rollout", "teacher_answer_wrong", "teacher_mentions_hints",
           "teacher_truncated")


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n))


def _trace(pid: str, question: str, outcome: str, rng: np.random.Generator) -> Any:
    from ssb.trace import ProblemTrace, RolloutTrace, TeacherSampleTrace

    # Rollouts 0 .. right-1 are correct: none or all for the two skips before the teacher.
    right = {"no_correct_rollout": 0, "no_incorrect_rollout": 4}.get(outcome) or int(rng.integers(1, 4))
    rollouts = [RolloutTrace(i, _words(rng, 150) + f" so \\boxed{{{7 if i < right else 8}}}", "stop",
                             "7" if i < right else "8", "correct" if i < right else "incorrect", 190)
                for i in range(4)]
    mixed = 0 < right < 4
    teacher = []
    if mixed:
        rejection = None if outcome == "kept" else outcome
        teacher = [TeacherSampleTrace(0, _words(rng, 90) + " \\boxed{7}", "stop", "7",
                                      "correct" if rejection != "teacher_answer_wrong" else "incorrect", ANSWER_TOKENS,
                                      rejection, outcome == "kept")]
    return ProblemTrace(pid, question, "7", "synthetic", outcome, rollouts,
                        correct_index=0 if mixed else None, incorrect_index=right if mixed else None,
                        incorrect_answer="8" if mixed else None, incorrect_count=4 - right if mixed else 0,
                        teacher=teacher, rollout_tokens=760, teacher_tokens=ANSWER_TOKENS if mixed else 0,
                        engine_seconds=float(rng.uniform(1, 5)))


def _example(pid: str, question: str, trace: Any, rng: np.random.Generator) -> Any:
    from ssb.records import CuratedExample

    ids = np.stack([rng.choice(VOCAB, K, replace=False) for _ in range(ANSWER_TOKENS)])
    top1 = np.log(rng.beta(4, 1, size=(ANSWER_TOKENS, 1)))  # a usually confident teacher, decaying alternatives
    rest = top1 - 1.5 - np.cumsum(rng.exponential(0.6, (ANSWER_TOKENS, K - 1)), 1)
    logprobs = np.concatenate([top1, rest], 1)
    tail = np.log(np.maximum(1 - np.exp(logprobs).sum(1), 1e-6))
    return CuratedExample(
        problem_id=pid, question=question, answer="7", student_prompt_ids=rng.integers(0, VOCAB, 60).tolist(),
        teacher_prompt_ids=rng.integers(0, VOCAB, 400).tolist(), response_ids=ids[:, 0].tolist(),
        response_text=trace.teacher[0].text, topk_ids=ids.tolist(), topk_logprobs=logprobs.tolist(),
        tail_logprob=tail.tolist(), correct_rollout=trace.rollouts[0].text,
        incorrect_rollout=trace.rollouts[trace.incorrect_index].text, incorrect_answer="8", model="m",
        tokenizer="t", config_hash="c", seed=0)


def build_run(root: Path, problems: int, seed: int = 0) -> dict[str, list[str]]:
    """A run directory with a store of `problems` problems; the kept and skipped ids."""
    from ssb.config import dump_config, load_config
    from ssb.store import LogitStore

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(dump_config(load_config(None, [f"run_dir={root}"])))
    store = LogitStore.create_or_resume(str(root / "curated"), config_hash="c", model="m", tokenizer="t", top_k=K)
    ids: dict[str, list[str]] = {"kept": [], "skipped": []}
    for start in range(0, problems, COMMIT):
        examples, skipped, traces = [], {}, []
        for i in range(start, min(problems, start + COMMIT)):
            pid, question = f"p{i:06d}", f"Problem {i}: " + _words(rng, 40) + "?"
            outcome = "kept" if rng.random() < 0.25 else REASONS[int(rng.integers(0, len(REASONS)))]
            trace = _trace(pid, question, outcome, rng)
            traces.append(trace)
            if outcome == "kept":
                examples.append(_example(pid, question, trace, rng))
                ids["kept"].append(pid)
            else:
                skipped[pid] = outcome
                ids["skipped"].append(pid)
        store.append(examples, skipped, traces)
    return ids


def serve(run_dir: Path) -> tuple[Any, str]:
    import uvicorn

    from services.inspector import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(run_dir), log_level="warning", access_log=False))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


def timed(client: Any, path: str, params: dict[str, Any] | None = None) -> float:
    start = time.perf_counter()
    r = client.get(path, params=params)
    elapsed = (time.perf_counter() - start) * 1000
    if r.status_code != 200:
        raise RuntimeError(f"{path} {params}: {r.status_code} {r.text[:300]}")
    return elapsed


def measure(url: str, ids: dict[str, list[str]], requests: int, seed: int = 1) -> dict[str, float]:
    import httpx

    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=120) as c:
        index_ms = timed(c, "/problems", {"outcome": "kept"})
        lists = []
        for i in range(requests):
            params: dict[str, Any] = {"outcome": ["kept", "mixed", *REASONS][i % (2 + len(REASONS))],
                                      "offset": int(rng.integers(0, 200)), "limit": 50}
            if i % 3 == 0:
                params["q"] = str(rng.choice(WORDS)) + " " + str(rng.choice(WORDS))
            lists.append(timed(c, "/problems", params))
        first_ms = timed(c, f"/problems/{ids['kept'][0]}")  # loads the tokenizer
        picks = [str(rng.choice(ids["kept" if i % 2 == 0 else "skipped"])) for i in range(requests)]
        pages = [timed(c, f"/problems/{pid}") for pid in picks]
    return {"index_ms": index_ms, "list_ms": statistics.median(lists), "problem_ms": statistics.median(pages),
            "first_problem_ms": first_ms, "list_max_ms": max(lists), "problem_max_ms": max(pages)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=20, help="list pages and problem pages timed (each)")
    p.add_argument("--run-dir", help="build the run here and keep it (default: a temporary directory, removed)")
    p.add_argument("--smoke", action="store_true", help="200 problems, 5 requests: a check that it runs")
    args = p.parse_args()
    if args.smoke:
        args.problems, args.requests = 200, 5
    root = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="bench-inspector-")) / "run"
    try:
        start = time.perf_counter()
        ids = build_run(root, args.problems)
        built = time.perf_counter() - start
        store_mb = sum(f.stat().st_size for f in (root / "curated").iterdir()) / 1e6
        print(f"built {args.problems} problems ({len(ids['kept'])} kept) in {built:.1f} s: {store_mb:.1f} MB of "
              f"shards and trace files", flush=True)
        server, url = serve(root)
        result = measure(url, ids, args.requests)
        server.should_exit = True
        print(json.dumps({k: round(v, 1) for k, v in result.items()}))
        print(f"RESULT inspector list_ms={result['list_ms']:.1f} problem_ms={result['problem_ms']:.1f} "
              f"index_ms={result['index_ms']:.1f} problems={args.problems}")
    finally:
        if not args.run_dir:
            shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
