"""From stored rows to padded training batches: alignment, masking and length bucketing.

A row is one curated example as the store holds it (`student_prompt_ids`, `response_ids`,
`num_tokens` and the flat top-k columns; see ssb.store). The student sees
    input = student_prompt_ids + response_ids          (P + T tokens, what inference sees)
and is trained only where it predicts the response: the hidden state at position
P + t - 1 predicts response token t, so that position carries target response_ids[t] and
teacher row t. Prompt positions, the last position (it predicts nothing) and padding are
masked out.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ssb.store import example_arrays

# Only these columns are read from the store for training.
TRAIN_COLUMNS = ["student_prompt_ids", "response_ids", "num_tokens", "topk_ids", "topk_logprobs",
                 "tail_logprob"]

Row = Mapping[str, Any]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] long, right-padded
    attention_mask: torch.Tensor  # [B, L] long
    target_ids: torch.Tensor  # [B, L] long: the token position j predicts (0 where masked)
    loss_mask: torch.Tensor  # [B, L] bool: True where j predicts a response token
    topk_ids: torch.Tensor  # [B, L, k] long
    topk_logprobs: torch.Tensor  # [B, L, k] float32
    tail_logprob: torch.Tensor  # [B, L] float32

    @property
    def tokens(self) -> int:
        """Response tokens the loss is over."""
        return int(self.loss_mask.sum())

    @property
    def input_tokens(self) -> int:
        """Non-padding tokens the model reads."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{name: t.to(device, non_blocking=True) for name, t in vars(self).items()})


def row_length(row: Row) -> int:
    return len(row["student_prompt_ids"]) + len(row["response_ids"])


def collate(rows: Sequence[Row], pad_id: int) -> Batch:
    """Pads rows to the longest one and aligns the teacher arrays with the predicting positions."""
    if not rows:
        raise ValueError("collate needs at least one row")
    length = max(row_length(r) for r in rows)
    k = example_arrays(rows[0])[0].shape[1]
    b = len(rows)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    target_ids = torch.zeros((b, length), dtype=torch.long)
    loss_mask = torch.zeros((b, length), dtype=torch.bool)
    topk_ids = torch.zeros((b, length, k), dtype=torch.long)
    topk_logprobs = torch.zeros((b, length, k), dtype=torch.float32)
    # Masked positions never reach the loss; 0 keeps them finite all the same.
    tail_logprob = torch.zeros((b, length), dtype=torch.float32)
    for i, row in enumerate(rows):
        prompt = np.asarray(row["student_prompt_ids"], dtype=np.int64)
        response = np.asarray(row["response_ids"], dtype=np.int64)
        ids, logprobs, tail = example_arrays(row)  # may be read-only views: torch.tensor copies
        if ids.shape != (len(response), k):
            raise ValueError(f"row {row.get('problem_id')!r}: top-k {ids.shape}, expected {(len(response), k)}")
        p, t = len(prompt), len(response)
        if p == 0:
            raise ValueError(f"row {row.get('problem_id')!r}: empty student prompt")
        input_ids[i, : p + t] = torch.tensor(np.concatenate([prompt, response]))
        attention_mask[i, : p + t] = 1
        span = slice(p - 1, p - 1 + t)  # position p + t' - 1 predicts response token t'
        target_ids[i, span] = torch.tensor(response)
        loss_mask[i, span] = True
        topk_ids[i, span] = torch.tensor(ids)
        topk_logprobs[i, span] = torch.tensor(logprobs)
        tail_logprob[i, span] = torch.tensor(tail)
    return Batch(input_ids, attention_mask, target_ids, loss_mask, topk_ids, topk_logprobs, tail_logprob)


def bucketed(rows: Iterable[Row], batch_size: int, *, window: int = 16, seed: int = 0) -> Iterator[list[Row]]:
    """Groups rows into batches of similar length, so padding is not most of the compute.

    Rows are read `window` batches at a time; inside a window they are sorted by length,
    cut into batches, and the batches come out in a seeded random order (so a step's length
    does not drift with the position in the epoch). The last batch may be smaller.
    `window=1` is plain batching in input order.
    """
    rng = random.Random(seed)
    buffer: list[Row] = []

    def flush() -> Iterator[list[Row]]:
        ordered = sorted(buffer, key=row_length) if window > 1 else buffer
        batches = [ordered[i: i + batch_size] for i in range(0, len(ordered), batch_size)]
        if window > 1:
            rng.shuffle(batches)
        yield from batches

    for row in rows:
        buffer.append(row)
        if len(buffer) == batch_size * window:
            yield from flush()
            buffer = []
    if buffer:
        yield from flush()


def padding_share(batches: Iterable[Sequence[Row]]) -> float:
    """Share of padded positions over all batch positions (0 = no padding)."""
    padded = real = 0
    for batch in batches:
        lengths = [row_length(r) for r in batch]
        padded += max(lengths) * len(lengths)
        real += sum(lengths)
    return 1 - real / padded if padded else 0.0


def rows_of(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A columnar batch (dict of equal-length arrays, e.g. Ray Data's numpy format) as rows."""
    names = list(batch)
    n = len(batch[names[0]]) if names else 0
    return [{name: batch[name][i] for name in names} for i in range(n)]
