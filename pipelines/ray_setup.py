"""Starting or joining Ray the same way from every job."""

from __future__ import annotations

import os

from ssb.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=cfg.log_to_driver)
        return
    # A local Ray on a small box: more logical CPUs than cores, or an engine actor and the
    # stages beside it wait on each other for CPU slots and deadlock. "local": a Ray of its own
    # even where `ray start` recorded a cluster on this machine; ray.init() with no address
    # would join that one and then refuse num_cpus (ray.address=auto joins it on purpose).
    ray.init(
        address="local",
        num_cpus=cfg.num_cpus or max(8, os.cpu_count() or 1),
        object_store_memory=cfg.object_store_memory,
        include_dashboard=cfg.include_dashboard,
        ignore_reinit_error=True,
        log_to_driver=cfg.log_to_driver,
    )


def quiet_data_context(wait_for_replicas_s: int = 0) -> None:
    """Our own progress bar reports curation; Ray Data's per-operator bars would bury it.
    `wait_for_replicas_s` > 0: actor pools start no work until all their actors are up."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    if wait_for_replicas_s > 0:
        ctx.wait_for_min_actors_s = wait_for_replicas_s
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
