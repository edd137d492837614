"""What `ssb inspect` shows of a run directory, read from the files a run leaves behind: plain
Python, no Ray and no web framework (services/inspector/ renders it as pages and JSON).

- overview: the curation funnel (problems → mixed → teacher accepted → kept, and each skip
  reason) from the store's traces, the accuracy table with 95% intervals (eval/results.json,
  else report.json), the loss curve (train/metrics.jsonl), timings.json and config.yaml;
- the problem list (TraceIndex), one problem's whole trace, the teacher prompt it was shown
  re-rendered from the round's config, and for a kept problem the teacher's answer token by
  token with its stored top-k (confidence: top-1 probability and entropy over the k ids plus
  the tail as one bucket, the buckets the loss sees);
- the evaluation comparison: two labels' rows of a benchmark paired by problem id.

Round 1 is the run directory, round r ≥ 2 its `round-<r>/` (ssb/layout.py). A damaged trace or
shard file raises ChecksumError naming it, a store from before traces StoreError; a round,
problem, benchmark or label that is not there raises NotFound.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow.compute as pc

from ssb.diagnostics import TEACHER_REASONS
from ssb.eval_table import read_records
from ssb.layout import EVAL, MERGED, RunLayout, read_jsonl
from ssb.records import EvalRecord
from ssb.scoring import wilson
from ssb.store import LogitStore, StoreError, example_arrays
from ssb.trace import KEPT, OUTCOMES, ProblemTrace, TraceIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

MIXED = "mixed"  # a list filter: the problems with right and wrong rollouts, which reached the teacher
MIXED_OUTCOMES = (KEPT, *TEACHER_REASONS)
COMPARE_FILTERS = ("all", "base_right_student_wrong", "base_wrong_student_right")
STAGE = "the inspector"


class NotFound(LookupError):
    """What a request names (a round, problem, benchmark, label, adapter) is not in this run."""


class BadRequest(ValueError):
    pass


# -- caches keyed on a file's (mtime_ns, size) ----------------------------------------------------
_CACHE_SIZE = 64  # a service inspects many jobs' run directories: the oldest entries go
_cache: OrderedDict[tuple[str, str], tuple[tuple[int, int] | None, Any]] = OrderedDict()
_cache_lock = threading.Lock()
_build_locks: dict[tuple[str, str], threading.Lock] = {}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_mtime_ns, st.st_size


def cached(kind: str, path: Path, load: Callable[[], T]) -> T:
    """`load()`, reused until `path`'s (mtime_ns, size) changes. The stamp is taken before
    loading, so a file rewritten meanwhile is loaded again next time. One build at a time per
    key: ten requests arriving together on a cold 10,000-problem store build one index."""
    key = (kind, str(path))
    with _cache_lock:
        lock = _build_locks.setdefault(key, threading.Lock())
    with lock:
        stamp = _stamp(path)
        with _cache_lock:
            hit = _cache.get(key)
            if hit is not None and hit[0] == stamp:
                _cache.move_to_end(key)
                return hit[1]
        value = load()
        with _cache_lock:
            _cache[key] = (stamp, value)
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        return value


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


# -- token text ------------------------------------------------------------------------------------
class TokenText:
    """id → text through a tokenizer, `#<id>` for an id outside its vocabulary or without one."""

    def __init__(self, tokenizer: Any | None):
        self.tokenizer = tokenizer
        self.vocab = len(tokenizer) if tokenizer is not None else 0
        self._memo: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        token_id = int(token_id)
        text = self._memo.get(token_id)
        if text is None:
            text = f"#{token_id}"
            if 0 <= token_id < self.vocab:
                try:
                    text = self.tokenizer.decode([token_id])
                except Exception:  # noqa: BLE001 - a token that does not decode is shown by its id
                    pass
            self._memo[token_id] = text
        return text


# transformers imports its classes lazily: two threads importing it at once can see a half-made
# module ("cannot import name 'AutoTokenizer'"). Whatever loads from it in a server holds this.
LOAD_LOCK = threading.RLock()


def token_text(model_name: str) -> TokenText:
    """The round's tokenizer, loaded once; none (ids shown as `#<id>`) when it cannot be loaded.
    Only local files: the inspector must work offline and never waits on a download."""
    with LOAD_LOCK:
        return _token_text(model_name)


@lru_cache(maxsize=4)
def _token_text(model_name: str) -> TokenText:
    try:
        from transformers import AutoTokenizer

        from ssb.default_model import resolve_model

        return TokenText(AutoTokenizer.from_pretrained(resolve_model(model_name), local_files_only=True))
    except Exception as e:  # noqa: BLE001 - any failure means "no token texts", never a failed page
        log.warning("inspector: no tokenizer for %s (%s); showing token ids", model_name, e)
        return TokenText(None)


def token_confidence(row: Mapping[str, Any], text: Callable[[int], str]) -> list[dict[str, Any]]:
    """Per response token: its id and text, the teacher's top-1 probability and entropy over the
    k stored ids plus the tail as one bucket (renormalised, as the loss's log-softmax does), the
    tail's mass and the top-k alternatives."""
    ids, logprobs, tail = example_arrays(row)
    k = ids.shape[1]
    buckets = np.concatenate([logprobs, tail[:, None]], 1).astype(np.float64)
    top = buckets.max(1, keepdims=True)
    logp = buckets - (top + np.log(np.exp(buckets - top).sum(1, keepdims=True)))
    p = np.exp(logp)
    entropy = -np.where(p > 0, p * logp, 0.0).sum(1)
    out = []
    for t, token_id in enumerate(row["response_ids"]):
        out.append({"id": int(token_id), "text": text(token_id), "p_top1": round(float(p[t, :k].max()), 5),
                    "entropy": round(float(entropy[t]), 5), "p_tail": round(float(p[t, k]), 5),
                    "top": [{"id": int(i), "text": text(i), "p": round(float(q), 5)}
                            for i, q, lp in zip(ids[t], p[t, :k], logprobs[t]) if not np.isneginf(lp)]})
    return out


# -- the store of one round ------------------------------------------------------------------------
@dataclass
class StoreView:
    store: LogitStore
    index: TraceIndex
    outcomes: dict[str, int]
    shard_of: dict[str, int]  # kept problem id → its shard's position in store.shards()


def _load_store(curated: str) -> StoreView:
    store = LogitStore.open(curated, allow_empty=True)
    index = TraceIndex(store)
    files = [entry for entry in store.manifest["shards"] if entry["name"]]
    shard_of = {pid: i for i, entry in enumerate(files) for pid in entry["problem_ids"]}
    return StoreView(store, index, index.outcomes(), shard_of)


def _side(record: EvalRecord | None) -> dict[str, Any] | None:
    """One label's answer to a problem: the greedy one when drawn, else the majority vote's."""
    if record is None:
        return None
    if record.greedy_verdict is not None:
        verdict = record.greedy_verdict
        return {"answer": record.greedy_answer, "verdict": verdict.value, "right": verdict.is_correct,
                "text": record.greedy_text, "metric": "greedy"}
    right = record.maj_correct
    texts = record.sample_texts
    return {"answer": record.maj_answer, "verdict": None if right is None else ("correct" if right else "incorrect"),
            "right": right, "text": texts[0] if texts else None, "metric": "maj"}


def _label_order(label: str) -> tuple[int, str]:
    return (0 if label == "base" else 2 if label == "ssb" else 1, label)


class RunView:
    """One run directory, read on demand; cheap to make per request (the caches are shared)."""

    def __init__(self, root: str | Path):
        self.layout = RunLayout(str(root))
        self.root = self.layout.local(STAGE)

    # -- rounds, config, store ---------------------------------------------------------------
    def rounds(self) -> list[int]:
        return [r for r, _ in self.layout.rounds()]

    def round(self, r: int) -> RunLayout:
        if r not in self.rounds():
            raise NotFound(f"no round {r} in {self.root} (rounds: {', '.join(map(str, self.rounds()))})")
        return self.layout.round(r)

    def has_store(self, r: int = 1) -> bool:
        return Path(self.round(r).manifest).is_file()

    def store(self, r: int) -> StoreView:
        lay = self.round(r)
        if not self.has_store(r):
            raise NotFound(f"round {r} has no curated store ({lay.manifest} does not exist)")
        return cached("store", Path(lay.manifest), lambda: _load_store(lay.curated))

    def config_text(self, r: int) -> str | None:
        path = self.round(r).config
        return path.read_text() if path.is_file() else None

    def config(self, r: int) -> Any | None:
        """The round's RunConfig; None without config.yaml or when it no longer loads."""
        path = self.round(r).config

        def load() -> Any:
            from ssb.config import load_config
            try:
                return load_config(path) if path.is_file() else None
            except Exception as e:  # noqa: BLE001 - a config of another version still shows as text
                log.warning("inspector: %s does not load (%s)", path, e)
                return None
        return cached("config", path, load)

    def token_text(self, r: int) -> TokenText:
        cfg = self.config(r)
        return token_text(cfg.model.name if cfg is not None else "default")

    def trained(self, r: int) -> bool:
        return self.round(r).adapter_config.is_file()

    # -- overview ----------------------------------------------------------------------------
    def funnel(self, r: int) -> dict[str, Any]:
        sv = self.store(r)
        problems, outcomes = len(sv.index), sv.outcomes
        stages = [("problems", problems, ""), ("mixed", sum(outcomes.get(o, 0) for o in MIXED_OUTCOMES), MIXED),
                  ("teacher accepted", outcomes.get(KEPT, 0), KEPT), ("kept", len(sv.store.kept_ids()), KEPT)]
        reasons = [o for o in OUTCOMES if o != KEPT] + sorted(set(outcomes) - set(OUTCOMES))
        return {"stages": [{"stage": s, "count": n, "outcome": o} for s, n, o in stages],
                "skipped": [{"reason": o, "count": outcomes[o]} for o in reasons if outcomes.get(o)]}

    def accuracy(self) -> list[dict[str, Any]]:
        """label × benchmark accuracy with its 95% interval (Wilson over problems when a file
        has none), from eval/results.json, else report.json."""
        results = _read_json(self.layout.eval_results)
        if results is None:
            report = _read_json(self.layout.report_json) or {}
            results = {}
            for bench, per in (report.get("benchmarks") or {}).items():
                for label in ("base", "ssb"):
                    if label in per:
                        results.setdefault(label, {})[bench] = per[label]
        rows = []
        for label in sorted(results, key=_label_order):
            for bench, d in sorted(results[label].items()):
                n, acc = int(d.get("n") or 0), d.get("accuracy")
                ci = d.get("ci95") or (wilson(round(acc * n), n) if acc is not None else None)
                rows.append({"benchmark": bench, "label": label, "metric": d.get("metric"), "accuracy": acc,
                             "ci95": list(ci) if ci else None, "n": n, "answered_share": d.get("answered_share")})
        return rows

    def loss_curve(self, r: int) -> list[list[float]]:
        return [[m["step"], m["loss"]] for m in read_jsonl(self.round(r).train_metrics) if "loss" in m and "step" in m]

    def overview(self, r: int) -> dict[str, Any]:
        """Everything of the overview page. A store that cannot be read (damaged, from before
        traces) is reported in `store_error`, not left out."""
        lay = self.round(r)
        out: dict[str, Any] = {"run_dir": str(self.root), "round": r, "rounds": self.rounds(),
                               "has_store": self.has_store(r), "funnel": None, "store_error": None}
        if out["has_store"]:
            try:
                out["funnel"] = self.funnel(r)
            except StoreError as e:
                out["store_error"] = str(e)
        summary = _read_json(lay.curation_summary)
        out["curation_summary"] = summary
        out.update(accuracy=self.accuracy(), loss=self.loss_curve(r), timings=_read_json(self.layout.timings) or {},
                   config=self.config_text(r), benchmarks=self.benchmarks(), labels=self.labels(),
                   trained=self.trained(r))
        return out

    # -- problems ----------------------------------------------------------------------------
    def problems(self, r: int, outcome: str | None = None, q: str | None = None, offset: int = 0,
                 limit: int = 50) -> dict[str, Any]:
        if offset < 0 or limit < 1:
            raise BadRequest(f"offset {offset} and limit {limit}: need offset ≥ 0 and limit ≥ 1")
        sv = self.store(r)
        total, items = sv.index.select(MIXED_OUTCOMES if outcome == MIXED else outcome or None, q or None,
                                       offset, limit)
        return {"total": total, "items": items, "offset": offset, "limit": limit, "outcome": outcome or None,
                "q": q or None, "round": r, "outcomes": sv.outcomes}

    def trace(self, r: int, problem_id: str) -> ProblemTrace:
        trace = self.store(r).index.get(problem_id)
        if trace is None:
            raise NotFound(f"no problem {problem_id!r} in round {r}'s store")
        return trace

    def kept_row(self, r: int, problem_id: str) -> dict[str, Any]:
        """The kept example's row of its shard, read through the manifest's checks."""
        sv = self.store(r)
        if problem_id not in sv.shard_of:
            raise NotFound(f"problem {problem_id!r} was not kept in round {r}: it has no stored answer")
        table = sv.store.shards()[sv.shard_of[problem_id]].read_table()
        rows = table.filter(pc.equal(table.column("problem_id"), problem_id)).to_pylist()
        if not rows:
            raise StoreError(f"the manifest names {problem_id!r} in {sv.store.shards()[sv.shard_of[problem_id]].name}, "
                             "which has no such row")
        return rows[0]

    def teacher_prompt(self, r: int, trace: ProblemTrace, row: Mapping[str, Any] | None) -> list[dict[str, str]] | None:
        """The messages the teacher was shown, re-rendered with the round's prompts."""
        if trace.correct_index is None or trace.incorrect_index is None:
            return None
        from ssb.prompts import Prompts, teacher_messages

        texts = {ro.index: ro.text for ro in trace.rollouts}
        correct, incorrect = texts.get(trace.correct_index) or "", texts.get(trace.incorrect_index) or ""
        if row is not None:  # a trace rebuilt from an example holds no rollout texts; its row does
            correct, incorrect = correct or row["correct_rollout"], incorrect or row["incorrect_rollout"]
        cfg = self.config(r)
        prompts = Prompts.from_config(cfg.prompts) if cfg is not None else Prompts()
        return teacher_messages(trace.question, correct, incorrect, trace.incorrect_answer, prompts)

    def problem(self, r: int, problem_id: str) -> dict[str, Any]:
        trace = self.trace(r, problem_id)
        row = self.kept_row(r, problem_id) if trace.kept else None
        d = trace.to_dict()
        chosen = {trace.correct_index: "correct", trace.incorrect_index: "incorrect"}
        d["rollouts"] = [{**asdict(ro), "chosen_as": chosen.get(ro.index)} for ro in trace.rollouts]
        d["selection"] = {key: d.pop(key) for key in
                          ("correct_index", "incorrect_index", "incorrect_answer", "incorrect_count")}
        d["teacher_prompt"] = self.teacher_prompt(r, trace, row)
        d["round"], d["kl_available"] = r, row is not None and self.trained(r)
        if row is not None:
            teacher = d["teacher"]
            target = next((s for s in teacher if s["chosen"]), teacher[0] if teacher else None)
            if target is None:
                target = {"index": 0, "text": row["response_text"], "chosen": True}
                teacher.append(target)
            target["tokens_confidence"] = token_confidence(row, self.token_text(r))
            d["example"] = {"num_tokens": row["num_tokens"], "top_k": self.store(r).store.manifest["top_k"],
                            "student_prompt_tokens": len(row["student_prompt_ids"]),
                            "teacher_prompt_tokens": len(row["teacher_prompt_ids"])}
        return d

    # -- evaluation --------------------------------------------------------------------------
    def labels(self) -> list[str]:
        """The labels with per-problem outputs: the directories of eval/ holding .jsonl files."""
        ev = self.root / EVAL
        found = [d.name for d in ev.iterdir() if d.is_dir() and d.name != MERGED and any(d.glob("*.jsonl"))] \
            if ev.is_dir() else []
        return sorted(found, key=_label_order)

    def benchmarks(self) -> list[str]:
        return sorted({p.stem for label in self.labels() for p in (self.root / EVAL / label).glob("*.jsonl")})

    def eval_rows(self, label: str, benchmark: str) -> list[EvalRecord]:
        path = self.layout.eval_outputs(label, benchmark)
        if label not in self.labels() or not path.is_file():
            raise NotFound(f"no outputs of {label!r} on benchmark {benchmark!r} ({path} does not exist)")
        return cached("eval", path, lambda: read_records(path))

    def default_labels(self) -> tuple[str | None, str | None]:
        labels = self.labels()
        a = "base" if "base" in labels else (labels[0] if labels else None)
        others = [label for label in labels if label != a]
        return a, ("ssb" if "ssb" in others else (others[-1] if others else None))

    def compare(self, benchmark: str, a: str | None = None, b: str | None = None, filter: str = "all",
                offset: int = 0, limit: int = 50) -> dict[str, Any]:
        """Label a's and label b's rows of a benchmark paired by problem id (a's order, then
        problems only b has), with counts per agreement; `filter` keeps one disagreement."""
        if filter not in COMPARE_FILTERS:
            raise BadRequest(f"filter {filter!r}: one of {', '.join(COMPARE_FILTERS)}")
        if offset < 0 or limit < 1:
            raise BadRequest(f"offset {offset} and limit {limit}: need offset ≥ 0 and limit ≥ 1")
        if benchmark not in self.benchmarks():
            raise NotFound(f"no benchmark {benchmark!r} under {self.root / EVAL}")
        da, db = self.default_labels()
        a, b = a or da, b or db
        if a is None or b is None:
            raise NotFound(f"benchmark {benchmark!r} needs two labels to compare; eval/ has {self.labels()}")
        rows_a = {r.id: r for r in self.eval_rows(a, benchmark)}
        rows_b = {r.id: r for r in self.eval_rows(b, benchmark)}
        items = []
        for pid in [*rows_a, *(pid for pid in rows_b if pid not in rows_a)]:
            ra, rb = rows_a.get(pid), rows_b.get(pid)
            first = ra or rb
            items.append({"problem_id": pid, "question": first.question, "reference": first.answer,
                          "a": _side(ra), "b": _side(rb)})
        right = lambda item, side: (item[side] or {}).get("right")
        kinds = {"base_right_student_wrong": lambda i: right(i, "a") is True and right(i, "b") is False,
                 "base_wrong_student_right": lambda i: right(i, "a") is False and right(i, "b") is True}
        counts = {"all": len(items), **{name: sum(map(test, items)) for name, test in kinds.items()}}
        chosen = items if filter == "all" else [i for i in items if kinds[filter](i)]
        return {"benchmark": benchmark, "a": a, "b": b, "filter": filter, "total": len(chosen), "counts": counts,
                "offset": offset, "limit": limit, "items": chosen[offset:offset + limit], "labels": self.labels()}
