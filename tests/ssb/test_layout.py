"""The run directory's layout (ssb/layout.py): its names, what the stages write under them
being what the report and the later stages read, and remote (URI) run directories either
working for a stage or refused by a line that names it. No Ray, no engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssb.config import dump_config, load_config
from ssb.eval_table import read_records
from ssb.layout import RemoteRunDirError, RunLayout, job_dir, round_name, round_number
from ssb.records import EvalRecord
from ssb.scoring import ProblemOutcome, score

REMOTE = ["s3://bucket/runs/x", "gs://bucket/runs/x/", "memory://runs/x"]

# The names runs, users and tests have always found: a rename here breaks every earlier run.
NAMES = {
    "config": "config.yaml",
    "curation_summary": "curation_summary.json",
    "merged": "merged",
    "train": "train",
    "train_config": "train/config.yaml",
    "train_metrics": "train/metrics.jsonl",
    "train_summary": "train/summary.json",
    "train_experiment": "train/ray/distill",
    "train_tensorboard": "train/tensorboard",
    "adapter": "adapter",
    "adapter_config": "adapter/adapter_config.json",
    "eval": "eval",
    "eval_results": "eval/results.json",
    "eval_merged": "eval/merged",
    "timings": "timings.json",
    "report_json": "report.json",
    "report_md": "report.md",
    "accuracy_plot": "accuracy.png",
    "loss_plot": "loss.png",
    "logs": "logs",
    "driver_log": "logs/driver.log",
    "worker_logs": "logs/ray",
    "jobs": "jobs",
    "redis": "redis",
    "inline": "inline.jsonl",
}


def test_every_name_is_the_one_runs_have_always_used(tmp_path):
    layout = RunLayout(tmp_path)
    assert layout.root == str(tmp_path) and not layout.remote
    for attr, name in NAMES.items():
        assert getattr(layout, attr) == tmp_path / name, attr
    assert layout.curated == f"{tmp_path}/curated" and layout.manifest == f"{tmp_path}/curated/manifest.json"
    assert layout.train_ray == f"{tmp_path}/train/ray"
    assert layout.eval_outputs("round-1", "gsm8k-test") == tmp_path / "eval" / "round-1" / "gsm8k-test.jsonl"
    assert layout.local_checkpoint(7) == tmp_path / "train" / "local-checkpoints" / "step-000007"
    assert layout.round(1) is layout and layout.round(3).root == f"{tmp_path}/round-3"
    assert (round_name(2), round_number("round-2"), round_number("ssb"), round_number("round-2x")) == \
        ("round-2", 2, None, None)
    assert job_dir("/srv/jobs/", "ab12") == "/srv/jobs/ab12"


def test_the_checkpoint_names_are_the_layouts():
    from ssb import layout, train

    assert (train.ADAPTER_DIR, train.STATE_FILE) == (layout.CHECKPOINT_ADAPTER, layout.CHECKPOINT_STATE)
    assert (train.ADAPTER_DIR, train.STATE_FILE) == ("adapter", "train_state.pt")


def test_the_config_gives_the_layout_of_its_run_directory(tmp_path):
    from pipelines.run import round_config

    cfg = load_config(None, [])
    assert cfg.layout == RunLayout("runs/default") and cfg.store_dir == "runs/default/curated"
    cfg = load_config(None, [f"run_dir={tmp_path}"])
    assert cfg.layout.root == cfg.output_dir and cfg.store_dir == cfg.layout.curated
    assert round_config(cfg, 1) is cfg
    assert round_config(cfg, 2).layout == cfg.layout.round(2)
    assert Path(round_config(cfg, 2).store_dir) == tmp_path / "round-2" / "curated"


def test_rounds_are_the_run_directory_and_its_round_directories(tmp_path):
    for name in ("round-2", "round-10", "round-1", "round-x", "round-3.bak"):
        (tmp_path / name).mkdir()
    (tmp_path / "round-4").write_text("a file, not a round")
    assert [(r, layout.root) for r, layout in RunLayout(tmp_path).rounds()] == \
        [(1, str(tmp_path)), (2, f"{tmp_path}/round-2"), (10, f"{tmp_path}/round-10")]


def _result(label: str, hits: int, n: int = 4) -> dict:
    outcomes = [ProblemOutcome(samples=[i < hits], greedy=i < hits, majority=i < hits, answered=2) for i in range(n)]
    return score("synthetic-heldout", label, outcomes, tokens=10)


def _curate(cfg) -> None:
    """What curation leaves: config.yaml, the store, curation_summary.json."""
    import time

    from pipelines.curate import CurationRun, CurationSummary, write_run_config
    from ssb.store import LogitStore

    write_run_config(cfg)
    store = LogitStore.create_or_resume(cfg.store_dir, config_hash="h", model="m", tokenizer="t", top_k=2)
    store.append([], {"p1": "no_correct_rollout"})
    CurationRun(cfg, store, "m", "t", "m", [], CurationSummary(problems=1, processed=1), time.perf_counter()).close()


def _train(cfg) -> None:
    """What training leaves: metrics (rank 0), the summary, the adapter."""
    from pipelines.distill import append_metrics

    layout = cfg.layout
    for step in (1, 2):
        append_metrics(layout, {"step": step, "epoch": 0, "loss": 1.0 / step})
    layout.train_summary.write_text(json.dumps({"steps": 2, "rows": 1, "wall_seconds": 1.0}))
    layout.train_config.write_text(dump_config(cfg))  # the settings it was trained with: what a rerun compares
    layout.adapter.mkdir(parents=True)
    layout.adapter_config.write_text("{}")


def test_what_the_stages_write_is_what_the_report_and_later_stages_read(tmp_path):
    from pipelines.distill import read_metrics
    from pipelines.evaluate import load_results, merge_results, write_outputs
    from pipelines.stages import train_or_reuse
    from pipelines.run import round_config
    from ssb.report import write_report

    cfg = load_config(None, [f"run_dir={tmp_path}"])
    for r in (1, 2):
        rcfg = round_config(cfg, r)
        _curate(rcfg)
        _train(rcfg)
        # A finished training is found where training writes it, so a rerun reuses it.
        assert train_or_reuse(rcfg) == str(rcfg.layout.adapter)
    layout = cfg.layout
    results = {"base": {"synthetic-heldout": _result("base", 1)}, "round-1": {"synthetic-heldout": _result("round-1", 2)},
               "ssb": {"synthetic-heldout": _result("ssb", 3)}}
    merge_results(layout.eval_results, results)
    record = EvalRecord("synthetic-heldout", "ssb", "p1", "", "")
    out = write_outputs(layout, "ssb", "synthetic-heldout", [record])
    layout.timings.write_text(json.dumps({"curate": 1.0, "eval": 2.0}))

    assert out == tmp_path / "eval" / "ssb" / "synthetic-heldout.jsonl" and read_records(out) == [record]
    assert load_results(tmp_path) == results
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2]
    assert load_config(layout.config).output_dir == str(tmp_path)
    report = write_report(tmp_path)
    assert [c["round"] for c in report["curation"]] == [1, 2] and report["curation"][0]["problems"] == 1
    assert [(t["round"], t["steps"], t["final_loss"]) for t in report["training"]] == [(1, 2, 0.5), (2, 2, 0.5)]
    assert [(r["round"], r["label"]) for r in report["rounds"]] == [(0, "base"), (1, "round-1"), (2, "ssb")]
    assert report["times"] == {"curate": 1.0, "eval": 2.0}
    assert report["plots"] == [str(layout.accuracy_plot), str(layout.loss_plot)]
    for path in (layout.report_json, layout.report_md, layout.accuracy_plot, layout.loss_plot):
        assert path.stat().st_size > 0, path


# -- remote run directories ---------------------------------------------------------------

@pytest.mark.parametrize("root", REMOTE)
def test_a_remote_root_keeps_only_the_store_and_the_checkpoints(root):
    layout = RunLayout(root)
    assert layout.remote
    base = root.rstrip("/")
    assert (layout.curated, layout.manifest, layout.train_ray) == \
        (f"{base}/curated", f"{base}/curated/manifest.json", f"{base}/train/ray")
    assert layout.round(2).curated == f"{base}/round-2/curated"
    with pytest.raises(RemoteRunDirError) as refused:
        layout.local("evaluation")
    message = str(refused.value)
    assert message.startswith("evaluation needs a local or shared-filesystem run directory")
    assert root in message and "curated/" in message
    for attr in NAMES:
        with pytest.raises(RemoteRunDirError, match="needs a local or shared-filesystem run directory"):
            getattr(layout, attr)
    with pytest.raises(RemoteRunDirError):
        layout.eval_outputs("ssb", "b")
    with pytest.raises(RemoteRunDirError):
        layout.rounds()


def _remote(*overrides: str):
    return load_config(None, [f"run_dir={REMOTE[0]}", *overrides])


def _no_local_trace(cwd: Path) -> None:
    # Path("s3://b/x") is the local s3:/b/x: nothing may have been written there.
    assert not list(cwd.iterdir()), list(cwd.iterdir())


def test_evaluation_refuses_a_remote_run_directory_before_anything_starts(tmp_path, monkeypatch):
    import pipelines.evaluate
    import pipelines.ray_setup

    def started(*_a, **_k):
        raise AssertionError("started work before refusing the run directory")

    monkeypatch.setattr(pipelines.ray_setup, "init_ray", started)
    monkeypatch.setattr(pipelines.evaluate, "resolve_model", started)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RemoteRunDirError, match=r"^evaluation needs a local .* s3://bucket/runs/x is remote"):
        pipelines.evaluate.run_evaluation(_remote(), {"base": None})
    _no_local_trace(tmp_path)


def test_ssb_run_and_the_report_refuse_a_remote_run_directory(tmp_path, monkeypatch):
    from pipelines.run import run_pipeline
    from ssb.report import build_report, write_report

    monkeypatch.chdir(tmp_path)
    with pytest.raises(RemoteRunDirError, match=r"^ssb run .* needs a local or shared-filesystem run directory"):
        run_pipeline(_remote())
    for report in (build_report, write_report):
        with pytest.raises(RemoteRunDirError, match=r"^the report needs a local .* s3://bucket/runs/x"):
            report(REMOTE[0])
    _no_local_trace(tmp_path)


def test_curation_keeps_its_store_remote_but_refuses_a_merged_adapter_copy(tmp_path, monkeypatch):
    from pipelines.curate import engine_model_for, write_run_config

    monkeypatch.chdir(tmp_path)
    write_run_config(_remote())  # config.yaml is not kept in a remote run directory
    lora = _remote("model.adapter=/adapters/a", "curate.merge_adapter=false")
    assert engine_model_for(lora, "/models/base") == (lora, "/models/base")
    with pytest.raises(RemoteRunDirError, match=r"^curation with a merged adapter .*merge_adapter=false"):
        engine_model_for(_remote("model.adapter=/adapters/a", "curate.merge_adapter=true"), "/models/base")
    _no_local_trace(tmp_path)


def test_logs_of_a_remote_run_stay_on_the_console(tmp_path, monkeypatch):
    from pipelines.run_logs import log_dir, route_library_logs, save_worker_logs

    monkeypatch.chdir(tmp_path)
    assert log_dir(REMOTE[0]) is None and route_library_logs(REMOTE[0]) is None and save_worker_logs(REMOTE[0]) is None
    assert log_dir(str(tmp_path / "run")) == tmp_path / "run" / "logs"
    _no_local_trace(tmp_path)


def test_the_service_refuses_a_remote_jobs_root():
    from pydantic import ValidationError

    from services.settings import JobsConfig

    with pytest.raises(ValidationError, match=r"the curation service \(ssb serve\) needs a local or shared-filesystem "
                                              r"jobs root, but s3://bucket/jobs is remote"):
        JobsConfig(jobs_root="s3://bucket/jobs")
    assert JobsConfig(jobs_root="/srv/jobs").jobs_root == "/srv/jobs"


@pytest.mark.parametrize(("command", "overrides", "refused"), [
    ("curate", [], None),
    ("curate", ["model.adapter=/adapters/a", "curate.merge_adapter=false"], None),
    ("curate", ["model.adapter=/adapters/a"], "curation with a merged adapter"),  # merged by default on CPU
    ("train", [], None),
    ("eval", [], "evaluation"),
    ("run", [], "ssb run"),
    ("report", [], "the report"),
    ("serve", [], "the curation service (ssb serve)"),
])
def test_each_command_takes_or_refuses_a_remote_run_directory(command, overrides, refused):
    from cluster.args import check_run_dir

    cfg = _remote(*overrides)
    if refused is None:
        check_run_dir(cfg, command)
    else:
        with pytest.raises(RemoteRunDirError, match="^" + refused.replace("(", r"\(").replace(")", r"\)")):
            check_run_dir(cfg, command)
    check_run_dir(load_config(None, ["run_dir=/shared/runs/x", *overrides]), command)  # a local one always works


@pytest.mark.parametrize(("argv", "stage"), [
    (["eval", "--run-dir", REMOTE[0]], "evaluation"),
    (["run", "--run-dir", REMOTE[0]], "ssb run"),
    (["report", f"run_dir={REMOTE[0]}"], "the report"),
    (["serve", "--run-dir", REMOTE[0], "serve.api.port=9"], "the curation service"),
])
def test_the_cli_refuses_in_one_line_before_anything_starts(argv, stage, tmp_path, monkeypatch, capsys):
    from cluster import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"ssb {argv[0]}: {stage}") and REMOTE[0] in lines[0], lines
    _no_local_trace(tmp_path)


def test_the_cli_shows_a_remote_runs_logs_on_the_console_and_says_so(tmp_path, monkeypatch, capsys):
    from cluster import cli

    seen = {}

    def curate(args):
        seen["overrides"] = list(args.overrides)
        return 0

    monkeypatch.setitem(cli.COMMANDS, "curate", (curate, "curate"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["curate", "--run-dir", REMOTE[0]]) == 0
    assert "ray.log_to_driver=true" in seen["overrides"]
    err = capsys.readouterr().err
    assert f"the run directory {REMOTE[0]} is remote, so logs are shown here" in err
    _no_local_trace(tmp_path)


def test_submit_refuses_what_the_job_would_refuse():
    from cluster.submit import check_config

    config = str(Path(__file__).resolve().parents[2] / "configs" / "default.yaml")
    assert check_config(config, [f"run_dir={REMOTE[0]}"], "curate").store_dir == f"{REMOTE[0]}/curated"
    with pytest.raises(RemoteRunDirError, match="^ssb run"):
        check_config(config, [f"run_dir={REMOTE[0]}"], "run")
