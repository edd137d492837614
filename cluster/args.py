"""From a command's arguments to its run config (shared by every `ssb` command and `ssb serve`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssb.config import RunConfig, load_config


def _looks_like_a_path(name: str) -> bool:
    # A hub name is "name" or "org/name"; anything else is meant as a local directory.
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def check_inputs(cfg: RunConfig) -> None:
    """Missing local inputs fail here, in a line, before a tokenizer, Ray or an engine loads."""
    from ssb.data import check_source

    if _looks_like_a_path(cfg.model.name) and not Path(cfg.model.name).expanduser().exists():
        raise FileNotFoundError(f"model {cfg.model.name!r} does not exist (a local model directory or a hub name "
                                "such as Qwen/Qwen2.5-3B-Instruct)")
    if cfg.model.adapter and "://" not in cfg.model.adapter and not Path(cfg.model.adapter).expanduser().exists():
        raise FileNotFoundError(f"model.adapter {cfg.model.adapter!r} does not exist")
    check_source(cfg.data)


def check_run_dir(cfg: RunConfig, command: str) -> None:
    """A command that keeps files a remote (URI) run directory cannot hold refuses one here,
    in a line, before logs, Ray or an engine start; its stage would refuse it later anyway,
    with the same message."""
    if not cfg.layout.remote:
        return
    from pipelines.evaluate import STAGE as EVALUATION
    from pipelines.merged import MERGED_STAGE, merges_adapters
    from pipelines.run import STAGE as RUN
    from services.settings import SERVICE_STAGE
    from ssb.report import STAGE as REPORT

    stages = {"eval": EVALUATION, "run": RUN, "report": REPORT, "serve": SERVICE_STAGE}
    if cfg.model.adapter and merges_adapters(cfg.curate.merge_adapter, cfg):
        stages["curate"] = MERGED_STAGE
    if command in stages:
        cfg.layout.local(stages[command])


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The run config of a command: --config, the flags that stand for settings, then overrides;
    local inputs checked before anything heavy loads."""
    overrides = list(args.overrides)
    for flag, key in (("model", "model.name"), ("data", "data.source"), ("run_dir", "run_dir"), ("name", "name"),
                      ("store", "train.store")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    benchmarks = getattr(args, "benchmarks", None)
    if benchmarks:
        overrides.append("eval.benchmarks=" + json.dumps([b.strip() for b in benchmarks.split(",") if b.strip()]))
    cfg = load_config(args.config, overrides)
    check_inputs(cfg)
    return cfg
