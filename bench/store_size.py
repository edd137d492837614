"""The packed logit store (format 4) against the k=20 float16 one (format 2): size, fidelity, read time.

From one curated store, the same examples are written twice, in the source's shards: as the
reference (every top-k entry, float16 log-probs: format 2) and packed with `curate.store` of
configs/default.yaml (or `--entry-nats`/`--mass`/`--bits`). `bytes_per_token` and `reference_bytes_per_token`:
whole shard files (every column) over the response tokens they hold. `kl_t1` and `kl_train_t`:
mean over response tokens of KL(reference ‖ packed) over the packed store's buckets at T=1 and
at train.temperature of configs/default.yaml (`train_t`), each side's log-probs divided by T and
renormalised as the loss does, the reference's entries that the packed store merged into its
tail summed there (ssb/store_codec.py `target_kl`). `read_ratio`: time to read the packed store
the way training does (every shard verified, its train columns, each row's arrays) over the
reference's, the median of `--repeats` interleaved pairs (`read_ratio_min`/`read_ratio_max`);
`load` the 1-minute load average at the end. Ends with:

    RESULT store_size bytes_per_token=… entries=… reference_bytes_per_token=… kl_t1=… kl_train_t=… read_ratio=… read_ratio_min=… read_ratio_max=… mass=… entry_nats=… logprob_bits=… train_t=… k=… tokens=… rows=… load=…

`entries`: top-k entries kept per response token.

The reference needs the teacher's full top-k: a format-2 store gives it as stored. A packed
store does not hold it, so for one the teacher's top-k is recomputed by a transformers forward
pass of `--model` on the teacher prompt + response (the KL then compares two encodings of that).
`--sweep` prints the entries, size and KLs of other selections (by mass, by entry_nats) and bit widths too.

Full size (the default run's store, or one curated here from `--problems` problems with
configs/default.yaml, written in format 2):

    .venv/bin/python bench/store_size.py --store /tmp/demo-curate/curated [--sweep]
    .venv/bin/python bench/store_size.py --problems 112

Smoke (tests/test_bench_smoke.py, which passes the test session's curated store): `--smoke`
is its first 4 rows (`--rows 4`), 1 repetition of 2 reads (and, without `--store`, 8 problems
curated first; a store with no kept rows is an error).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _sides import add_repeats_arg, load1, repeats  # noqa: E402

from ssb.config import load_config  # noqa: E402
from ssb.store import LogitStore, StoreError, example_arrays  # noqa: E402
from ssb.store_codec import StoreEncoding, target_kl  # noqa: E402


def curate_store(problems: int) -> str:
    from pipelines.curate import run_curation

    cfg = load_config("configs/default.yaml", [f"run_dir={tempfile.mkdtemp(prefix='bench-store-')}",
                                               f"data.synthetic.n={problems}", "curate.store.packed=false"])
    run_curation(cfg, progress=False)
    return cfg.store_dir


def recomputed_examples(store: LogitStore, model_name: str, rows: int | None) -> list:
    """The store's first `rows` examples with the top-k recomputed from the teacher's weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from ssb.default_model import resolve_model
    from ssb.logits import tail_logprob

    k = store.manifest["top_k"]
    model = AutoModelForCausalLM.from_pretrained(resolve_model(model_name), dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ex in list(store.iter_examples())[:rows]:
            x = torch.tensor([ex.teacher_prompt_ids + ex.response_ids[:-1]])
            logp = model(x).logits[0, len(ex.teacher_prompt_ids) - 1:].log_softmax(-1)
            top = logp.topk(k, -1)
            ex.topk_ids, ex.topk_logprobs = top.indices.tolist(), top.values.tolist()
            ex.tail_logprob = tail_logprob(top.values.double().numpy()).tolist()
            out.append(ex)
    return out


def write_like(source: LogitStore, examples: list, where: Path, encoding: StoreEncoding | None) -> LogitStore:
    """`examples` in a new store at `where`, in the source's shards (the same rows per file)."""
    shutil.rmtree(where, ignore_errors=True)
    m = source.manifest
    store = LogitStore.create_or_resume(str(where), config_hash=m["config_hash"], model=m["model"],
                                        tokenizer=m["tokenizer"], top_k=m["top_k"], encoding=encoding)
    by_id = {ex.problem_id: ex for ex in examples}
    for entry in source.manifest["shards"]:
        if chosen := [by_id[pid] for pid in entry["problem_ids"] if pid in by_id]:
            store.append(chosen)
    return store


def read_seconds(store_dir: Path, reads: int) -> float:
    """Seconds to read the store `reads` times as training does."""
    from ssb.batching import TRAIN_COLUMNS

    began = time.perf_counter()
    for _ in range(reads):
        for shard in LogitStore.open(str(store_dir)).shards():
            for row in shard.read_table(TRAIN_COLUMNS).to_pylist():
                example_arrays(row)
    return time.perf_counter() - began


def mean_kls(reference: LogitStore, packed: LogitStore, temperatures: tuple[float, ...]) -> list[float]:
    pairs = list(zip(reference.read_table().to_pylist(), packed.read_table().to_pylist()))
    tokens = sum(int(a["num_tokens"]) for a, _ in pairs)
    return [sum(float(target_kl(example_arrays(a), example_arrays(b), t).sum()) for a, b in pairs) / tokens
            for t in temperatures]


def mean_entries(packed: LogitStore) -> float:
    """Entries kept per response token (the -inf slots are padding)."""
    rows = [example_arrays(r) for r in packed.read_table().to_pylist()]
    return sum(int(np.isfinite(lp).sum()) for _, lp, _ in rows) / sum(len(lp) for _, lp, _ in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store")
    parser.add_argument("--problems", type=int, default=None, help="default 112, the default run's (8 with --smoke)")
    parser.add_argument("--model", default="default", help="the teacher, for a packed --store only")
    parser.add_argument("--mass", type=float, default=None, help="default: configs/default.yaml's curate.store.mass")
    parser.add_argument("--bits", type=int, default=None, help="default: its curate.store.logprob_bits")
    parser.add_argument("--entry-nats", type=float, default=None,
                        help="default: its curate.store.entry_nats (0: entries chosen by --mass)")
    parser.add_argument("--reads", type=int, default=None, help="store reads per timing (default 20; 2 with --smoke)")
    parser.add_argument("--rows", type=int, default=None, help="the first N kept rows only (default all; 4 with --smoke)")
    parser.add_argument("--sweep", action="store_true", help="also the size and KLs of other selections and bits")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    add_repeats_arg(parser)
    parser.add_argument("--smoke", action="store_true", help="the test suite's tiny run (see above)")
    args = parser.parse_args()
    args.problems = args.problems or (8 if args.smoke else 112)
    args.reads = args.reads or (2 if args.smoke else 20)
    args.rows = args.rows or (4 if args.smoke else None)
    reps = repeats(args)
    cfg = load_config("configs/default.yaml", [])
    settings = cfg.curate.store
    nats = args.entry_nats if args.entry_nats is not None else settings.entry_nats
    encoding = StoreEncoding(args.mass if args.mass is not None else settings.mass,
                             args.bits if args.bits is not None else settings.logprob_bits,
                             nats or None, settings.temperature)
    train_t = cfg.train.temperature

    try:
        source = LogitStore.open(args.store or curate_store(args.problems))
    except StoreError as e:
        raise SystemExit(f"bench/store_size.py: {e}") from None
    if source.encoding is None:
        examples = list(source.iter_examples())[:args.rows]
    else:
        print(f"{source.uri} is packed: recomputing the teacher's top-{source.manifest['top_k']} with transformers")
        examples = recomputed_examples(source, args.model, args.rows)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-store-size-"))
    reference = write_like(source, examples, work / "reference", None)
    packed = write_like(source, examples, work / "packed", encoding)
    ref_sum, packed_sum = reference.summary(), packed.summary()
    kl_t1, kl_train = mean_kls(reference, packed, (1.0, train_t))

    if args.sweep:
        print("select             bits  entries  bytes/token  kl_t1     kl_train_t")
        choices = [(m, None) for m in (0.99, 0.995, 0.999, 0.9999, 1.0)] + [(1.0, n) for n in (0.001, 0.002, 0.0025, 0.003)]
        for mass, per_entry in choices:
            for bits in (5, 6, 8):
                enc = StoreEncoding(mass, bits, per_entry, settings.temperature)
                other = write_like(source, examples, work / f"sweep-{mass}-{per_entry}-{bits}", enc)
                kls = mean_kls(reference, other, (1.0, train_t))
                select = f"mass={mass}" if per_entry is None else f"entry_nats={per_entry}"
                print(f"{select:<18} {bits:<5} {mean_entries(other):<8.1f} {other.summary()['bytes_per_token']:<12.1f} "
                      f"{kls[0]:<9.5f} {kls[1]:.5f}")

    ratios = []
    for _ in range(reps):  # reference, packed, reference, packed, ...: a busier box moves both alike
        ref_s = read_seconds(work / "reference", args.reads)
        ratios.append(read_seconds(work / "packed", args.reads) / ref_s)
    print(f"{packed_sum['rows']} examples, {packed_sum['tokens']} response tokens in {packed_sum['shards']} shards: "
          f"{packed_sum['bytes']} bytes packed, {ref_sum['bytes']} bytes float16")
    print(f"RESULT store_size bytes_per_token={packed_sum['bytes_per_token']:.1f} entries={mean_entries(packed):.1f} "
          f"reference_bytes_per_token={ref_sum['bytes_per_token']:.1f} kl_t1={kl_t1:.5f} kl_train_t={kl_train:.5f} "
          f"read_ratio={statistics.median(ratios):.3f} read_ratio_min={min(ratios):.3f} "
          f"read_ratio_max={max(ratios):.3f} mass={encoding.mass} entry_nats={encoding.entry_nats or 0} logprob_bits={encoding.logprob_bits} "
          f"train_t={train_t} k={source.manifest['top_k']} tokens={packed_sum['tokens']} rows={packed_sum['rows']} "
          f"load={load1()}")


if __name__ == "__main__":
    main()
