"""Curation rollout throughput with 2 engine replicas vs 1 on a two-node Ray cluster.

The cluster is the tests' loopback one (tests/cluster/loopback.py): two `ray start` nodes
of 3 logical CPUs each. Each replica is an actor running curation's own rollout step
(`pipelines.curation_engine.CurationEngine.roll_out`, what a `CurationWorker` with
`engine.colocate: false` runs first) with `engine.cpus_per_replica=2`, so two replicas land on the
two nodes, as `engine.replicas=2` does in a curation job. Engines start before the clock
does (start-up is not throughput); then the same problems are dealt out in
`engine.batch_size` batches to whichever replica is free, and rollout tokens per second of
wall time are compared (`ratio` = 2 replicas over 1; `na` for a round left out with
`--replicas`). Ends with:

    RESULT scale_out ratio=… replicas1_tok_s=… replicas2_tok_s=… problems=… nodes=… cores=… load1=… limit=…

On one 2-core machine both "nodes" share the same two cores, and each engine binds its
OpenMP threads to both of them: two replicas split the cores instead of adding any, so a
ratio near 1.0 (or below, from the two engines' threads contending) is the expected result
here. On real nodes each replica brings its own cores or GPU and the ratio approaches the
replica count while the driver keeps every engine fed.

Full size (32 problems, 4 rollouts of at most 128 tokens, batches of 8):

    .venv/bin/python bench/scale_out.py [--problems 32] [overrides ...]

Smoke (tests/test_bench_smoke.py): `--smoke` is the same two-node cluster with the 2-replica
round only (`--replicas 2`: two engine actors spread over the two nodes; replicas1_tok_s and
the ratio print as na) on 2 problems, 1 rollout of at most 8 tokens, batches of 1 (overrides
given on the command line still win). The 1-replica round runs the same code with one actor,
and its engine start would add 15-25 s to the suite.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class RolloutReplica:
    """One engine replica doing curation's rollout step on batches of problem rows."""

    def __init__(self, cfg_json: str, model_path: str):
        from pipelines.curation_engine import CurationEngine
        from ssb.config import RunConfig

        self.engine = CurationEngine(RunConfig.model_validate_json(cfg_json), model_path)

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    async def rollouts(self, problems: list[dict]) -> int:
        from ssb.records import Problem

        states = await self.engine.roll_out([Problem(**p) for p in problems])
        return sum(s.rollout_tokens for s in states)


def measure(cfg, model_path: str, problems: list[dict], replicas: int,
            settle_s: float = 0.0) -> tuple[float, int, float, set[str]]:
    import ray

    from pipelines.engine import engine_actor_options

    actor_cls = ray.remote(**engine_actor_options(cfg.engine), scheduling_strategy="SPREAD")(RolloutReplica)
    actors = [actor_cls.remote(cfg.model_dump_json(), model_path) for _ in range(replicas)]
    nodes = set(ray.get([a.node.remote() for a in actors]))  # waits until every engine is up
    batches = [problems[i:i + cfg.engine.batch_size] for i in range(0, len(problems), cfg.engine.batch_size)]
    start = time.perf_counter()
    running = {a.rollouts.remote(batches.pop(0)): a for a in actors if batches}
    tokens = 0
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        actor = running.pop(done[0])
        tokens += ray.get(done[0])
        if batches:
            running[actor.rollouts.remote(batches.pop(0))] = actor
    seconds = time.perf_counter() - start
    for a in actors:
        ray.kill(a)
    time.sleep(settle_s)  # let the engines' memory go before the next round
    return tokens / seconds, tokens, seconds, nodes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=None, help="default 32 (2 with --smoke)")
    parser.add_argument("--replicas", default=None, help="comma-separated rounds: 1,2 (default both; 2 with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="the test suite's tiny run (see above)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    rounds = sorted({int(r) for r in (args.replicas or ("2" if args.smoke else "1,2")).split(",")})
    if not set(rounds) <= {1, 2}:
        parser.error("--replicas: rounds of 1 and/or 2 replicas")
    smoke = ["curate.rollout.n=1", "curate.rollout.max_tokens=8", "engine.batch_size=1"] if args.smoke else []

    from dataclasses import asdict

    from ssb.config import load_config
    from ssb.data import load_problems
    from ssb.default_model import resolve_model
    from tests.cluster.loopback import LoopbackCluster

    cfg = load_config(REPO / "configs" / "default.yaml", [
        f"data.synthetic.n={args.problems or (2 if args.smoke else 32)}", "curate.rollout.n=4",
        "curate.rollout.max_tokens=128", "engine.batch_size=8", "engine.cpu_kvcache_gb=1", "engine.cpus_per_replica=2",
        *smoke, *args.overrides])
    model_path = resolve_model(cfg.model.name)
    problems = [asdict(p) for p in load_problems(cfg.data)[0]]

    cluster = LoopbackCluster([{"num_cpus": 3, "resources": {"node_head": 1}},
                               {"num_cpus": 3, "resources": {"node_worker": 1}}])
    with cluster:
        # This process joins the cluster as a driver: token auth with the cluster's token.
        os.environ.update({k: v for k, v in cluster.env.items() if k.startswith("RAY_AUTH")})
        import ray

        ray.init(address=cluster.gcs_address, log_to_driver=False)
        try:
            results = {}
            for replicas in rounds:
                rate, tokens, seconds, nodes = measure(cfg, model_path, problems, replicas,
                                                       settle_s=5.0 if replicas != rounds[-1] else 0.0)
                results[replicas] = rate
                print(f"replicas={replicas}: {tokens} rollout tokens in {seconds:.1f} s = {rate:.1f} tok/s "
                      f"on {len(nodes)} node(s)", flush=True)
        finally:
            ray.shutdown()
    load = os.getloadavg()[0]
    ratio = f"{results[2] / results[1]:.3f}" if len(results) == 2 else "na"
    one, two = (f"{results[r]:.1f}" if r in results else "na" for r in (1, 2))
    print(f"RESULT scale_out ratio={ratio} replicas1_tok_s={one} replicas2_tok_s={two} problems={len(problems)} "
          f"nodes=2 cores={os.cpu_count()} load1={load:.1f} limit=both_nodes_share_{os.cpu_count()}_cores")


if __name__ == "__main__":
    main()
