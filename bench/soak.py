"""Soak of `ssb serve` under random faults: how long the service takes to recover by itself,
and whether any job is lost or stored twice on the way.

Starts `ssb serve` (its own Ray, its supervised redis-server, the tiny model of the test
suite, no OpenAI endpoint) and, for `--duration` seconds, submits tiny jobs continuously over
HTTP from `--tokens` tokens while a chaos loop SIGKILLs, at random seeded gaps, the
redis-server, the runner replica, the API replica and the engine replica (each kind at least
once). Jobs a fault failed are resumed as a client would. Then it waits for every job and
checks each one's store (each problem exactly once) and the leases sampled from Redis (one
holder at a time). The soak itself is tests/services/soak.py, shared with
tests/services/test_soak.py. Prints each fault's recovery (replaced and `/readyz` 200 for 5 s
on end), and ends with:

    RESULT soak jobs=… lost=… duplicated=… overlaps=… reclaimed=… resumed=… faults=… max_recovery_s=… seed=… load1=…

`lost`, `duplicated` and `overlaps` must be 0 (the exit code is 1 otherwise); `reclaimed`
counts the jobs claimed more than once (what the lease check had to check); `load1` is the
1-minute load average at the end (figures taken at a load above the core count are slowed).
Full size (10 minutes of faults):

    python bench/soak.py --duration 600 --seed 1

Smoke (tests/test_bench_smoke.py): `--smoke` is 10 s of faults of the two kinds that recover
in seconds (the redis-server and the runner replica), 2-5 s apart, one job every 2 s.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from services.redis_server import free_port
    from tests.services.soak import FAULTS, ServeProcess, Soak, new_tokens

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=None, help="seconds of faults (default 600; 10 with --smoke)")
    p.add_argument("--seed", type=int, default=None, help="the chaos loop's seed (default: random, printed)")
    p.add_argument("--tokens", type=int, default=3, help="API tokens the jobs come from")
    p.add_argument("--faults", default=None,
                   help=f"comma-separated kinds (default {','.join(FAULTS)}; redis,runner with --smoke)")
    p.add_argument("--every", type=float, default=2.0, help="mean seconds between job submissions")
    p.add_argument("--run-dir", type=Path, default=None, help="where `ssb serve` keeps its run (default: a temp dir)")
    p.add_argument("--smoke", action="store_true", help="the test suite's tiny run")
    args = p.parse_args()
    duration = args.duration if args.duration is not None else 10.0 if args.smoke else 600.0
    kinds = tuple((args.faults or ("redis,runner" if args.smoke else ",".join(FAULTS))).split(","))
    if unknown := [k for k in kinds if k not in FAULTS]:
        p.error(f"--faults: unknown kind(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    run_dir = (args.run_dir or Path(tempfile.mkdtemp(prefix="ssb-soak-")) / "run").resolve()

    serve = ServeProcess(run_dir, free_port(), new_tokens(args.tokens), [])
    try:
        target = serve.target()
        print(f"ssb serve ready at {target.url} (console: {serve.log}); seed {seed}", flush=True)
        gaps = {"gap_s": (2.0, 5.0)} if args.smoke else {}  # the full size keeps the soak's own gaps
        soak = Soak(target, duration_s=duration, seed=seed, kinds=kinds, submit_every_s=args.every, **gaps,
                    log=lambda line: print(line, flush=True))
        out = soak.run()
    finally:
        rc = serve.stop()
    for line in out.problems:
        print(f"problem: {line}")
    print(f"ssb serve exited {rc} on SIGTERM")
    print("recovery (s): " + ", ".join(f"{f.kind} {f.recovery_s if f.recovery_s is None else round(f.recovery_s, 1)}"
                                       for f in out.faults))
    print(out.result_line())
    failed = bool(out.lost or out.duplicated or out.overlaps or out.problems or rc)
    if args.run_dir is None and not failed:
        shutil.rmtree(run_dir.parent, ignore_errors=True)
    elif failed:
        print(f"the run (jobs, stores, Redis, logs) is kept in {run_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
