"""`ssb estimate`: what a full curation will cost, projected from a pilot run directory.

    ssb curate --config configs/qwen2.5-3b-gsm8k.yaml data.limit=32 --run-dir runs/pilot
    ssb estimate --run-dir runs/pilot --problems 7473 --engines 8 --engine-tokens-per-second 2500 \
        --price-per-engine-hour 2.5

No Ray and no engine: it reads the pilot's store traces and summaries (ssb/estimate.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = "project tokens, engine-hours, wall time, kept examples, store size and cost of a full curation from a pilot"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("estimate", help=HELP, description=HELP)
    p.add_argument("--run-dir", required=True, help="a pilot's run directory (a finished or partial curation)")
    p.add_argument("--problems", type=int, required=True, help="problems in the full run")
    p.add_argument("--engines", type=int, default=1, help="engines the full run uses at once (default 1)")
    p.add_argument("--engine-tokens-per-second", type=float, default=None,
                   help="one engine's generation rate on the target machine (default: the pilot's own)")
    p.add_argument("--price-per-engine-hour", type=float, default=None, help="price of one engine-hour")
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")
    p.set_defaults(fn=run)


def run(args: argparse.Namespace) -> int:
    from ssb.config import load_config
    from ssb.estimate import estimate, examples_per_step, load_pilot, render
    from ssb.layout import RunLayout
    from ssb.manifest import StoreError

    config = RunLayout(args.run_dir).config
    train = load_config(config if config.is_file() else None).train
    try:
        result = estimate(load_pilot(args.run_dir), args.problems, engines=args.engines,
                          engine_tokens_per_second=args.engine_tokens_per_second,
                          price_per_engine_hour=args.price_per_engine_hour, epochs=train.epochs,
                          examples_per_step=examples_per_step(train))
    except (ValueError, OSError, StoreError) as exc:
        print(f"ssb estimate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.as_dict(), indent=2) if args.json else render(result, args.price_per_engine_hour))
    return 0
