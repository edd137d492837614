"""The packed logit store (format 3): adaptive k, quantized log-probs, packed ids; read back as
the format-2 columns; format-2 stores still read, trained on and resumed only in their format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ssb.batching import TRAIN_COLUMNS, collate
from ssb.config import StoreConfig
from ssb.loss import topk_kl_loss
from ssb.manifest import ManifestError
from ssb.store import LogitStore, StoreError, example_arrays
from ssb.store_codec import (
    StoreEncoding,
    decode_packed,
    encoding_of,
    kept_counts,
    merge_kl,
    pack_row,
    packed_columns,
    padding_mask,
    target_kl,
)
from tests.ssb.test_store import RUN, K, location, make_example, synthetic_topk  # noqa: F401

ALL_ENTRIES = StoreEncoding(mass=1.0, logprob_bits=8)


def consistent_topk(rng: np.random.Generator, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """synthetic_topk's ids and shape of log-probs, rescaled so the k entries and a tail of
    1e-6 to 0.05 add up to 1, as an engine's do."""
    ids, logprobs, _ = synthetic_topk(rng, T)
    tail = np.log(rng.uniform(1e-6, 0.05, T))
    lp = logprobs.astype(np.float64)
    lp += np.log1p(-np.exp(tail))[:, None] - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    return ids, lp.astype(np.float32), tail.astype(np.float32)


def round_trip(ids: np.ndarray, logprobs: np.ndarray, tail: np.ndarray, enc: StoreEncoding, width: int = 4):
    row = pack_row(ids, logprobs, tail, enc)
    decoded = decode_packed(pa.table(packed_columns([row], ids.shape[1], width)), ids.shape[1], width)
    k = ids.shape[1]
    return (np.asarray(decoded["topk_ids"][0].as_py()).reshape(-1, k),
            np.asarray(decoded["topk_logprobs"][0].as_py()).reshape(-1, k),
            np.asarray(decoded["tail_logprob"][0].as_py()), row)


def test_every_entry_kept_comes_back_within_the_quantization_step():
    ids, logprobs, tail = consistent_topk(np.random.default_rng(0), T=300)
    got_ids, got_lp, got_tail, row = round_trip(ids, logprobs, tail, ALL_ENTRIES)
    assert (row.counts == K).all() and not padding_mask(got_lp).any()
    # Entries whose codes tie may come back in either order (format 4 stores them by id rank):
    # each id keeps its own log-prob, best first.
    assert (np.diff(got_lp, axis=1) <= 0).all()
    where = np.argsort(got_ids, axis=1)
    back = np.take_along_axis(got_lp, where, 1)[np.arange(len(ids))[:, None], np.argsort(np.argsort(ids, axis=1), 1)]
    np.testing.assert_array_equal(np.sort(got_ids, 1), np.sort(ids, 1))
    got_ids, got_lp = ids, back  # in the written order
    np.testing.assert_allclose(got_lp[:, 1:], logprobs[:, 1:], atol=row.step)  # renormalised: < one step
    np.testing.assert_allclose(got_tail, tail, atol=row.step)
    # The top-1 is derived from the rest: its error is theirs added up (~5% of each at this step),
    # and where it is near 1 the tail keeps its digits.
    np.testing.assert_allclose(np.exp(got_lp[:, 0]), np.exp(logprobs[:, 0]), atol=1e-2)
    total = np.exp(got_lp.astype(np.float64)).sum(1) + np.exp(got_tail.astype(np.float64))
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_mass_keeps_the_fewest_entries_reaching_it_and_the_rest_joins_the_tail():
    logprobs = np.log(np.array([[0.6, 0.3, 0.05, 0.03, 0.01], [0.995, 0.002, 0.001, 0.001, 0.0005]]))
    ids = np.array([[7, 3, 9, 1, 4], [2, 8, 5, 6, 0]])
    tail = np.log(1 - np.exp(logprobs).sum(1))
    got_ids, got_lp, got_tail, row = round_trip(ids, logprobs, tail, StoreEncoding(mass=0.95, logprob_bits=8))
    assert row.counts.tolist() == [3, 1]
    # The other slots: log-prob -inf (no bucket), each the smallest id not kept, so ids stay distinct.
    assert got_ids.tolist() == [[7, 3, 9, 0, 1], [2, 0, 1, 3, 4]]
    assert padding_mask(got_lp).tolist() == [[False, False, False, True, True], [False, True, True, True, True]]
    np.testing.assert_allclose(np.exp(got_tail), [0.05, 0.005], rtol=0.03)  # 0.03 + 0.01 + 0.01; 1 - 0.995
    np.testing.assert_allclose(np.exp(got_lp[1, 0]), 0.995, rtol=1e-4)


def test_entries_in_any_order_are_packed_best_first():
    ids, logprobs, tail = consistent_topk(np.random.default_rng(6), T=50)
    shuffled = np.random.default_rng(7).permuted(np.arange(K)[None, :].repeat(50, 0), axis=1)
    want = round_trip(ids, logprobs, tail, ALL_ENTRIES)
    got = round_trip(np.take_along_axis(ids, shuffled, 1), np.take_along_axis(logprobs, shuffled, 1), tail, ALL_ENTRIES)
    for a, b in zip(want[:3], got[:3]):
        np.testing.assert_array_equal(a, b)


def test_target_kl_is_zero_for_the_same_target_and_grows_as_less_is_kept():
    ids, logprobs, tail = consistent_topk(np.random.default_rng(1), T=400)
    same = target_kl((ids, logprobs, tail), (ids, logprobs, tail), 2.0)
    np.testing.assert_allclose(same, 0.0, atol=1e-12)
    kls = []
    for mass in (1.0, 0.999, 0.99, 0.9):
        got_ids, got_lp, got_tail, _ = round_trip(ids, logprobs, tail, StoreEncoding(mass=mass, logprob_bits=8))
        kls.append([target_kl((ids, logprobs, tail), (got_ids, got_lp, got_tail), t).mean() for t in (1.0, 2.0)])
    at_t1, at_t2 = np.array(kls).T
    assert at_t1.max() < 1e-3  # at T=1 merging loses nothing the buckets hold: only quantization
    assert list(at_t2) == sorted(at_t2) and at_t2[-1] > 10 * at_t2[0]  # at T=2 small entries count


def test_entry_nats_keeps_an_entry_only_where_it_buys_that_much_kl_at_the_training_temperature():
    ids, logprobs, tail = consistent_topk(np.random.default_rng(8), T=400)
    lp = np.sort(logprobs.astype(np.float64), 1)[:, ::-1]
    t64 = tail.astype(np.float64)
    np.testing.assert_allclose(merge_kl(lp, t64, 1.0), 0.0, atol=1e-9)  # merging is exact at T=1
    assert (merge_kl(lp, t64, 1.5) <= merge_kl(lp, t64, 2.0) + 1e-12).all()  # and costs more as T rises
    enc = StoreEncoding(logprob_bits=8, entry_nats=0.002, temperature=2.0)
    counts = kept_counts(lp, t64, enc)
    cost = merge_kl(lp, t64, 2.0) + 0.002 * np.arange(1, K + 1)
    np.testing.assert_allclose(cost[np.arange(len(lp)), counts - 1], cost.min(1))
    got_ids, got_lp, got_tail, row = round_trip(ids, logprobs, tail, enc)
    assert (row.counts == counts).all() and 1 < counts.mean() < K
    # What the loss sees at T=2 is off by the merge KL the count chose (plus quantization) and no more.
    kl = target_kl((ids, logprobs, tail), (got_ids, got_lp, got_tail), 2.0)
    np.testing.assert_allclose(kl.mean(), merge_kl(lp, t64, 2.0)[np.arange(len(lp)), counts - 1].mean(), atol=2e-4)
    # Against the mass rule keeping as many entries in all, the tempered KL is lower.
    by_mass = next(StoreEncoding(mass=m, logprob_bits=8) for m in np.linspace(0.9, 1.0, 2001)
                   if kept_counts(lp, t64, StoreEncoding(mass=m)).sum() >= counts.sum())
    mass_ids, mass_lp, mass_tail, _ = round_trip(ids, logprobs, tail, by_mass)
    assert kl.mean() < target_kl((ids, logprobs, tail), (mass_ids, mass_lp, mass_tail), 2.0).mean()


def test_a_format_3_store_ids_as_they_are_is_still_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    examples = [make_example(f"p{i}", rng, T=10 + i) for i in range(3)]
    store = LogitStore.create_or_resume(str(tmp_path), **RUN)
    store.append(examples)
    want = store.read_table()
    # Rewrite the shard as format 3 wrote it: kept ids as they are, best first, code differences
    # (pack_row's own order), no id_dictionary column.
    path = tmp_path / store.manifest["shards"][0]["name"]
    rows = [pack_row(np.asarray(ex.topk_ids), np.asarray(ex.topk_logprobs), np.asarray(ex.tail_logprob), store.encoding)
            for ex in examples]
    table = pq.read_table(path).drop_columns(["id_dictionary"])
    for name, values in (("packed_ids", [r.ids.astype("<u4").tobytes() for r in rows]),
                         ("packed_codes", [r.codes.tobytes() for r in rows])):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.binary()))
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"ssb.format": b"ssb-logit-store/3"}), path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    data = path.read_bytes()
    manifest["format"] = "ssb-logit-store/3"
    manifest["shards"][0].update(bytes=len(data), sha256=__import__("hashlib").sha256(data).hexdigest())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    got = LogitStore.open(str(tmp_path)).read_table()
    assert got.drop_columns(["topk_ids", "topk_logprobs"]).equals(want.drop_columns(["topk_ids", "topk_logprobs"])
                                                                  .replace_schema_metadata(got.schema.metadata))
    for a, b in zip(got.to_pylist(), want.to_pylist()):  # the same entries; ties in code in either order
        (ids_a, lp_a, _), (ids_b, lp_b, _) = example_arrays(a), example_arrays(b)
        by_id_a, by_id_b = np.argsort(ids_a, axis=1), np.argsort(ids_b, axis=1)
        np.testing.assert_array_equal(np.take_along_axis(ids_a, by_id_a, 1), np.take_along_axis(ids_b, by_id_b, 1))
        np.testing.assert_array_equal(np.take_along_axis(lp_a, by_id_a, 1), np.take_along_axis(lp_b, by_id_b, 1))
    with pytest.raises(StoreError, match="made by an earlier version"):
        LogitStore.create_or_resume(str(tmp_path), **RUN)


def test_packed_round_trip(location: tuple[str, dict[str, Any]]) -> None:  # noqa: F811 (the fixture)
    uri, fs = location
    rng = np.random.default_rng(2)
    examples = [make_example(f"p{i}", rng, T=10 + i) for i in range(3)]
    store = LogitStore.create_or_resume(uri, **RUN, **fs)
    store.append(examples)
    assert store.manifest["format"] == "ssb-logit-store/4"
    assert store.manifest["encoding"] == {"mass": 0.999, "logprob_bits": 6}
    reader = LogitStore.open(uri, **fs)
    table = reader.read_table()
    assert table.column_names[:9] == ["problem_id", "question", "answer", "student_prompt_ids", "teacher_prompt_ids",
                                      "response_ids", "response_text", "num_tokens", "topk_ids"]
    assert table.schema.field("topk_logprobs").type.value_type.bit_width == 32
    assert table.schema.metadata[b"ssb.id_bytes"] == b"4"  # ids up to 151,000: uint32
    only = reader.shards()[0].read_table(TRAIN_COLUMNS)
    assert only.column_names == TRAIN_COLUMNS
    for want, got in zip(examples, reader.iter_examples()):
        ids, logprobs, tail = example_arrays({"num_tokens": len(want.response_ids), "topk_ids": got.topk_ids,
                                              "topk_logprobs": got.topk_logprobs, "tail_logprob": got.tail_logprob})
        assert ids.shape == (len(want.response_ids), K) and got.response_text == want.response_text
        kl = target_kl((np.asarray(want.topk_ids), np.asarray(want.topk_logprobs), np.asarray(want.tail_logprob)),
                       (ids, logprobs, tail), 1.0)
        assert kl.mean() < 5e-3  # make_example's entries can add up past 1: no exact target to keep


def test_a_small_vocabulary_packs_ids_in_two_bytes_and_the_store_halves(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    examples = []
    for i in range(16):
        ex = make_example(f"p{i}", rng, T=120)
        ex.topk_ids = (np.asarray(ex.topk_ids) % 49_152).tolist()  # SmolLM2's vocabulary
        ex.response_ids = [row[0] for row in ex.topk_ids]
        examples.append(ex)
    sizes = {}
    for name, enc in (("float16", None), ("packed", StoreEncoding())):
        store = LogitStore.create_or_resume(str(tmp_path / name), **RUN, encoding=enc)
        store.append(examples)
        sizes[name] = store.summary()["bytes_per_token"]
    meta = pq.ParquetFile(tmp_path / "packed" / "shard-00000.parquet").schema_arrow.metadata
    assert meta[b"ssb.id_bytes"] == b"2" and meta[b"ssb.format"] == b"ssb-logit-store/4"
    print(f"\nbytes per token: float16 {sizes['float16']:.1f}, packed {sizes['packed']:.1f}")
    assert sizes["packed"] < 0.6 * sizes["float16"]


def test_float16_and_packed_stores_of_the_same_examples_train_alike(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    examples = []
    for i in range(4):
        ids, logprobs, tail = consistent_topk(rng, 16)
        examples.append(make_example(f"p{i}", rng, topk_ids=ids.tolist(), topk_logprobs=logprobs.tolist(),
                                     tail_logprob=tail.tolist(), response_ids=ids[:, 0].tolist()))
    losses = []
    for name, enc in (("float16", None), ("packed", StoreEncoding(mass=1.0, logprob_bits=8))):
        LogitStore.create_or_resume(str(tmp_path / name), **RUN, encoding=enc).append(examples)
        rows = LogitStore.open(str(tmp_path / name)).read_table().select(TRAIN_COLUMNS).to_pylist()
        batch = collate(rows, pad_id=0)
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randn(*batch.input_ids.shape, 8, generator=gen)
        weight = torch.randn(151_000, 8, generator=gen) * 0.1
        out = topk_kl_loss(hidden, weight, batch.topk_ids, batch.topk_logprobs, batch.tail_logprob,
                           batch.target_ids, batch.loss_mask, temperature=2.0)
        assert torch.isfinite(out.loss)
        losses.append(out.loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=2e-3)


def test_a_float16_store_resumes_only_in_its_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    old = LogitStore.create_or_resume(str(tmp_path), **RUN, encoding=None)
    old.append([make_example("a", rng)])
    with pytest.raises(StoreError, match=r"ssb-logit-store/2 .*float16.* curate\.store\.packed=false"):
        LogitStore.create_or_resume(str(tmp_path), **RUN)
    again = LogitStore.create_or_resume(str(tmp_path), **RUN, encoding=None)
    again.append([make_example("b", rng)])
    assert again.manifest["format"] == "ssb-logit-store/2"
    for path in again.shard_paths():
        assert "topk_logprobs" in pq.ParquetFile(path).schema_arrow.names
    assert LogitStore.open(str(tmp_path)).read_table().num_rows == 2


def test_a_packed_store_is_not_resumed_with_other_settings(tmp_path: Path) -> None:
    LogitStore.create_or_resume(str(tmp_path), **RUN)
    with pytest.raises(StoreError, match=r"encoding: store has .*'mass': 0\.999.*another run directory"):
        LogitStore.create_or_resume(str(tmp_path), **RUN, encoding=StoreEncoding(mass=0.99))
    with pytest.raises(StoreError, match=r"curate\.store\.packed=true"):
        LogitStore.create_or_resume(str(tmp_path), **RUN, encoding=None)


@pytest.mark.parametrize("encoding, problem", [
    (None, "encoding: expected an object"), ({"mass": 0, "logprob_bits": 6}, "mass 0"),
    ({"mass": 0.99, "logprob_bits": 9}, "logprob_bits 9"), ({"mass": "x", "logprob_bits": 6}, "mass 'x'"),
    ({"mass": 0.99, "logprob_bits": 5, "entry_nats": 0.002}, "entry_nats with temperature"),
    ({"mass": 0.99, "logprob_bits": 5, "entry_nats": -1, "temperature": 2.0}, "entry_nats -1"),
    ({"mass": 0.99, "logprob_bits": 5, "entry_nats": 0.002, "temperature": 0.5}, "temperature 0.5")])
def test_a_packed_manifest_without_a_valid_encoding_is_refused(tmp_path: Path, encoding, problem) -> None:
    LogitStore.create_or_resume(str(tmp_path), **RUN)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["encoding"] = encoding
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=problem):
        LogitStore.open(str(tmp_path), allow_empty=True)


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="mass 1.5"):
        StoreEncoding(mass=1.5)
    with pytest.raises(ValueError, match="logprob_bits 0"):
        StoreEncoding(logprob_bits=0)
    with pytest.raises(ValueError, match="entry_nats 'x'"):
        StoreEncoding(entry_nats="x")
    with pytest.raises(ValueError, match="temperature 0"):
        StoreEncoding(entry_nats=0.002, temperature=0)


def test_curate_store_settings_choose_entries_by_entry_nats_unless_it_is_zero() -> None:
    assert encoding_of(StoreConfig()) == StoreEncoding(mass=0.999, logprob_bits=5, entry_nats=0.0025, temperature=2.0)
    assert encoding_of(StoreConfig(entry_nats=0)) == StoreEncoding(mass=0.999, logprob_bits=5)
    assert encoding_of(StoreConfig(packed=False)) is None


def test_a_store_choosing_entries_by_entry_nats_records_it_and_resumes_only_with_it(tmp_path: Path) -> None:
    enc = StoreEncoding(mass=0.999, logprob_bits=5, entry_nats=0.0025, temperature=2.0)
    store = LogitStore.create_or_resume(str(tmp_path), **RUN, encoding=enc)
    store.append([make_example("p0", np.random.default_rng(10))])
    assert store.manifest["encoding"] == {"mass": 0.999, "logprob_bits": 5, "entry_nats": 0.0025, "temperature": 2.0}
    assert LogitStore.open(str(tmp_path)).encoding == enc
    LogitStore.create_or_resume(str(tmp_path), **RUN, encoding=enc)
    with pytest.raises(StoreError, match="belongs to another run"):
        LogitStore.create_or_resume(str(tmp_path), **RUN, encoding=StoreEncoding(0.999, 5, entry_nats=0.003))
