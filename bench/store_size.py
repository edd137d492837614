"""Logit store size and fidelity on a real curated store.

`bytes_per_token`: whole shard files (every column: prompts, texts, ids, top-k) over the
response tokens they hold. `logit_bytes_per_token`: the top-k ids, log-probs and tail columns
alone (what grows with k). `kl_nats`: mean over response tokens of KL(full ‖ stored) on the
k+1 buckets the loss sees (the k stored ids and the tail), where "full" is the teacher's
full-vocabulary distribution recomputed by a transformers forward pass of the same weights on
the teacher prompt + response, over the first `--rows` rows (`kl_rows` of them; all by
default). It folds in both the float16 storage and the numeric difference between vLLM's
bf16 engine and this forward pass. `tokens`/`rows`: the whole store's. Ends with:

    RESULT store_size bytes_per_token=… logit_bytes_per_token=… kl_nats=… k=… tokens=… rows=… kl_rows=…

Full size (a given store, or one curated here from `--problems` problems with
configs/default.yaml):

    .venv/bin/python bench/store_size.py [--store runs/x/curated] [--problems 64]

Smoke (tests/test_bench_smoke.py, which passes the test session's curated store): `--smoke`
is `--rows 4` (and, without `--store`, 8 problems curated first; a store with no kept rows
is an error).
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np


def curate_store(problems: int) -> str:
    from pipelines.curate import run_curation
    from ssb.config import load_config

    cfg = load_config("configs/default.yaml", [f"run_dir={tempfile.mkdtemp(prefix='bench-store-')}",
                                               f"data.synthetic.n={problems}"])
    run_curation(cfg, progress=False)
    return cfg.store_dir


def logit_column_bytes(paths: list[str]) -> int:
    import pyarrow.parquet as pq

    total = 0
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                col = group.column(c)
                if col.path_in_schema.split(".")[0] in ("topk_ids", "topk_logprobs", "tail_logprob"):
                    total += col.total_compressed_size
    return total


def bucket_kl(full_logprobs, ids: np.ndarray, stored: np.ndarray, stored_tail: np.ndarray) -> np.ndarray:
    import torch

    p_top = full_logprobs.gather(1, torch.as_tensor(ids)).double()
    p_tail = torch.log1p(-p_top.exp().sum(1).clamp(max=1 - 1e-12))
    q_top, q_tail = torch.as_tensor(stored).double(), torch.as_tensor(stored_tail).double()
    kl = (p_top.exp() * (p_top - q_top)).sum(1) + p_tail.exp() * (p_tail - q_tail)
    return kl.numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store")
    parser.add_argument("--problems", type=int, default=None, help="default 64 (8 with --smoke)")
    parser.add_argument("--rows", type=int, default=None, help="rows whose KL is measured (default all; 4 with --smoke)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--smoke", action="store_true", help="the test suite's tiny run (see above)")
    args = parser.parse_args()
    args.problems = args.problems or (8 if args.smoke else 64)
    args.rows = args.rows or (4 if args.smoke else None)

    import torch
    from transformers import AutoModelForCausalLM

    from ssb.default_model import resolve_model
    from ssb.store import LogitStore, example_arrays

    store = LogitStore.open(args.store or curate_store(args.problems))
    summary = store.summary()
    if not summary["rows"]:
        raise SystemExit(f"{store.uri}: the store has no rows")
    logit_bytes = logit_column_bytes(store.shard_paths())
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.bfloat16).eval()
    kls, k = [], store.manifest["top_k"]
    with torch.no_grad():
        table = store.read_table()
        for row in (table if args.rows is None else table.slice(0, args.rows)).to_pylist():
            ids, logprobs, tail = example_arrays(row)
            prompt, response = row["teacher_prompt_ids"], row["response_ids"]
            x = torch.tensor([prompt + response[:-1]])
            logits = model(x).logits[0, len(prompt) - 1:].float()
            kls.append(bucket_kl(torch.log_softmax(logits, -1), ids, logprobs, tail))
    kl = np.concatenate(kls)
    print(f"{summary['rows']} examples, {summary['tokens']} response tokens, {summary['bytes']} bytes in "
          f"{summary['shards']} shards; KL p50={np.median(kl):.5f} p99={np.quantile(kl, 0.99):.4f}")
    print(f"RESULT store_size bytes_per_token={summary['bytes'] / summary['tokens']:.1f} "
          f"logit_bytes_per_token={logit_bytes / summary['tokens']:.1f} kl_nats={kl.mean():.5f} k={k} "
          f"tokens={summary['tokens']} rows={summary['rows']} kl_rows={len(kls)}")


if __name__ == "__main__":
    main()
