"""encode_topk: vLLM-style per-token log-prob mappings -> fixed [T, k] arrays + tail mass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from ssb.logits import TAIL_FLOOR, TopK, encode_topk, tail_logprob


@dataclass
class FakeLogprob:
    """The shape of vllm.logprobs.Logprob, without importing vLLM into ssb's tests."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class FakeFlatLogprobs:
    """The attributes of vllm.logprobs.FlatLogprobs that encode_topk reads."""

    def __init__(self, positions: list[dict[int, float]]):
        self.start_indices: list[int] = []
        self.end_indices: list[int] = []
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        for position in positions:
            self.start_indices.append(len(self.token_ids))
            self.token_ids.extend(position)
            self.logprobs.extend(position.values())
            self.end_indices.append(len(self.token_ids))


def softmax_positions(rng: np.random.Generator, T: int, vocab: int) -> np.ndarray:
    logits = rng.normal(0.0, 3.0, size=(T, vocab))
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # [T, vocab] log-probs


def engine_output(full: np.ndarray, k: int, sampled: list[int]) -> list[dict[int, FakeLogprob]]:
    """What vLLM returns: the top-k of each row (in no promised order) + the sampled token."""
    out = []
    for row, token in zip(full, sampled):
        top = np.argsort(-row)[:k]
        ids = [int(i) for i in top[::-1]] + ([token] if token not in top else [])  # scrambled order
        out.append({i: FakeLogprob(float(row[i]), rank=None) for i in ids})
    return out


def test_sorted_topk_of_each_position_and_extra_sampled_token_dropped() -> None:
    rng = np.random.default_rng(0)
    full = softmax_positions(rng, T=6, vocab=50)
    sampled = [int(np.argsort(row)[0]) for row in full]  # the least likely: outside any top-k
    topk = encode_topk(engine_output(full, 5, sampled), k=5)

    assert isinstance(topk, TopK) and (topk.num_tokens, topk.k) == (6, 5)
    assert topk.ids.dtype == np.int32 and topk.logprobs.dtype == np.float32
    assert topk.tail_logprob.dtype == np.float32 and topk.tail_logprob.shape == (6,)
    np.testing.assert_array_equal(topk.ids, np.argsort(-full, axis=1)[:, :5])
    assert (np.diff(topk.logprobs, axis=1) <= 0).all()
    assert all(token not in row for token, row in zip(sampled, topk.ids.tolist()))
    np.testing.assert_allclose(topk.logprobs, np.sort(full, axis=1)[:, ::-1][:, :5], rtol=1e-6)


def test_sampled_token_inside_topk_is_kept_once() -> None:
    full = softmax_positions(np.random.default_rng(1), T=3, vocab=20)
    best = [int(np.argmax(row)) for row in full]
    topk = encode_topk(engine_output(full, 4, best), k=4)
    np.testing.assert_array_equal(topk.ids[:, 0], best)


def test_tail_is_the_mass_outside_the_topk() -> None:
    full = softmax_positions(np.random.default_rng(2), T=8, vocab=100)
    topk = encode_topk(engine_output(full, 10, [0] * 8), k=10)
    rest = np.sort(full, axis=1)[:, :-10]
    np.testing.assert_allclose(topk.tail_logprob, np.log(np.exp(rest).sum(axis=1)), rtol=1e-5)
    total = np.exp(topk.logprobs.astype(np.float64)).sum(axis=1) + np.exp(topk.tail_logprob)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert (topk.logprobs <= 0).all()


def test_tail_is_accurate_when_topk_holds_nearly_all_mass() -> None:
    # 1 - sum(p) in float32 would give 0 (or noise) here; expm1 keeps the 1e-9.
    lp = encode_topk([{7: math.log1p(-1e-9)}], k=1)
    assert lp.tail_logprob[0] == pytest.approx(math.log(1e-9), rel=1e-4)


def test_tail_is_floored_when_the_sum_rounds_to_one_or_more() -> None:
    # Three tokens holding everything, and rounding noise pushing the sum over 1.
    p = [0.5, 0.3, 0.2 + 1e-7]
    topk = encode_topk([{i: math.log(x) for i, x in enumerate(p)}], k=3)
    assert topk.tail_logprob[0] == pytest.approx(TAIL_FLOOR)
    assert np.isfinite(tail_logprob(np.array([[0.0, 0.0]]))).all()


def test_positive_logprobs_from_engine_rounding_are_clamped_to_zero() -> None:
    topk = encode_topk([{3: 1e-7, 4: -20.0}], k=2)
    assert topk.logprobs[0, 0] == 0.0 and (topk.logprobs <= 0).all()


def test_plain_float_mappings_and_flat_container_give_the_same_arrays() -> None:
    full = softmax_positions(np.random.default_rng(3), T=5, vocab=30)
    objects = engine_output(full, 6, [1] * 5)
    floats = [{i: lp.logprob for i, lp in position.items()} for position in objects]
    a, b, c = encode_topk(objects, 6), encode_topk(floats, 6), encode_topk(FakeFlatLogprobs(floats), 6)
    for other in (b, c):
        np.testing.assert_array_equal(a.ids, other.ids)
        np.testing.assert_array_equal(a.logprobs, other.logprobs)
        np.testing.assert_array_equal(a.tail_logprob, other.tail_logprob)


def test_flat_logprobs_list_a_top_ranked_sampled_token_twice_and_it_is_kept_once() -> None:
    # vLLM's FlatLogprobs: each position is the sampled token, then the top-k in rank order,
    # so a sampled token that ranks first appears twice; the k kept ids must be k distinct ones.
    full = softmax_positions(np.random.default_rng(4), T=4, vocab=30)
    k = 6
    flat = FakeFlatLogprobs([])
    for row in full:
        top = [int(i) for i in np.argsort(-row)[:k]]
        ids = [top[0], *top]
        flat.start_indices.append(len(flat.token_ids))
        flat.token_ids.extend(ids)
        flat.logprobs.extend(float(row[i]) for i in ids)
        flat.end_indices.append(len(flat.token_ids))
    topk = encode_topk(flat, k)
    for t, row in enumerate(full):
        assert len(set(topk.ids[t].tolist())) == k
        np.testing.assert_array_equal(topk.ids[t], np.argsort(-row)[:k])


def test_ties_are_broken_by_smaller_id() -> None:
    topk = encode_topk([{9: -1.0, 2: -1.0, 5: -0.5}], k=3)
    assert topk.ids.tolist() == [[5, 2, 9]]


def test_too_few_entries_for_k_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"position 1 has 2 log-probs but k=3"):
        encode_topk([{1: -0.1, 2: -3.0, 3: -4.0}, {1: -0.1, 2: -3.0}], k=3)


def test_missing_position_is_an_error() -> None:
    with pytest.raises(ValueError, match="position 0 has no log-probs"):
        encode_topk([None, {1: -0.1}], k=1)  # type: ignore[list-item]


def test_empty_response_gives_empty_arrays() -> None:
    topk = encode_topk([], k=4)
    assert topk.ids.shape == (0, 4) and topk.tail_logprob.shape == (0,)
