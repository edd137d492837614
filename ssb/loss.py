"""Distillation loss from the teacher's stored top-k log-probs, computed in token chunks.

The teacher as k + 1 buckets
----------------------------
Per response token the store holds the teacher's k most likely ids with their
temperature-1 log-probs l_1..l_k, and l_tail = log of its mass on every other id. So the
teacher is a distribution over k + 1 buckets: the k ids and ONE tail bucket. The student is
reduced to the same buckets from its full softmax s = softmax(z) at T = 1:
    log q(b)    = log s_b                                  for each of the k ids,
    log q(tail) = logsumexp(z over the other ids) - logsumexp(z over all ids).

Temperature acts on the buckets, alike on both sides (the tail stays one bucket):
    p_T = softmax_b(l_b / T),        q_T = softmax_b(log q(b) / T),
    loss = kl_weight · T² · mean_t KL(p_T ‖ q_T)  +  ce_weight · mean_t CE(target | s),
means over unmasked tokens (0, with zero gradients, when every token is masked). T² keeps
the gradient's size independent of T (Hinton et al.). With k = vocab the tail is empty and
this is exactly the full-vocabulary KL(softmax(z_teacher / T) ‖ softmax(z / T)) · T².

An entry at log-prob -inf is no bucket: its id stays in the tail, on both sides. A packed
store (ssb/store_codec.py) keeps fewer than k entries where the teacher is sure and fills the
rest of the k slots so; the loss is then the one over the buckets actually stored.

Gradient (what the chunks compute by hand)
------------------------------------------
With u_b = log q(b), d(T²·KL)/du_b = g_b = T · (q_T(b) - p_T(b)), and
du_b/dz_j = [j ∈ b] · s_j / q(b) - s_j. Since Σ_b g_b = 0 the second part cancels:
    dL/dz_j = g_b(j) · s_j / q(b(j)) = g_j                          for a top-k id j,
                                       g_tail · exp(z_j - lse_tail)   for a tail id j.
The CE term adds s - onehot(target).

Memory
------
Like Liger-Kernel's fused linear cross-entropy, the forward pass takes chunk_tokens tokens
at a time: logits = hidden @ weightᵀ (float32), the loss, the gradient wrt the logits in
the same buffer, then grad_hidden = grad_logits @ weight (and grad_weight when the LM head
is trained). The full [tokens, vocab] logits never exist; backward only scales the stored
gradients by grad_output. Masked tokens are dropped before any of this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossOutput:
    loss: Tensor  # scalar, differentiable
    kl: float  # mean KL(p_T ‖ q_T) per token, not scaled by T²
    ce: float  # mean cross-entropy of the target id at T = 1
    tokens: int  # unmasked tokens the means are over


def _compute_dtype(t: Tensor) -> torch.dtype:
    # float32 at least (softmax over 150k logits in bf16 is useless); float64 stays float64
    # so gradcheck can be tight.
    return torch.promote_types(t.dtype, torch.float32)


def bucket_kl(u: Tensor, l: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-token KL(p_T ‖ q_T) over the k + 1 buckets and d(T²·KL)/du.

    u: student bucket log-probs [n, k+1]; l: teacher bucket log-probs at T = 1 [n, k+1].
    """
    logq_t = (u / temperature).log_softmax(-1)
    logp_t = (l / temperature).log_softmax(-1)
    p_t = logp_t.exp()
    # A bucket the teacher gives no mass (tail_logprob = -inf) contributes 0, not 0·inf.
    kl = torch.where(p_t > 0, p_t * (logp_t - logq_t), 0.0).sum(-1)
    return kl, temperature * (logq_t.exp() - p_t)


def _chunk(
    h: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, teacher: Tensor,
    target: Tensor, temperature: float, kl_scale: float, ce_scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token KL and CE of one chunk, and d(loss)/d(logits) [n, V] in one logits buffer."""
    z = F.linear(h, weight, bias).to(_compute_dtype(h))
    absent = torch.isneginf(teacher[:, :-1])  # no bucket: the id stays in the tail
    z_ids = z.gather(1, ids)
    z_k = z_ids.masked_fill(absent, float("-inf"))
    z_y = z.gather(1, target[:, None])
    # Tail logsumexp, in place: hide the top-k ids and shift by the tail's OWN max, so a
    # tail of mass e^-200 does not underflow to 0 — its ids still get g_tail between them.
    z.scatter_(1, ids, z_ids.masked_fill(~absent, float("-inf")))
    m_tail = z.amax(1, keepdim=True)
    m_tail = torch.where(torch.isfinite(m_tail), m_tail, 0.0)  # empty tail when k = vocab
    e = z.sub_(m_tail).exp_()  # exp(z_j - m_tail) on tail ids, 0 on top-k ids
    tail_sum = e.sum(1, keepdim=True)  # ≥ 1 (the max itself) unless the tail is empty
    lse_tail = m_tail + tail_sum.log()  # -inf for an empty tail
    lse = torch.logaddexp(lse_tail, z_k.logsumexp(1, keepdim=True))
    u = torch.cat([z_k - lse, lse_tail - lse], 1)
    kl, g = bucket_kl(u, teacher, temperature)
    g = g * kl_scale
    s_k = (z_k - lse).exp()
    # Tail ids: g_tail·exp(z_j - lse_tail) + ce·exp(z_j - lse) = e_j · (row constant).
    coef = g[:, -1:] / tail_sum.clamp_min(1.0) + ce_scale * (m_tail - lse).exp()
    grad = e.mul_(coef)  # 0 on the top-k ids (e is), so the top-k values can be added in
    # Added, not written: an absent entry's id keeps its tail gradient (0 is added to it).
    grad.scatter_add_(1, ids, (g[:, :-1] + ce_scale * s_k).masked_fill(absent, 0.0))
    if ce_scale:
        grad.scatter_add_(1, target[:, None], torch.full_like(z_y, -ce_scale))
    return grad, kl, (lse - z_y).squeeze(1)


class _ChunkedTopkKL(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor,
        teacher: Tensor, target: Tensor, temperature: float, kl_weight: float,
        ce_weight: float, chunk_tokens: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        n = hidden.shape[0]
        dtype = _compute_dtype(hidden)
        kl_scale = kl_weight / max(n, 1)  # the mean folded in (g already carries T²·1/T)
        ce_scale = ce_weight / max(n, 1)
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if want_h else None
        # Weight / bias grads accumulate over chunks in float32 even for a bf16 head.
        zeros = lambda *shape: torch.zeros(shape, dtype=dtype, device=weight.device)  # noqa: E731
        grad_weight = zeros(*weight.shape) if want_w else None
        grad_bias = zeros(weight.shape[0]) if want_b else None
        kl_sum = torch.zeros((), dtype=dtype, device=hidden.device)
        ce_sum = torch.zeros((), dtype=dtype, device=hidden.device)
        for start in range(0, n, chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            h = hidden[rows]
            grad, kl, ce = _chunk(h, weight, bias, ids[rows], teacher[rows], target[rows],
                                  temperature, kl_scale, ce_scale)
            grad = grad.to(hidden.dtype)  # matmuls in the input dtype (bf16 on GPU)
            if grad_hidden is not None:
                grad_hidden[rows] = grad @ weight
            if grad_weight is not None:
                grad_weight.add_(grad.T @ h)
            if grad_bias is not None:
                grad_bias.add_(grad.sum(0))
            kl_sum += kl.sum()
            ce_sum += ce.sum()
            del grad  # free this chunk's [chunk, V] buffer before the next one is made
        kl_mean, ce_mean = kl_sum / max(n, 1), ce_sum / max(n, 1)
        ctx.mark_non_differentiable(kl_mean, ce_mean)
        ctx.save_for_backward(
            grad_hidden,
            grad_weight.to(weight.dtype) if grad_weight is not None else None,
            grad_bias.to(bias.dtype) if grad_bias is not None else None,  # type: ignore[union-attr]
        )
        loss = kl_weight * temperature**2 * kl_mean + ce_weight * ce_mean
        return loss, kl_mean, ce_mean

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor, *_: Tensor):  # type: ignore[override]
        gh, gw, gb = ctx.saved_tensors
        scale = lambda g: None if g is None else g * grad_loss.to(g.dtype)  # noqa: E731
        return scale(gh), scale(gw), scale(gb), None, None, None, None, None, None, None


def _flatten(
    hidden: Tensor, topk_ids: Tensor, topk_logprobs: Tensor, tail_logprob: Tensor,
    target_ids: Tensor, mask: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """[..., H] inputs → unmasked rows: hidden, ids, teacher buckets [n, k+1], target, keep."""
    k = topk_ids.shape[-1]
    keep = mask.reshape(-1) != 0  # bool or 0/1 float mask
    hidden = hidden.reshape(-1, hidden.shape[-1])[keep]
    ids = topk_ids.reshape(-1, k)[keep].long()
    teacher = torch.cat([topk_logprobs.reshape(-1, k), tail_logprob.reshape(-1, 1)], 1)
    teacher = teacher[keep].to(_compute_dtype(hidden))
    return hidden, ids, teacher, target_ids.reshape(-1)[keep].long(), keep


def topk_kl_loss(
    hidden: Tensor, weight: Tensor, topk_ids: Tensor, topk_logprobs: Tensor,
    tail_logprob: Tensor, target_ids: Tensor, mask: Tensor, *, temperature: float = 2.0,
    kl_weight: float = 1.0, ce_weight: float = 0.0, chunk_tokens: int = 1024,
    bias: Tensor | None = None,
) -> LossOutput:
    """The top-k + tail KL (and optional CE) loss, chunked so [tokens, vocab] never exists.

    hidden [..., H] final hidden states; weight [V, H] (and bias [V]) the LM head;
    topk_ids / topk_logprobs [..., k]; tail_logprob, target_ids, mask [...].
    """
    h, ids, teacher, target, _ = _flatten(hidden, topk_ids, topk_logprobs, tail_logprob,
                                          target_ids, mask)
    loss, kl, ce = _ChunkedTopkKL.apply(h, weight, bias, ids, teacher, target, temperature,
                                        kl_weight, ce_weight, chunk_tokens)
    return LossOutput(loss, float(kl), float(ce), h.shape[0])


def dense_topk_kl_loss(
    hidden: Tensor, weight: Tensor, topk_ids: Tensor, topk_logprobs: Tensor,
    tail_logprob: Tensor, target_ids: Tensor, mask: Tensor, *, temperature: float = 2.0,
    kl_weight: float = 1.0, ce_weight: float = 0.0, bias: Tensor | None = None,
) -> LossOutput:
    """Reference: the same loss with the full logits materialised and plain autograd."""
    h, ids, teacher, target, keep = _flatten(hidden, topk_ids, topk_logprobs, tail_logprob,
                                             target_ids, mask)
    logs = F.linear(h, weight, bias).to(_compute_dtype(h)).log_softmax(-1)
    absent = torch.isneginf(teacher[:, :-1])
    at_ids = logs.gather(1, ids)
    log_tail = logs.scatter(1, ids, at_ids.masked_fill(~absent, float("-inf"))).logsumexp(-1, keepdim=True)
    student = at_ids.masked_fill(absent, float("-inf"))
    kl, _ = bucket_kl(torch.cat([student, log_tail], 1), teacher, temperature)
    ce = -logs.gather(1, target[:, None]).squeeze(1)
    n = max(h.shape[0], 1)
    kl_mean, ce_mean = kl.sum() / n, ce.sum() / n
    loss = kl_weight * temperature**2 * kl_mean + ce_weight * ce_mean
    return LossOutput(loss, kl_mean.item(), ce_mean.item(), int(keep.sum()))
