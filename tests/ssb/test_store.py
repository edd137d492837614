"""LogitStore: Parquet shards + manifest; round trip, resume, crash safety, checksums, size."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow.fs as pafs
import pytest

from ssb.records import CuratedExample, SkipReason
from ssb.store import SCHEMA, ChecksumError, LogitStore, StoreError, example_arrays

VOCAB, K = 151_000, 20
MODEL = "Qwen/Qwen2.5-3B-Instruct"
RUN = dict(config_hash="cafe1234", model=MODEL, tokenizer=MODEL, top_k=K)
WORDS = "the of and to a in is that for it as was with be by on not so we first then total each".split()


def synthetic_topk(
    rng: np.random.Generator, T: int, k: int = K
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Realistic-looking teacher output: Zipf-distributed ids (permuted over the vocab, as
    real token ids are not frequency-ordered), a usually-confident top-1, decaying tail."""
    perm = np.random.default_rng(12345).permutation(VOCAB)  # the same "language" for every row
    ids = np.empty((T, k), np.int64)
    ranks = np.minimum(rng.zipf(1.15, size=(T, 6 * k)), VOCAB) - 1
    for t in range(T):
        unique = list(dict.fromkeys(ranks[t].tolist()))[:k]
        while len(unique) < k:  # rarely needed: pad with fresh ranks
            unique = list(dict.fromkeys(unique + rng.integers(0, VOCAB, size=k).tolist()))[:k]
        ids[t] = perm[unique]
    top1 = np.log(rng.beta(4, 1, size=(T, 1)))
    rest = top1 - 1.5 - rng.exponential(2.0, size=(T, 1)) - np.cumsum(rng.exponential(0.6, (T, k - 1)), 1)
    logprobs = np.minimum(np.concatenate([top1, rest], 1), 0.0)
    tail = np.log(np.maximum(1 - np.exp(logprobs).sum(1), 1e-12))
    return ids, logprobs.astype(np.float32), tail.astype(np.float32)


def text(rng: np.random.Generator, n: int) -> str:
    return " ".join(rng.choice(WORDS, n)) + " so the answer is \\boxed{19}"


def make_example(pid: str, rng: np.random.Generator, T: int = 12, **over: Any) -> CuratedExample:
    ids, logprobs, tail = synthetic_topk(rng, T)
    fields: dict[str, Any] = dict(
        problem_id=pid, question=text(rng, 40), answer="19",
        student_prompt_ids=rng.integers(0, VOCAB, 30).tolist(),
        teacher_prompt_ids=rng.integers(0, VOCAB, 90).tolist(),
        response_ids=ids[:, 0].tolist(), response_text=text(rng, T // 2),
        topk_ids=ids.tolist(), topk_logprobs=logprobs.tolist(), tail_logprob=tail.tolist(),
        correct_rollout=text(rng, 60), incorrect_rollout=text(rng, 60), incorrect_answer=None,
        model=RUN["model"], tokenizer=RUN["tokenizer"], config_hash=RUN["config_hash"], seed=7,
        meta={"source": "gsm8k"},
    )
    return CuratedExample(**{**fields, **over})


@pytest.fixture(params=["local", "file_uri", "fsspec_memory"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(uri, extra kwargs) for a store: a plain path, a file:// URI, a non-local filesystem."""
    if request.param == "local":
        yield str(tmp_path / "run"), {}
    elif request.param == "file_uri":
        yield f"file://{tmp_path}/run", {}
    else:
        memory = fsspec.filesystem("memory")  # one process-wide store: use a fresh directory
        path = f"/ssb-test-{uuid.uuid4().hex}/run"
        yield path, {"filesystem": pafs.PyFileSystem(pafs.FSSpecHandler(memory))}
        memory.rm(path.rsplit("/", 1)[0], recursive=True)


def test_round_trip_of_the_float16_format(location: tuple[str, dict[str, Any]]) -> None:
    """Format 2 (encoding=None: every top-k entry in float16) is still written and read as before."""
    uri, fs = location
    rng = np.random.default_rng(0)
    examples = [make_example(f"p{i}", rng, T=10 + i, incorrect_answer="17" if i == 0 else None)
                for i in range(3)]
    store = LogitStore.create_or_resume(uri, **RUN, **fs, encoding=None)
    assert store.manifest["format"] == "ssb-logit-store/2" and "encoding" not in store.manifest
    entry = store.append(examples, skipped={"p9": SkipReason.TEACHER_WRONG})
    assert entry is not None and entry["name"] == "shard-00000.parquet" and entry["rows"] == 3

    reader = LogitStore.open(uri, **fs)
    assert reader.shard_uris() == [f"{uri.rstrip('/')}/shard-00000.parquet"]
    table = reader.read_table()
    assert table.schema.remove_metadata().equals(SCHEMA.remove_metadata())
    assert table.schema.metadata[b"ssb.top_k"] == b"20"
    assert table.column("num_tokens").to_pylist() == [10, 11, 12]

    back = list(reader.iter_examples())
    assert [ex.problem_id for ex in back] == ["p0", "p1", "p2"]
    for want, got in zip(examples, back):
        np.testing.assert_array_equal(got.topk_ids, want.topk_ids)
        assert got.response_ids == want.response_ids and got.teacher_prompt_ids == want.teacher_prompt_ids
        # float16: relative error <= 2^-11, plus subnormal spacing for values near 0.
        np.testing.assert_allclose(got.topk_logprobs, want.topk_logprobs, rtol=2**-11, atol=6e-8)
        np.testing.assert_array_equal(got.tail_logprob, want.tail_logprob)  # float32: exact
        for key in ("question", "answer", "response_text", "correct_rollout", "incorrect_rollout",
                    "incorrect_answer", "model", "tokenizer", "config_hash", "seed", "meta"):
            assert getattr(got, key) == getattr(want, key), key

    ids, logprobs, tail = example_arrays(table.slice(1, 1).to_pylist()[0])
    assert ids.shape == logprobs.shape == (11, K) and tail.shape == (11,)
    assert ids.dtype == np.int64 and logprobs.dtype == np.float32
    assert reader.summary()["skipped"] == {"teacher_answer_wrong": 1}


def test_float16_rounding_error_is_small() -> None:
    _, logprobs, _ = synthetic_topk(np.random.default_rng(1), T=2000)
    rounded = logprobs.astype(np.float16).astype(np.float32)
    err = np.abs(rounded - logprobs)
    prob_err = np.abs(np.exp(rounded) - np.exp(logprobs))  # what the KL actually sees
    print(f"\nfloat16 log-probs in [{logprobs.min():.1f}, 0]: max |delta| {err.max():.2e} "
          f"(mean {err.mean():.2e}), max |delta p| {prob_err.max():.2e}")
    assert err.max() <= 2**-11 * np.abs(logprobs).max() and err.max() < 0.02
    assert prob_err.max() < 2e-4  # p * |log p| * 2^-11 <= 2^-11 / e


def test_open_reports_missing_and_empty_stores(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store at"):
        LogitStore.open(str(tmp_path / "nothing"))
    store = LogitStore.create_or_resume(str(tmp_path / "run"), **RUN)
    store.append([], skipped={"p1": "no_correct_rollout"})
    with pytest.raises(StoreError, match="is empty"):
        LogitStore.open(str(tmp_path / "run"))
    reader = LogitStore.open(str(tmp_path / "run"), allow_empty=True)
    assert reader.read_table().num_rows == 0 and reader.done_ids() == {"p1"}
    with pytest.raises(StoreError, match="read-only"):
        reader.append([make_example("p2", np.random.default_rng(0))])


def test_resume_skips_done_problems_and_never_duplicates(location: tuple[str, dict[str, Any]]) -> None:
    uri, fs = location
    rng = np.random.default_rng(2)
    a, b, c = (make_example(pid, rng) for pid in "abc")
    store = LogitStore.create_or_resume(uri, **RUN, **fs)
    store.append([a, b, a], skipped={"s1": "no_incorrect_rollout"})  # a repeated inside a batch too
    skip_only = store.append([], skipped={"s2": "teacher_truncated"})
    assert skip_only is not None and skip_only["name"] is None  # skips persist without a file

    again = LogitStore.create_or_resume(uri, **RUN, **fs)
    assert again.done_ids() == {"a", "b", "s1", "s2"} and again.kept_ids() == {"a", "b"}
    entry = again.append([a, c], skipped={"s1": "no_correct_rollout", "b": "teacher_wrong"})
    assert entry is not None and entry["problem_ids"] == ["c"] and entry["skipped"] == {}
    assert entry["name"] == "shard-00001.parquet"
    assert again.append([b], skipped={"s2": "x"}) is None  # nothing new: no commit at all

    ids = LogitStore.open(uri, **fs).read_table().column("problem_id").to_pylist()
    assert sorted(ids) == ["a", "b", "c"]
    summary = again.summary()
    assert (summary["rows"], summary["shards"], summary["tokens"]) == (3, 2, 36)
    assert summary["skipped"] == {"no_incorrect_rollout": 1, "teacher_truncated": 1}


def test_another_runs_store_is_refused(tmp_path: Path) -> None:
    LogitStore.create_or_resume(str(tmp_path), **RUN)
    with pytest.raises(StoreError, match=r"config_hash: store has 'cafe1234'.*another run directory"):
        LogitStore.create_or_resume(str(tmp_path), **{**RUN, "config_hash": "beef"})
    with pytest.raises(StoreError, match="top_k"):
        LogitStore.create_or_resume(str(tmp_path), **{**RUN, "top_k": 5})


def test_append_rejects_examples_that_do_not_fit_the_store(tmp_path: Path) -> None:
    store = LogitStore.create_or_resume(str(tmp_path), **RUN)
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="config_hash"):
        store.append([make_example("a", rng, config_hash="other")])
    short = make_example("b", rng)
    short.topk_ids = [row[:5] for row in short.topk_ids]
    with pytest.raises(ValueError, match=r"b: topk_ids \(12, 5\)"):
        store.append([short])
    with pytest.raises(ValueError, match="both kept and skipped"):
        store.append([make_example("c", rng)], skipped={"c": "teacher_wrong"})
    assert store.manifest["shards"] == []


def test_writer_killed_mid_commit_leaves_a_valid_store(
    location: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, fs = location
    rng = np.random.default_rng(4)
    store = LogitStore.create_or_resume(uri, **RUN, **fs)
    store.append([make_example("a", rng)])

    def killed() -> None:
        raise KeyboardInterrupt("killed after the shard moved, before the manifest")

    monkeypatch.setattr(store, "_write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        store.append([make_example("b", rng)])
    assert store.done_ids() == {"a"}  # memory matches the committed manifest
    files = store.filesystem
    with files.open_output_stream(f"{store.root}/.tmp-dead-shard-00002.parquet") as f:
        f.write(b"half a shard")

    def listed() -> list[str]:
        return sorted(info.base_name for info in files.get_file_info(pafs.FileSelector(store.root)))

    assert "shard-00001.parquet" in listed()

    reader = LogitStore.open(uri, **fs)  # readers ignore orphans and never delete them
    assert reader.read_table().column("problem_id").to_pylist() == ["a"]
    assert len(listed()) == 6  # and the uncommitted shard's trace file

    resumed = LogitStore.create_or_resume(uri, **RUN, **fs)
    assert listed() == ["manifest.json", "shard-00000.parquet", "trace-00000.parquet"]
    entry = resumed.append([make_example("b", rng)])
    assert entry is not None and entry["name"] == "shard-00001.parquet"
    named = {e["name"] for e in resumed.manifest["shards"]} | {e["trace"]["name"] for e in resumed.manifest["shards"]}
    assert named <= set(listed())  # the manifest never names a missing file
    resumed.verify()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_shard_is_named_and_never_read(tmp_path: Path, damage: str) -> None:
    rng = np.random.default_rng(5)
    store = LogitStore.create_or_resume(str(tmp_path), **RUN)
    store.append([make_example("a", rng)])
    store.append([make_example("b", rng)])
    shard = tmp_path / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[:-100]))
    else:
        shard.unlink()
    expected = {"flip": "corrupted", "truncate": "truncated", "delete": "missing"}[damage]
    with pytest.raises(ChecksumError, match=rf"shard-00001\.parquet.*{expected}"):
        store.verify()
    with pytest.raises(ChecksumError, match=r"shard-00001\.parquet"):
        LogitStore.open(str(tmp_path)).read_table()
    with pytest.raises(ChecksumError):
        list(store.iter_examples())


def test_bytes_per_response_token_at_k20(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    store = LogitStore.create_or_resume(str(tmp_path), **RUN)
    store.append([make_example(f"gsm8k-{i:05d}", rng, T=200) for i in range(64)])
    summary = store.summary()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    on_disk = (tmp_path / "shard-00000.parquet").stat().st_size
    assert summary["bytes"] == manifest["shards"][0]["bytes"] == on_disk
    print(f"\n{on_disk} bytes / {summary['tokens']} tokens = {summary['bytes_per_token']:.1f} B/token at k=20")
    assert summary["bytes_per_token"] <= 128
