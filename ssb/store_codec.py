"""The teacher's top-k as a packed (format-4) shard holds it: fewer entries, 8 bits or fewer each.

Per response position the store keeps some of the k entries (at least one, at most k); the
rest joins the tail bucket, whose log-prob becomes logsumexp(tail, dropped entries), so the
loss stays exact for what is stored. Which ones (`kept_counts`): with `entry_nats`, the count
whose merge costs least KL at the training temperature plus entry_nats per kept entry (merging
is exact at T=1, so this bounds the KL from T=1 up to that temperature); else the fewest whose
probabilities add up to `mass`. Log-probs are
quantized to `logprob_bits`-bit codes on a per-row step (code c means log-prob -c·step, the
step set by the row's lowest stored value). Not every bucket is coded: the top-1, usually
near probability 1, would lose the tail's digits (1 - p to a few percent), so the top-1 is
derived on reading as 1 - (the others + the tail), and the tail is coded in its place.
Codes of a position's later entries are stored as differences to the one before (sorted,
so small and non-negative), which zstd packs tighter.

Per row, five columns: `packed_counts` (entries kept per position, uint8, or uint16 past
255), `id_dictionary` (in the first row only: the shard's kept ids, most frequent first),
`packed_ids` (each kept id as its rank in that dictionary), both uint16 little-endian when the
shard's largest id fits, else uint32 (the file's `ssb.id_bytes`), byte-stream split (all low
bytes, then the high ones: most ranks are under 256), `packed_codes` (uint8 per kept entry:
the tail's code, then the differences) and `logprob_step` (float32). Format 3 had no
dictionary and the ids as they are in `packed_ids`; it is still decoded.

Decoding gives back the format-2 columns (`topk_ids`, `topk_logprobs`, `tail_logprob`) at
the store's k: a position with fewer entries fills its other slots with log-prob -inf, which
ssb/loss.py reads as no bucket (the slot's id stays in the tail), each with the smallest id
not among the position's entries, so a row's ids stay distinct (`padding_mask`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ssb.logits import TAIL_FLOOR

PACKED_COLUMNS = ("packed_counts", "id_dictionary", "packed_ids", "packed_codes", "logprob_step")
DECODED_COLUMNS = ("topk_ids", "topk_logprobs", "tail_logprob")
PACKED_FIELDS = [pa.field("packed_counts", pa.binary(), nullable=False),
                 pa.field("id_dictionary", pa.binary(), nullable=False), pa.field("packed_ids", pa.binary(), nullable=False),
                 pa.field("packed_codes", pa.binary(), nullable=False),
                 pa.field("logprob_step", pa.float32(), nullable=False)]
ID_BYTES_KEY = b"ssb.id_bytes"


def _list_of(dtype: pa.DataType) -> pa.DataType:
    return pa.list_(pa.field("element", dtype, nullable=False))


DECODED_FIELDS = {name: pa.field(name, _list_of(dtype), nullable=False) for name, dtype in [
    ("topk_ids", pa.int32()), ("topk_logprobs", pa.float32()), ("tail_logprob", pa.float32())]}


@dataclass(frozen=True)
class StoreEncoding:
    """How a packed store packs each position (the manifest's `encoding`)."""

    mass: float = 0.999
    logprob_bits: int = 6
    # None: entries chosen by `mass`. Else an entry is kept only where it lowers the KL at
    # `temperature` by this many nats or more (see `kept_counts`).
    entry_nats: float | None = None
    temperature: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.mass, bool) or not isinstance(self.mass, (int, float)) or not 0 < self.mass <= 1:
            raise ValueError(f"store mass {self.mass!r}: a probability mass in (0, 1]")
        if not isinstance(self.logprob_bits, int) or not 1 <= self.logprob_bits <= 8:
            raise ValueError(f"store logprob_bits {self.logprob_bits!r}: an integer from 1 to 8")
        if self.entry_nats is not None and (isinstance(self.entry_nats, bool) or not isinstance(
                self.entry_nats, (int, float)) or not 0 <= self.entry_nats < math.inf):
            raise ValueError(f"store entry_nats {self.entry_nats!r}: a number of nats >= 0, or None")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or not (
                1 <= self.temperature < math.inf):
            raise ValueError(f"store temperature {self.temperature!r}: a temperature >= 1")

    def to_json(self) -> dict[str, Any]:
        tempered = {} if self.entry_nats is None else {"entry_nats": self.entry_nats, "temperature": self.temperature}
        return {"mass": self.mass, "logprob_bits": self.logprob_bits, **tempered}


DEFAULT_ENCODING = StoreEncoding()


def encoding_of(settings: Any) -> StoreEncoding | None:
    """The encoding `curate.store` asks for (ssb.config.StoreConfig); None: format 2."""
    if not settings.packed:
        return None
    return StoreEncoding(settings.mass, settings.logprob_bits, settings.entry_nats or None, settings.temperature)


def padding_mask(logprobs: np.ndarray) -> np.ndarray:
    """[T, k] bool: the slots that only fill a position to k (log-prob -inf: no bucket)."""
    return np.isneginf(logprobs)


def _fill_ids(kept_ids: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """[n, k] ids: the kept ones, then per position the smallest ids not among them."""
    n, k = kept_ids.shape
    taken = np.zeros((n, 2 * k), bool)
    rows, slots = np.nonzero(kept & (kept_ids < 2 * k))
    taken[rows, kept_ids[rows, slots]] = True
    free = np.argsort(taken, axis=1, kind="stable")  # the untaken candidates first, smallest first
    slot = np.arange(k)[None, :] - kept.sum(1, keepdims=True)  # 0, 1, ... on the filled slots
    return np.where(kept, kept_ids, np.take_along_axis(free, np.clip(slot, 0, None), 1))


@dataclass
class PackedRow:
    counts: np.ndarray  # [T] entries kept per position
    ids: np.ndarray  # [sum(counts)] int64, position after position, best first
    codes: np.ndarray  # [sum(counts)] uint8: per position the tail's code, then code differences
    step: float


def merge_kl(lp: np.ndarray, tail: np.ndarray, temperature: float) -> np.ndarray:
    """[T, k]: at column c-1, the KL at `temperature` that merging the entries past the best c
    into the tail costs, for [T, k] log-probs sorted best first and a [T] tail. Merging is exact
    at T=1 (the tail is their logsumexp); tempering raises each p to 1/T before it is summed, so
    above 1 a merged bucket holds (sum p)^(1/T) where the full target holds sum p^(1/T), and
    the gap grows with T: a bound at the training temperature holds for every T from 1 to it."""
    t = temperature
    s = np.exp(lp / t)
    kept = np.cumsum(s, axis=1)  # S: the kept buckets' tempered mass
    suffix = np.concatenate([np.cumsum(s[:, ::-1], axis=1)[:, ::-1][:, 1:], np.zeros((len(lp), 1))], 1)
    merged_lp = np.concatenate([np.logaddexp.accumulate(lp[:, ::-1], axis=1)[:, ::-1][:, 1:],
                                np.full((len(lp), 1), -np.inf)], 1)
    full = np.exp(tail / t)[:, None] + suffix  # A: the full target's tempered mass outside the kept ones
    merged = np.exp(np.logaddexp(tail[:, None], merged_lp) / t)  # B: the merged tail's
    return np.log((kept + merged) / (kept + full)) + full / (kept + full) * np.log(full / merged)


def kept_counts(lp: np.ndarray, tail: np.ndarray, enc: StoreEncoding) -> np.ndarray:
    """[T] entries to keep per position of [T, k] log-probs sorted best first: by `mass`, the
    fewest reaching it; by `entry_nats` λ, the count c minimising merge_kl(c) + λ·c, so an entry
    costs its bytes only where it buys λ nats at the training temperature (small entries, which
    tempering raises, are kept where they are many; a confident position keeps one)."""
    k = lp.shape[1]
    if enc.entry_nats is None:
        # The fewest entries reaching the mass; float rounding may keep the sum just under it.
        return np.minimum((np.cumsum(np.exp(lp), axis=1) < enc.mass).sum(axis=1) + 1, k)
    cost = merge_kl(lp, tail, enc.temperature) + enc.entry_nats * np.arange(1, k + 1)
    return cost.argmin(axis=1) + 1


def pack_row(ids: np.ndarray, logprobs: np.ndarray, tail: np.ndarray, enc: StoreEncoding) -> PackedRow:
    """One example's [T, k] ids and log-probs and [T] tail, packed."""
    lp = np.maximum(np.asarray(logprobs, np.float64), TAIL_FLOOR)
    # Best first (encode_topk's order already; a writer's own arrays may not be): the code
    # differences below must not be negative.
    order = np.argsort(-lp, axis=1, kind="stable")
    lp, ids = np.take_along_axis(lp, order, 1), np.take_along_axis(np.asarray(ids, np.int64), order, 1)
    k = lp.shape[1]
    tail = np.maximum(np.asarray(tail, np.float64), TAIL_FLOOR)
    counts = kept_counts(lp, tail, enc)
    kept = np.arange(k)[None, :] < counts[:, None]
    dropped = np.where(kept, -np.inf, lp)
    new_tail = np.logaddexp(tail, np.logaddexp.reduce(dropped, axis=1))
    # Slot 0 carries the tail: the top-1 is derived from the rest on reading.
    stored = np.where(kept, lp, 0.0)
    stored[:, 0] = np.maximum(new_tail, TAIL_FLOOR)
    levels = (1 << enc.logprob_bits) - 1
    step = float(np.float32(max(-float(stored.min()), 1e-6) / levels))  # as the float32 column holds it
    codes = np.clip(np.rint(-stored / step), 0, levels).astype(np.int64)
    # Entries are sorted, so their codes never decrease: differences are in [0, levels].
    codes[:, 2:] = np.diff(codes[:, 1:], axis=1)
    return PackedRow(counts, ids[kept], codes[kept].astype(np.uint8), step)


def id_bytes(rows: Sequence[PackedRow]) -> int:
    """2 when every id of the shard fits in uint16, else 4."""
    top = max((int(r.ids.max()) for r in rows if r.ids.size), default=0)
    return 2 if top <= np.iinfo(np.uint16).max else 4


def id_dictionary(rows: Sequence[PackedRow]) -> np.ndarray:
    """The shard's distinct kept ids, most frequent first (ties: the smaller id first)."""
    ids = np.concatenate([r.ids for r in rows]) if rows else np.zeros(0, np.int64)
    distinct, counts = np.unique(ids, return_counts=True)
    return distinct[np.argsort(-counts, kind="stable")]


def _split_bytes(values: np.ndarray, dtype: str) -> bytes:
    """Little-endian `values`, all their low bytes first, then the next ones (byte-stream split):
    ranks are mostly under 256, so their high bytes are runs of zeros zstd all but removes."""
    return np.ascontiguousarray(values.astype(dtype).view(np.uint8).reshape(-1, np.dtype(dtype).itemsize).T).tobytes()


def _by_rank(row: PackedRow, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A row's entries as format 4 stores them: per position the top-1 first, then the others by
    rank; ranks as steps from the one before (the top-1's and the second's as they are), codes
    whole (not differences). A position's entries are a set once the top-1 is known: in rank
    order their ids cost far less than in log-prob order, more than the whole codes add back."""
    first = np.repeat(np.concatenate([[0], np.cumsum(row.counts)[:-1]]), row.counts)
    slot = np.arange(ranks.size) - first
    later = np.where(slot > 0, row.codes.astype(np.int64), 0)
    summed = np.cumsum(later)
    codes = np.where(slot > 0, summed - summed[first], row.codes)
    order = np.lexsort((np.where(slot > 0, ranks, -1), first))
    ranks, codes = ranks[order], codes[order]
    steps = ranks.copy()
    on = np.flatnonzero(slot >= 2)
    steps[on] = ranks[on] - ranks[on - 1]
    return steps, codes


def packed_columns(rows: Sequence[PackedRow], top_k: int, width: int) -> dict[str, pa.Array]:
    """Format-4 columns: each id stored as its rank in the shard's `id_dictionary` (written in
    the first row's cell, the others empty), byte-stream split."""
    count_type = "<u1" if top_k <= 255 else "<u2"
    id_type = "<u2" if width == 2 else "<u4"
    dictionary = id_dictionary(rows)
    rank_of = {int(i): r for r, i in enumerate(dictionary)}
    by_rank = [_by_rank(r, np.fromiter((rank_of[int(i)] for i in r.ids), np.int64, r.ids.size)) for r in rows]
    return {
        "packed_counts": pa.array([r.counts.astype(count_type).tobytes() for r in rows], pa.binary()),
        "id_dictionary": pa.array([_split_bytes(dictionary, id_type) if i == 0 else b"" for i in range(len(rows))],
                                  pa.binary()),
        "packed_ids": pa.array([_split_bytes(steps, id_type) for steps, _ in by_rank], pa.binary()),
        "packed_codes": pa.array([codes.astype(np.uint8).tobytes() for _, codes in by_rank], pa.binary()),
        "logprob_step": pa.array([r.step for r in rows], pa.float32()),
    }


def _unsplit(values: np.ndarray, offsets: np.ndarray, dtype: str) -> np.ndarray:
    """The values `_split_bytes` wrote, row after row (each row's [bytes, n] block transposed back)."""
    size = np.dtype(dtype).itemsize
    lengths = np.diff(offsets)
    starts = np.repeat(offsets[:-1], lengths)
    within = np.arange(values.size) - starts
    # Byte b of a row's i-th value sits at the row's start * size + b * (row length) + i.
    at = (starts * size + within)[:, None] + np.arange(size)[None, :] * np.repeat(lengths, lengths)[:, None]
    return np.ascontiguousarray(values.view(np.uint8)[at]).view(dtype).reshape(-1).astype(np.int64)


def _values(column: pa.ChunkedArray | pa.Array, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """A binary column's bytes as one flat array of `dtype`, and each row's element offsets."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    arr = arr.cast(pa.large_binary()) if arr.type != pa.large_binary() else arr
    size = np.dtype(dtype).itemsize
    offsets = np.frombuffer(arr.buffers()[1], np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = arr.buffers()[2]
    flat = np.frombuffer(data, np.uint8)[offsets[0]: offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    if (offsets % size).any() or flat.size % size:
        raise ValueError(f"packed column: a row's bytes are not a whole number of {dtype} values")
    return flat.view(dtype), (offsets - offsets[0]) // size


def _format4_ranks(table: pa.Table, id_type: str, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, k] ranks (0 past a position's entries) of a format-4 table, and its id_dictionary."""
    dictionary = _unsplit(*_values(table.column("id_dictionary"), id_type), id_type)
    steps = _unsplit(*_values(table.column("packed_ids"), id_type), id_type)
    ranks = np.zeros(kept.shape, np.int64)
    ranks[kept] = steps
    ranks[:, 1:] = np.cumsum(np.where(kept[:, 1:], ranks[:, 1:], 0), axis=1)
    if ranks.size and ranks[kept].max(initial=0) >= dictionary.size:
        raise ValueError(f"packed top-k: id rank {ranks.max()} past the shard's {dictionary.size}-id dictionary")
    return ranks, dictionary


def decode_packed(table: pa.Table, top_k: int, width: int) -> dict[str, pa.Array]:
    """The format-2 columns (topk_ids, topk_logprobs, tail_logprob) of a packed table."""
    counts, row_offsets = _values(table.column("packed_counts"), "<u1" if top_k <= 255 else "<u2")
    id_type = "<u2" if width == 2 else "<u4"
    ids_flat, _ = _values(table.column("packed_ids"), id_type)
    codes_flat, _ = _values(table.column("packed_codes"), "<u1")
    counts = counts.astype(np.int64)
    if (counts.size and (counts.min() < 1 or counts.max() > top_k)) or not counts.sum() == ids_flat.size == codes_flat.size:
        raise ValueError(f"packed top-k: {counts.sum()} entries counted, {ids_flat.size} ids, {codes_flat.size} codes")
    n = counts.size
    kept = np.arange(top_k)[None, :] < counts[:, None]
    steps = np.repeat(np.asarray(table.column("logprob_step").to_numpy(), np.float64), np.diff(row_offsets))
    codes = np.zeros((n, top_k), np.int64)
    codes[kept] = codes_flat
    ids = np.zeros((n, top_k), np.int64)
    by_rank = "id_dictionary" in table.column_names  # format 4; format 3: ids as they are, code differences
    if by_rank:
        ranks, dictionary = _format4_ranks(table, id_type, kept)
        ids[kept] = dictionary[ranks[kept]]
    else:
        ids[kept] = ids_flat
        codes[:, 1:] = np.cumsum(np.where(kept[:, 1:], codes[:, 1:], 0), axis=1)
    values = -codes * steps[:, None]
    tail = values[:, 0]
    others = np.where(kept[:, 1:], np.exp(values[:, 1:]), 0.0)
    # 1 - the rest, no smaller than the next entry (rounding may push the rest past 1), then
    # renormalised: a multiplicative fix keeps every bucket's relative precision.
    top1 = np.maximum(1.0 - np.exp(tail) - others.sum(1), others.max(1, initial=math.exp(TAIL_FLOOR)))
    norm = np.log(top1 + np.exp(tail) + others.sum(1))
    logprobs = np.where(kept, values, -np.inf)
    logprobs[:, 0] = np.log(top1)
    logprobs[:, :] -= norm[:, None]
    if by_rank:  # best first again, as every reader gets it (the top-1 is the largest already)
        order = np.argsort(-logprobs, axis=1, kind="stable")
        logprobs, ids = np.take_along_axis(logprobs, order, 1), np.take_along_axis(ids, order, 1)
    short = ~kept.all(1)
    ids[short] = _fill_ids(ids[short], kept[short])
    rows = np.diff(row_offsets)
    list_offsets = pa.array(np.concatenate([[0], np.cumsum(rows)]).astype(np.int32))
    item = _list_of
    return {
        "topk_ids": pa.ListArray.from_arrays(pa.array((list_offsets.to_numpy() * top_k).astype(np.int32)),
                                             pa.array(ids.astype(np.int32).reshape(-1)), type=item(pa.int32())),
        "topk_logprobs": pa.ListArray.from_arrays(pa.array((list_offsets.to_numpy() * top_k).astype(np.int32)),
                                                  pa.array(logprobs.astype(np.float32).reshape(-1)),
                                                  type=item(pa.float32())),
        "tail_logprob": pa.ListArray.from_arrays(list_offsets, pa.array((tail - norm).astype(np.float32)),
                                                 type=item(pa.float32())),
    }


def target_kl(reference: tuple[np.ndarray, np.ndarray, np.ndarray], packed: tuple[np.ndarray, np.ndarray, np.ndarray],
              temperature: float) -> np.ndarray:
    """[T] KL(reference ‖ packed) at `temperature` over the buckets the loss sees for the packed
    store: each (ids [T, k], log-probs [T, k], tail [T]) is a teacher's target at T=1, turned into
    softmax(log-prob / T) over its own buckets as the loss does; the reference's buckets that the
    packed one merged into its tail are summed there (what a student trained on it is taught)."""
    ref_ids, ref_lp, ref_tail = (np.asarray(a, np.float64) for a in reference)
    ids, lp, tail = (np.asarray(a, np.float64) for a in packed)
    ref_t = np.concatenate([ref_lp, ref_tail[:, None]], 1) / temperature
    ref_p = np.exp(ref_t - np.logaddexp.reduce(ref_t, axis=1, keepdims=True))
    pad = padding_mask(lp)
    match = (ids[:, :, None] == ref_ids[:, None, :]) & ~pad[:, :, None]
    p_kept = (match * ref_p[:, None, :-1]).sum(-1)  # [T, k]: 0 at padding
    p = np.concatenate([p_kept, np.maximum(1.0 - p_kept.sum(1, keepdims=True), 0.0)], 1)
    q_t = np.concatenate([np.where(pad, -np.inf, lp), tail[:, None]], 1) / temperature
    log_q = q_t - np.logaddexp.reduce(q_t, axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - log_q), 0.0).sum(1)
