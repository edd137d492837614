"""Turn an engine's per-token top-k log-probs into fixed-shape arrays.

vLLM returns, for each generated (or scored) token, a mapping token_id -> Logprob holding
the top-k candidates plus the sampled token when it ranks outside the top-k (so k or k+1
entries). The store and the loss want fixed shapes instead: [T, k] ids and log-probs sorted
best first, and one "tail" value per position, the log of the probability mass outside
those k ids (the tail is the KL's extra bucket).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The tail of a position whose top-k already holds (numerically) all the mass: log(0) would
# be -inf and make the KL's tail term 0 * -inf = nan, so clamp at a tiny but finite mass.
TAIL_FLOOR = math.log(1e-12)


@dataclass
class TopK:
    ids: np.ndarray  # [T, k] int32, each row sorted by descending log-prob
    logprobs: np.ndarray  # [T, k] float32, temperature-1 log-probs, all <= 0
    tail_logprob: np.ndarray  # [T] float32, log(1 - sum(exp(logprobs[t]))), >= TAIL_FLOOR

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])


def _logprob_value(value: Any) -> float:
    # vLLM's Logprob object, or a plain float from a Mapping[int, float].
    return float(getattr(value, "logprob", value))


def _positions(per_token: Any) -> Iterable[tuple[list[int], list[float]]]:
    """Yield (ids, logprobs) for each position, whatever container the engine returned."""
    flat = all(hasattr(per_token, a) for a in ("start_indices", "end_indices", "token_ids", "logprobs"))
    if flat:
        # vLLM's FlatLogprobs keeps every position in a few flat lists; slicing them directly
        # avoids building one dict of Logprob objects per position just to read it back.
        for start, end in zip(per_token.start_indices, per_token.end_indices):
            # The sampled token comes first and again among the top-k when it ranks there
            # (a dict of Logprob objects would hold it once): keep each id once.
            position = dict(zip(per_token.token_ids[start:end], per_token.logprobs[start:end]))
            yield [int(i) for i in position], [float(v) for v in position.values()]
        return
    for t, position in enumerate(per_token):
        if position is None or not hasattr(position, "items"):
            # prompt_logprobs() puts None at position 0 (nothing precedes the first token).
            raise ValueError(
                f"position {t} has no log-probs ({type(position).__name__}); request logprobs "
                "from the engine and drop the leading None of prompt_logprobs"
            )
        items = list(position.items())
        yield [int(i) for i, _ in items], [_logprob_value(v) for _, v in items]


def tail_logprob(logprobs: np.ndarray) -> np.ndarray:
    """log(1 - sum(exp(logprobs), axis=-1)), clamped at TAIL_FLOOR, computed in float64.

    1 - sum(p) loses every digit when the top-k holds nearly all the mass, so work with
    s = logsumexp(logprobs) and use log(-expm1(s)): exact where s is close to 0.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.shape[-1] == 0:
        return np.zeros(lp.shape[:-1], dtype=np.float32)  # no candidates: the tail is all of it
    peak = lp.max(axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)  # all -inf rows: logsumexp = -inf, tail = 0
    s = (peak + np.log(np.exp(lp - peak).sum(axis=-1, keepdims=True)))[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        # s >= 0 (the sum rounded to >= 1) gives -expm1(s) <= 0 and a nan/-inf log: floor it.
        tail = np.log(-np.expm1(np.minimum(s, 0.0)))
    return np.maximum(np.nan_to_num(tail, nan=TAIL_FLOOR, neginf=TAIL_FLOOR), TAIL_FLOOR).astype(
        np.float32
    )


def encode_topk(per_token: Sequence[Mapping[int, Any]], k: int) -> TopK:
    """Keep the k most likely ids of every position, sorted best first, plus the tail mass.

    `per_token[t]` maps token id -> log-prob (a float, or an object with `.logprob` such as
    vLLM's Logprob); vLLM's FlatLogprobs is read directly. An extra sampled token ranked
    outside the top-k is dropped. Log-probs must be temperature-1 (vLLM's default raw mode).
    Ties are broken by the smaller id so the encoding is deterministic.
    Raises ValueError when a position has fewer than k entries: k must not exceed what the
    engine was asked to return (SamplingParams(logprobs=k), engine max_logprobs).
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    ids_rows: list[np.ndarray] = []
    lp_rows: list[np.ndarray] = []
    for t, (ids, lps) in enumerate(_positions(per_token)):
        if len(ids) < k:
            raise ValueError(
                f"position {t} has {len(ids)} log-probs but k={k}: ask the engine for at least "
                f"k log-probs per token (SamplingParams(logprobs={k}) and max_logprobs >= {k})"
            )
        id_arr = np.asarray(ids, dtype=np.int64)
        lp_arr = np.asarray(lps, dtype=np.float64)
        if np.isnan(lp_arr).any():
            raise ValueError(f"position {t} has a nan log-prob")
        # lexsort sorts by its last key first: descending log-prob, then ascending id.
        order = np.lexsort((id_arr, -lp_arr))[:k]
        ids_rows.append(id_arr[order])
        lp_rows.append(lp_arr[order])
    if not ids_rows:
        return TopK(
            ids=np.zeros((0, k), np.int32),
            logprobs=np.zeros((0, k), np.float32),
            tail_logprob=np.zeros((0,), np.float32),
        )
    ids_2d = np.stack(ids_rows)
    if ids_2d.min() < 0 or ids_2d.max() > np.iinfo(np.int32).max:
        raise ValueError("token ids must fit in int32 and be >= 0")
    # Engines compute log-softmax in low precision and can report a top-1 of +1e-7: a
    # probability cannot exceed 1, so clamp to 0 rather than store a positive log-prob.
    lp_2d = np.minimum(np.stack(lp_rows), 0.0)
    return TopK(
        ids=ids_2d.astype(np.int32),
        logprobs=lp_2d.astype(np.float32),
        tail_logprob=tail_logprob(lp_2d),
    )
