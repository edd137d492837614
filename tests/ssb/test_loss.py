"""The chunked top-k + tail KL loss agrees with the dense reference, the full-vocabulary KL
when k = vocab, and its own finite differences; edge cases stay finite."""

from __future__ import annotations

import pytest
import torch

from ssb.loss import dense_topk_kl_loss, topk_kl_loss

N, H, V, K = 37, 8, 50, 5


def make_batch(
    n: int = N, h: int = H, v: int = V, k: int = K, *, seed: int = 0,
    dtype: torch.dtype = torch.float64, weight_grad: bool = False,
) -> dict[str, torch.Tensor]:
    """A random student and a teacher whose top-k / tail come from its own random logits."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(v, h, generator=gen, dtype=dtype).requires_grad_(weight_grad)
    teacher = (torch.randn(n, v, generator=gen, dtype=torch.float64) * 2).log_softmax(-1)
    top = teacher.topk(k, -1)  # sorted descending, distinct ids
    tail = torch.log1p(-top.values.exp().sum(-1).clamp(max=1.0))
    mask = torch.rand(n, generator=gen) > 0.25
    return dict(hidden=hidden, weight=weight, topk_ids=top.indices, topk_logprobs=top.values,
                tail_logprob=tail, target_ids=top.indices[:, 0], mask=mask)


def loss_and_grads(fn, batch, **kw):
    out = fn(**batch, **kw)
    leaves = [batch[name] for name in ("hidden", "weight") if batch[name].requires_grad]
    return out, torch.autograd.grad(out.loss, leaves)


@pytest.mark.parametrize("chunk_tokens", [1, 7, 16, 1024])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("ce_weight", [0.0, 0.5])
@pytest.mark.parametrize("weight_grad", [False, True])
def test_chunked_matches_dense(chunk_tokens, temperature, ce_weight, weight_grad):
    batch = make_batch(weight_grad=weight_grad)
    assert not batch["mask"].all() and batch["mask"].any()
    kw = dict(temperature=temperature, kl_weight=0.7, ce_weight=ce_weight)
    chunked, g_chunked = loss_and_grads(topk_kl_loss, batch, chunk_tokens=chunk_tokens, **kw)
    dense, g_dense = loss_and_grads(dense_topk_kl_loss, batch, **kw)
    assert chunked.tokens == dense.tokens == int(batch["mask"].sum())
    torch.testing.assert_close(chunked.loss, dense.loss, rtol=1e-5, atol=1e-5)
    assert chunked.kl == pytest.approx(dense.kl, rel=1e-5)
    assert chunked.ce == pytest.approx(dense.ce, rel=1e-5)
    assert len(g_chunked) == (2 if weight_grad else 1)
    for a, b in zip(g_chunked, g_dense):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_float32_chunked_matches_dense():
    batch = make_batch(dtype=torch.float32, weight_grad=True)
    chunked, g_chunked = loss_and_grads(topk_kl_loss, batch, chunk_tokens=8, ce_weight=0.3)
    dense, g_dense = loss_and_grads(dense_topk_kl_loss, batch, ce_weight=0.3)
    assert g_chunked[0].dtype == torch.float32
    torch.testing.assert_close(chunked.loss, dense.loss, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_chunked, g_dense):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 3.5])
def test_k_equal_vocab_is_full_kl(temperature):
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(N, H, generator=gen, dtype=torch.float64).requires_grad_()
    weight = torch.randn(V, H, generator=gen, dtype=torch.float64)
    z_teacher = torch.randn(N, V, generator=gen, dtype=torch.float64) * 2
    top = z_teacher.log_softmax(-1).topk(V, -1)  # every id: the tail is empty
    tail = torch.full((N,), float("-inf"), dtype=torch.float64)
    out = topk_kl_loss(hidden, weight, top.indices, top.values, tail, top.indices[:, 0],
                       torch.ones(N, dtype=torch.bool), temperature=temperature, chunk_tokens=10)
    (grad,) = torch.autograd.grad(out.loss, hidden)

    # Independent: plain full-vocabulary KL(softmax(zt/T) ‖ softmax(z/T)) · T².
    h = hidden.detach().clone().requires_grad_()
    p = torch.softmax(z_teacher / temperature, -1)
    log_q = torch.log_softmax(h @ weight.T / temperature, -1)
    kl = (p * (p.log() - log_q)).sum(-1).mean()
    expected = kl * temperature**2
    (expected_grad,) = torch.autograd.grad(expected, h)
    torch.testing.assert_close(out.loss, expected, rtol=1e-10, atol=1e-10)
    assert out.kl == pytest.approx(kl.item(), rel=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-10)


def test_zero_teacher_tail_is_finite():
    batch = make_batch()
    batch["tail_logprob"] = torch.full((N,), float("-inf"), dtype=torch.float64)
    chunked, g_chunked = loss_and_grads(topk_kl_loss, batch, chunk_tokens=8, ce_weight=0.2)
    dense, g_dense = loss_and_grads(dense_topk_kl_loss, batch, ce_weight=0.2)
    assert torch.isfinite(chunked.loss) and torch.isfinite(g_chunked[0]).all()
    torch.testing.assert_close(chunked.loss, dense.loss)
    torch.testing.assert_close(g_chunked[0], g_dense[0])


def test_tiny_student_tail_does_not_underflow():
    # The student puts ~e^-300 on the tail: float32 exp(z - max) underflows there, yet the
    # teacher's tail mass still has to pull those ids up (the loss shifts by the tail's max).
    logits = torch.zeros(1, V)
    logits[0, :K] = 300.0
    hidden = logits.clone().requires_grad_()
    weight = torch.eye(V)  # so the logits are the hidden state
    ids = torch.arange(K)[None]
    out = topk_kl_loss(hidden, weight, ids, torch.full((1, K), -2.0), torch.tensor([-0.5]),
                       ids[:, 0], torch.ones(1), temperature=1.0)
    (grad,) = torch.autograd.grad(out.loss, hidden)
    assert torch.isfinite(out.loss) and torch.isfinite(grad).all()
    # g_tail ≈ -p(tail), shared evenly by the V - K equal tail ids.
    p_tail = torch.softmax(torch.tensor([-2.0] * K + [-0.5]), 0)[-1].item()
    expected = torch.full((V - K,), -p_tail / (V - K))
    torch.testing.assert_close(grad[0, K:], expected, rtol=1e-4, atol=0)


def test_k_equal_one():
    batch = make_batch(k=1)
    chunked, g_chunked = loss_and_grads(topk_kl_loss, batch, chunk_tokens=5, temperature=2.0)
    dense, g_dense = loss_and_grads(dense_topk_kl_loss, batch, temperature=2.0)
    torch.testing.assert_close(chunked.loss, dense.loss)
    torch.testing.assert_close(g_chunked[0], g_dense[0])


@pytest.mark.parametrize("weight_grad", [False, True])
def test_all_masked_is_zero_with_zero_grads(weight_grad):
    batch = make_batch(weight_grad=weight_grad)
    batch["mask"] = torch.zeros(N)
    out, grads = loss_and_grads(topk_kl_loss, batch, ce_weight=0.5)
    assert out.loss.item() == 0.0 and out.kl == 0.0 and out.ce == 0.0 and out.tokens == 0
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


def test_masked_tokens_get_zero_grad_and_padding_ids_are_ignored():
    batch = make_batch()
    # Padding rows may carry invalid ids: they are dropped before any gather.
    batch["topk_ids"] = batch["topk_ids"].masked_fill(~batch["mask"][:, None], -1)
    out, (grad,) = loss_and_grads(topk_kl_loss, batch, chunk_tokens=4)
    assert torch.isfinite(out.loss)
    assert torch.equal(grad[~batch["mask"]], torch.zeros_like(grad[~batch["mask"]]))


def test_batched_shapes_and_int32_float16_inputs():
    batch = make_batch(n=24)
    flat, (g_flat,) = loss_and_grads(topk_kl_loss, batch, chunk_tokens=5)
    shaped = dict(batch)
    shaped["hidden"] = batch["hidden"].detach().reshape(4, 6, H).requires_grad_()
    for name in ("topk_ids", "topk_logprobs", "tail_logprob", "target_ids", "mask"):
        shaped[name] = batch[name].reshape(4, 6, *batch[name].shape[1:])
    shaped["topk_ids"] = shaped["topk_ids"].int()
    out, (g,) = loss_and_grads(topk_kl_loss, shaped, chunk_tokens=5)
    torch.testing.assert_close(out.loss, flat.loss)
    torch.testing.assert_close(g.reshape(24, H), g_flat)
    shaped["topk_logprobs"] = shaped["topk_logprobs"].half()  # as the store keeps them
    out16 = topk_kl_loss(**shaped)
    assert abs(out16.loss.item() - flat.loss.item()) < 1e-2


def test_bfloat16_runs():
    batch = make_batch(dtype=torch.bfloat16, weight_grad=True)
    out, (g_hidden, g_weight) = loss_and_grads(topk_kl_loss, batch, chunk_tokens=8, ce_weight=0.1)
    assert g_hidden.dtype == g_weight.dtype == torch.bfloat16
    assert torch.isfinite(out.loss)
    assert torch.isfinite(g_hidden).all() and torch.isfinite(g_weight).all()
    ref = dict(batch)  # the same teacher, student upcast
    ref["hidden"] = batch["hidden"].detach().double().requires_grad_()
    ref["weight"] = batch["weight"].detach().double().requires_grad_()
    expected, (e_hidden, _) = loss_and_grads(dense_topk_kl_loss, ref, ce_weight=0.1)
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=2e-2)
    torch.testing.assert_close(g_hidden.double(), e_hidden, rtol=0.1, atol=2e-3)


def test_gradcheck():
    batch = make_batch(n=6, h=4, v=11, k=3, weight_grad=True)
    bias = torch.randn(11, dtype=torch.float64, requires_grad=True)
    rest = {k: v for k, v in batch.items() if k not in ("hidden", "weight")}

    def loss(hidden, weight, bias):
        return topk_kl_loss(hidden, weight, bias=bias, temperature=2.0, ce_weight=0.3,
                            chunk_tokens=4, **rest).loss

    assert torch.autograd.gradcheck(loss, (batch["hidden"], batch["weight"], bias))


def padded(batch: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch with position t keeping its first keep[t] entries: the rest joins the tail and
    their slots stay, at log-prob -inf, each with an id that is in the tail (as a packed store
    gives it back; it picks other unused ids, any will do)."""
    k = batch["topk_ids"].shape[1]
    kept = torch.arange(k)[None, :] < keep[:, None]
    logprobs = batch["topk_logprobs"]
    tail = torch.logaddexp(batch["tail_logprob"], logprobs.masked_fill(kept, float("-inf")).logsumexp(-1))
    return {**batch, "topk_logprobs": logprobs.masked_fill(~kept, float("-inf")), "tail_logprob": tail}


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_entries_at_minus_infinity_are_no_buckets(temperature):
    """k' = 2 entries padded to k = 5 is the k = 2 loss exactly, loss and gradients."""
    batch = make_batch(weight_grad=True)
    pad = padded(batch, torch.full((N,), 2))
    two = {**pad, "topk_ids": pad["topk_ids"][:, :2], "topk_logprobs": pad["topk_logprobs"][:, :2]}
    # Any id outside the two kept does: here the smallest ones (what the store's decoder picks).
    taken = torch.zeros(N, V, dtype=torch.bool).scatter_(1, two["topk_ids"], True)
    smallest = torch.sort(taken.long(), dim=1, stable=True).indices[:, :K - 2]
    other = {**pad, "topk_ids": torch.cat([two["topk_ids"], smallest], 1)}
    for fn, inputs in [(topk_kl_loss, pad), (dense_topk_kl_loss, pad), (topk_kl_loss, other)]:
        out, grads = loss_and_grads(fn, inputs, temperature=temperature, ce_weight=0.5)
        want, want_grads = loss_and_grads(topk_kl_loss, two, temperature=temperature, ce_weight=0.5)
        torch.testing.assert_close(out.loss, want.loss, rtol=1e-10, atol=1e-12)
        for a, b in zip(grads, want_grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_mixed_padding_matches_dense_and_gradcheck():
    batch = make_batch(n=9, h=4, v=11, k=4, weight_grad=True)
    pad = padded(batch, torch.tensor([1, 2, 3, 4, 1, 4, 2, 3, 1]))
    chunked, g_chunked = loss_and_grads(topk_kl_loss, pad, chunk_tokens=4, temperature=2.0, ce_weight=0.3)
    dense, g_dense = loss_and_grads(dense_topk_kl_loss, pad, temperature=2.0, ce_weight=0.3)
    assert torch.isfinite(chunked.loss) and chunked.kl > 0
    torch.testing.assert_close(chunked.loss, dense.loss, rtol=1e-8, atol=1e-10)
    for a, b in zip(g_chunked, g_dense):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    rest = {k: v for k, v in pad.items() if k not in ("hidden", "weight")}
    assert torch.autograd.gradcheck(
        lambda hidden, weight: topk_kl_loss(hidden, weight, temperature=2.0, ce_weight=0.3, chunk_tokens=4,
                                            **rest).loss, (pad["hidden"], pad["weight"]))
