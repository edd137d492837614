"""`ssb`: the composition root. Every command takes `--config FILE` and `a.b=c` overrides.

    ssb curate --config configs/default.yaml curate.rollout.n=8
    ssb train --run-dir runs/demo train.num_workers=2
    ssb eval --run-dir runs/demo --adapter runs/demo/adapter --with-base eval.limit=50
    ssb run --config configs/default.yaml --rounds 2
    ssb report --run-dir runs/demo
    ssb inspect runs/demo
    ssb doctor
    ssb submit curate configs/default.yaml --address http://HEAD:8265 run_dir=/shared/runs/demo
    ssb jobs status|logs|stop ID
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Callable

from pipelines.stages import ON_CHANGE
from ssb.layout import is_remote
from ssb.store import StoreError

from cluster.args import check_run_dir, config_from_args


def print_inspect_hint(run_dir: str) -> None:
    """The command that opens this run in the browser, spelled as this `ssb` was called."""
    import shutil

    me = os.path.abspath(sys.argv[0]) if sys.argv else ""
    called = "ssb" if os.path.basename(me) != "ssb" or shutil.which("ssb") == me else os.path.relpath(me)
    if not is_remote(run_dir):
        print(f"inspect every problem's path: {called} inspect {run_dir}")


def cmd_curate(args: argparse.Namespace) -> int:
    from pipelines.curate import run_curation

    cfg = config_from_args(args)
    summary = run_curation(cfg, progress=not args.quiet)
    print(summary.table())
    print(f"store: {cfg.store_dir}")
    print_inspect_hint(cfg.output_dir)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.distill import run_distillation

    cfg = config_from_args(args)
    summary = run_distillation(cfg, resume=args.resume)
    print(summary.table())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipelines.evaluate import run_evaluation

    cfg = config_from_args(args)
    adapter = args.adapter or cfg.eval.adapter
    label = args.label or cfg.eval.label or ("ssb" if adapter else "base")
    adapters: dict[str, str | None] = {label: adapter}
    if args.with_base and adapter:
        adapters = {"base": None, **adapters}
    summary = run_evaluation(cfg, adapters, progress=not args.quiet)
    print(summary.table())
    print(f"outputs: {cfg.layout.eval}/")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.run import run_pipeline

    cfg = config_from_args(args)
    report = run_pipeline(cfg, rounds=args.rounds, progress=not args.quiet, on_change=args.on_change)
    from ssb.report import render_table

    print(render_table(report))
    print(f"report: {cfg.layout.report_md}")
    print_inspect_hint(cfg.output_dir)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweep import parse_rounds, plan_sweep, render_text, run_sweep, split_axes

    plain, axes = split_axes(args.overrides)
    if args.verbose:
        plain.append("ray.log_to_driver=true")
    cfg = config_from_args(argparse.Namespace(**{**vars(args), "overrides": plain}))
    plan = plan_sweep(cfg, axes, parse_rounds(args.rounds))  # every setting is checked before anything starts
    # main() keeps the logs of the other job commands; a sweep's run directory is known only here.
    with job_logs("sweep", None if args.verbose else cfg.output_dir) as failed:
        sweep = run_sweep(plan, progress=not args.quiet, on_change=args.on_change)
    if failed:
        return 2
    print(render_text(sweep))
    print(f"table: {cfg.layout.sweep_md}  plot: {cfg.layout.sweep_plot}  data: {cfg.layout.sweep_json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ssb.report import render_table, write_report

    cfg = config_from_args(args)
    print(render_table(write_report(cfg.output_dir)))
    print(f"report: {cfg.layout.report_md}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from cluster import versions
    from cluster.doctor import report

    print(report(config_from_args(args), convert=not args.no_convert))
    # Warnings, not errors: a newer release often works, and doctor is how one finds out where.
    print(versions.report())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cluster.serve_cmd import run

    return run(args)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML run config")
    p.add_argument("--model", help="HF hub name or local path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--data", help="'synthetic', a named dataset (svamp, gsm8k, ...), a local .jsonl/.parquet path or directory, or a hub dataset name")
    p.add_argument("--run-dir", dest="run_dir", help="output directory (default runs/<name>)")
    p.add_argument("--name", help="run name")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show Ray's, vLLM's and the workers' logs on the console (else in <run-dir>/logs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. curate.rollout.n=8")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "curate": (cmd_curate, "sample, verify, select and teach; write the top-k logit store"),
    "train": (cmd_train, "distill a LoRA student from the store with Ray Train; save the adapter"),
    "eval": (cmd_eval, "evaluate the base model or a LoRA adapter on benchmarks (greedy, pass@1, maj@k)"),
    "run": (cmd_run, "curate, train, evaluate base and student, write the report: the whole method"),
    "sweep": (cmd_sweep, "train and evaluate several training settings on one curated store; compare them"),
    "report": (cmd_report, "(re)write <run-dir>/report.md, report.json and plots from a run's outputs"),
    "doctor": (cmd_doctor, "print versions, the engine and device that will run, and where the model is"),
    "serve": (cmd_serve, "serve the curation API (jobs in Redis) and the OpenAI model endpoint on Ray Serve"),
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: need at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssb", description="Semantic Soft Bootstrapping on Ray")
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        if name == "doctor":
            p.add_argument("--no-convert", action="store_true", help="do not convert the default model if missing")
        if name == "train":
            p.add_argument("--resume", action="store_true", help="continue a stopped run from its last checkpoint")
            p.add_argument("--store", help="logit store to train on (default: <run-dir>/curated)")
        if name == "eval":
            p.add_argument("--adapter", help="LoRA adapter directory (default: the base model)")
            p.add_argument("--label", help="name the results are filed under (default: ssb with an adapter, else base)")
            p.add_argument("--with-base", dest="with_base", action="store_true",
                           help="evaluate the base model too, in the same job")
        if name == "run":
            p.add_argument("--rounds", type=_positive_int, default=1,
                           help="bootstrapping rounds (round r+1 curates with round r's student)")
            p.add_argument("--skip-base", dest="skip_base", action="store_true",
                           help="kept for old scripts: every rerun reuses the base model's results when they were "
                                "measured with the same evaluation key, and measures them again when it changed")
        if name in ("run", "sweep"):
            p.add_argument("--on-change", dest="on_change", choices=ON_CHANGE, default=ON_CHANGE[0],
                           help="a stage whose result in the run directory came from other settings (train.lr, "
                                "eval.limit, ...): retrain redoes it, refuse stops with a line naming the change "
                                "(default: %(default)s)")
        if name in ("eval", "run"):
            p.add_argument("--benchmarks", help="comma-separated names, paths or label=path, e.g. synthetic-heldout,svamp,mine=data/x.jsonl")
        if name == "sweep":
            p.add_argument("--rounds", default="1",
                           help="bootstrapping rounds to compare, comma-separated (e.g. 1,2); an override with "
                                "comma-separated values (train.ce_weight=0,0.5,1) is a sweep axis")
            p.add_argument("--benchmarks", help="comma-separated, as for `ssb eval`")
        if name == "serve":
            from cluster.serve_cmd import add_arguments

            add_arguments(p)
        p.set_defaults(fn=fn)
    from cluster import ray_jobs, submit  # Ray job submission: its own modules, its own arguments

    submit.add_parser(sub)
    ray_jobs.add_parser(sub)
    from cluster import inspect_cmd  # a local web app over a run directory; no config, no Ray

    inspect_cmd.add_parser(sub)
    from cluster import estimate_cmd  # reads a pilot's files; no config of its own, no Ray

    estimate_cmd.add_parser(sub)
    return parser


def _setting_error(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown setting {where!r}"
    value = repr(error.get("input"))
    shown = "" if isinstance(error.get("input"), dict) else "=" + (value if len(value) <= 60 else value[:57] + "...")
    return f"{where}{shown}: {error['msg'].removeprefix('Value error, ')}"


def error_line(exc: BaseException) -> str:
    """One line for the terminal: scripts and people read the last line of stderr."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "invalid config: " + "; ".join(_setting_error(e) for e in exc.errors())
    if isinstance(exc, FileNotFoundError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror.lower()}"
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


# Commands that run a job here: their library and worker logs go to <run-dir>/logs/.
LOGGED = ("curate", "train", "eval", "run")


def _run_config(args: argparse.Namespace) -> Any:
    if args.command != "serve":
        return config_from_args(args)
    # `serve.*` overrides are the service's settings, not the run config's.
    run_overrides = [o for o in args.overrides if not o.startswith("serve.")]
    return config_from_args(argparse.Namespace(**{**vars(args), "overrides": run_overrides}))


@contextmanager
def job_logs(command: str, run_dir: Any = None) -> Iterator[list[BaseException]]:
    """Routes library and worker logs into `run_dir`/logs (None: left on the console) and turns
    a user-facing error into one line naming the logs; the yielded list holds it, so the
    caller exits 2 when it is not empty."""
    from pipelines.run_logs import native_stderr, route_library_logs, save_worker_logs

    failed: list[BaseException] = []
    logs = None
    try:
        logs = None if run_dir is None else route_library_logs(run_dir)
        with native_stderr(run_dir) if run_dir is not None else nullcontext():
            yield failed
    except (ValueError, OSError, RuntimeError, StoreError) as exc:
        where = f" (logs: {logs}/)" if logs is not None else ""
        print(f"ssb {command}: {error_line(exc)}{where}", file=sys.stderr)
        failed.append(exc)
    finally:
        if run_dir is not None:
            save_worker_logs(run_dir)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    run_dir = None
    with job_logs(args.command) as failed:
        if args.command in (*LOGGED, "report", "serve"):
            cfg = _run_config(args)
            check_run_dir(cfg, args.command)
        if args.command in LOGGED:
            if getattr(args, "verbose", False):
                args.overrides = [*args.overrides, "ray.log_to_driver=true"]
            elif cfg.layout.remote:
                # Nothing would keep the workers' output: it goes to the console instead.
                print(f"ssb {args.command}: the run directory {cfg.output_dir} is remote, so logs are shown here "
                      "rather than kept in it (logs/ needs a local or shared-filesystem run directory)",
                      file=sys.stderr)
                args.overrides = [*args.overrides, "ray.log_to_driver=true"]
            else:
                run_dir = cfg.output_dir
    if failed:
        return 2
    with job_logs(args.command, run_dir) as failed:
        return args.fn(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
