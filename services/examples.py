"""A job's curated examples, one page at a time, straight from its LogitStore."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

EXAMPLE_COLUMNS = ["problem_id", "question", "answer", "response_text", "num_tokens", "correct_rollout",
                   "incorrect_rollout", "incorrect_answer"]


def read_examples(store_dir: str, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(total rows, one page): text fields inline; top-k logits by shard file and row.
    A malformed manifest or a shard whose bytes differ from it answers 409 naming them:
    the job's results are damaged, and serving them unchecked would pass the damage on."""
    from ssb.store import ChecksumError, LogitStore, ManifestError, StoreError

    try:
        store = LogitStore.open(store_dir, allow_empty=True)
    except ManifestError as exc:
        raise HTTPException(409, f"the job's store is damaged: {exc}") from None
    except StoreError:
        return 0, []  # no shard committed yet
    shards = store.shards()
    total = sum(shard.rows for shard in shards)
    page: list[dict[str, Any]] = []
    start = 0
    for shard in shards:
        end = start + shard.rows
        if end > offset and len(page) < limit:
            first = max(0, offset - start)
            take = min(shard.rows - first, limit - len(page))
            try:
                table = shard.read_table(EXAMPLE_COLUMNS).slice(first, take)
            except ChecksumError as exc:
                raise HTTPException(409, f"the job's store is damaged: {exc}") from None
            for i, row in enumerate(table.to_pylist()):
                row["logits"] = {"shard": f"{store.uri}/{shard.name}", "row": first + i,
                                 "sha256": shard.entry["sha256"], "top_k": store.manifest["top_k"],
                                 "columns": ["topk_ids", "topk_logprobs", "tail_logprob"]}
                page.append(row)
        start = end
    return total, page
