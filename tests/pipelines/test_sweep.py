"""`ssb sweep`: axes from overrides, settings and their names, refusals before anything runs, the
orchestration over stand-in stages (rounds, reuse), and the real thing end to end at toy size."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines.sweep import (Axis, build_sweep, parse_rounds, plan_sweep, render_text, run_sweep, setting_name,
                             split_axes, split_values)
from ssb.config import dump_config, load_config
from tests.conftest import REPO, run_ssb, tiny_curation_overrides

# -- axes, rounds, names --------------------------------------------------------------------------

def test_a_value_splits_at_its_top_level_commas_only():
    assert split_values("0,0.5,1") == ["0", "0.5", "1"]
    assert split_values("[a,b]") == ["[a,b]"]
    assert split_values("[q_proj],[q_proj, v_proj]") == ["[q_proj]", "[q_proj, v_proj]"]
    assert split_values("{a: 1, b: 2}") == ["{a: 1, b: 2}"]
    assert split_values("'a, b',c") == ["'a, b'", "c"]
    assert split_values("plain") == ["plain"]


def test_overrides_with_several_values_are_axes_and_the_rest_apply_to_all():
    plain, axes = split_axes(["train.ce_weight=0,0.5,1", "eval.limit=32", "eval.benchmarks=[a,b]",
                              "train.temperature=1, 2"])
    assert plain == ["eval.limit=32", "eval.benchmarks=[a,b]"]
    assert axes == [Axis("train.ce_weight", ("0", "0.5", "1")), Axis("train.temperature", ("1", "2"))]


@pytest.mark.parametrize(("overrides", "expected"), [
    (["curate.rollout.n=2,4"], "curate.rollout.n cannot be a sweep axis: a sweep compares training settings"),
    (["data.synthetic.n=10,20"], "data.synthetic.n cannot be a sweep axis"),
    (["model.name=a,b"], "model.name cannot be a sweep axis"),
    (["eval.limit=10,20"], "eval.limit cannot be a sweep axis"),
    (["prompts.tutor_system=Be brief, please"], "quoted: prompts.tutor_system='a, b'"),
    (["rounds=1,2"], "sweep it with --rounds 1,2"),
    (["train.store=a,b"], "train.store cannot be swept"),
    (["train.ce_weight=0,"], "an empty value"),
    (["train.ce_weight=0,0"], "a value is given twice"),
    (["train.ce_weight=0,1", "train.ce_weight=2,3"], "train.ce_weight is given twice"),
    (["train.ce_weight=0,1", "train.ce_weight=0.5"], "both as a sweep axis and as a single value"),
])
def test_axes_that_a_sweep_cannot_compare_are_refused(overrides, expected):
    with pytest.raises(ValueError) as err:
        split_axes(overrides)
    assert expected in str(err.value)


def test_rounds_are_whole_numbers_from_one_in_order():
    assert parse_rounds("2,1") == [1, 2] and parse_rounds("3") == [3]
    for bad, expected in (("0,1", "need at least 1"), ("1,x", "'x' is not a whole number"), ("1,1", "twice")):
        with pytest.raises(ValueError, match=expected):
            parse_rounds(bad)


def test_a_setting_name_is_readable_and_safe_as_a_directory_and_a_label():
    assert setting_name((("train.ce_weight", "0.5"), ("train.temperature", "1")), 2) == \
        "ce_weight=0.5,temperature=1,rounds=2"
    assert setting_name((("train.lora.target_modules", "[q_proj, v_proj]"),), None) == \
        "lora.target_modules=_q_proj,_v_proj_"
    assert setting_name((), None) == "default"
    long = setting_name((("train.lora.target_modules", "[" + ", ".join(["q_proj"] * 40) + "]"),), None)
    assert len(long) <= 120 and "/" not in long


def test_each_combination_times_each_round_is_a_setting_with_its_own_validated_config(tmp_path):
    base = load_config(None, [f"run_dir={tmp_path}", "train.epochs=1"])
    _, axes = split_axes(["train.ce_weight=0,1", "train.temperature=1,2"])
    plan = plan_sweep(base, axes, [1, 2])
    assert [s.name for s in plan.settings][:3] == ["ce_weight=0,temperature=1,rounds=1",
                                                  "ce_weight=0,temperature=1,rounds=2",
                                                  "ce_weight=0,temperature=2,rounds=1"]
    assert len(plan.settings) == 8 and len({s.train_name for s in plan.settings}) == 4
    s = plan.settings[-1]
    assert (s.cfg.train.ce_weight, s.cfg.train.temperature, s.cfg.train.epochs, s.rounds) == (1.0, 2.0, 1, 2)
    assert s.cfg.output_dir == str(tmp_path / "sweep" / "ce_weight=1,temperature=2")
    assert s.cfg.train.store == str((tmp_path / "curated").resolve())
    assert not tmp_path.joinpath("sweep").exists()  # planning writes nothing
    # one round value other than 1 still names the rounds
    assert plan_sweep(base, axes[:1], [2]).settings[0].name == "ce_weight=0,rounds=2"
    assert [s.name for s in plan_sweep(base, [], [1, 2]).settings] == ["rounds=1", "rounds=2"]


def test_a_setting_with_an_invalid_config_fails_the_whole_sweep_up_front(tmp_path):
    from pydantic import ValidationError

    base = load_config(None, [f"run_dir={tmp_path}"])
    with pytest.raises(ValidationError, match="kl_weight and ce_weight are both 0"):
        plan_sweep(base, [Axis("train.kl_weight", ("0", "1"))])  # with the default ce_weight 0
    with pytest.raises(ValidationError, match="valid number"):
        plan_sweep(load_config(None, [f"run_dir={tmp_path}"]), [Axis("train.lr", ("1e-4", "fast"))])
    with pytest.raises(ValueError, match="nothing to sweep"):
        plan_sweep(base, [], [1])
    with pytest.raises(ValueError, match="a sweep trains on its run directory's own store"):
        plan_sweep(load_config(None, [f"run_dir={tmp_path}", "train.store=/x"]), [Axis("train.lr", ("1", "2"))])
    with pytest.raises(ValueError, match="remote"):
        plan_sweep(load_config(None, ["run_dir=s3://bucket/x"]), [Axis("train.lr", ("1", "2"))])


@pytest.mark.parametrize(("args", "expected"), [
    (["train.ce_weight=0,1", "curate.rollout.n=2,4"], "ssb sweep: curate.rollout.n cannot be a sweep axis"),
    (["train.ce_weight=0,x"], "ssb sweep: invalid config: train.ce_weight='x': Input should be a valid number"),
    (["train.kl_weight=0,1"], "ssb sweep: invalid config: train: kl_weight and ce_weight are both 0"),
    (["train.epochs=1"], "ssb sweep: nothing to sweep"),
    (["train.ce_weight=0,1", "--rounds", "0,1"], "ssb sweep: rounds '0,1': 0: need at least 1"),
    (["train.ce_weight=0,1", "train.nope=1"], "ssb sweep: invalid config: unknown setting 'train.nope'"),
])
def test_the_cli_refuses_a_bad_sweep_in_one_line_before_anything_starts(args, expected, tmp_path, capsys):
    from cluster.cli import main

    run_dir = tmp_path / "run"
    assert main(["sweep", f"--run-dir={run_dir}", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and expected in err[0], err
    assert not run_dir.exists()


@pytest.mark.parametrize("override", ["train.lr=!!python/object/apply:os.system [ls]", "train..lr=1", "trainlr"])
def test_ssb_run_and_ssb_sweep_refuse_a_bad_override_with_the_same_line(override, tmp_path):
    """As a user types it: one line on stderr, the same after the command's name, no traceback."""
    lines = {}
    for command in ("run", "sweep"):
        done = subprocess.run([sys.executable, "-m", "cluster.cli", command, f"--run-dir={tmp_path / 'run'}", override],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        err = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(err) == 1 and err[0].startswith(f"ssb {command}: override "), done.stderr
        lines[command] = err[0].removeprefix(f"ssb {command}: ")
    assert lines["run"] == lines["sweep"] and "Traceback" not in lines["run"]
    assert not (tmp_path / "run").exists()


# -- the orchestration, over stand-in stages ------------------------------------------------------

@pytest.fixture
def stand_ins(monkeypatch):
    """Curation, training and evaluation replaced by functions that write what the real ones
    leave behind (summaries, metrics, an adapter, results), and count their calls."""
    from pipelines.evaluate import benchmark_key, merge_results
    from ssb.scoring import ProblemOutcome, score

    calls: dict[str, list[Any]] = {"curate": [], "train": [], "eval": []}

    def curate(cfg, *, progress=True, adapter=None, on_commit=None):
        calls["curate"].append((cfg.output_dir, adapter))
        # round 2 of ce_weight=1 keeps nothing: that setting has no student to evaluate
        rows = 0 if adapter and "ce_weight=1" in cfg.output_dir else 6
        layout = cfg.layout
        layout.curation_summary.parent.mkdir(parents=True, exist_ok=True)
        layout.curation_summary.write_text(json.dumps({"store": {"rows": rows}, "wall_seconds": 3.0}))
        return SimpleNamespace(store={"rows": rows}, table=lambda: f"stored {rows} rows")

    def distill(cfg, *, resume=False):
        calls["train"].append(cfg.output_dir)
        layout = cfg.layout
        layout.train.mkdir(parents=True, exist_ok=True)
        layout.train_config.write_text(dump_config(cfg))
        losses = [2.0, 1.0 + cfg.train.ce_weight]
        layout.train_metrics.write_text("".join(json.dumps({"step": i + 1, "loss": x}) + "\n"
                                                for i, x in enumerate(losses)))
        layout.train_summary.write_text(json.dumps({"steps": 2, "rows": 6, "wall_seconds": 10.0}))
        layout.adapter.mkdir(parents=True, exist_ok=True)
        layout.adapter_config.write_text(json.dumps({"store": cfg.train.store, "epochs": cfg.train.epochs}))

    def evaluate(cfg, adapters, *, progress=True, extras=(), merged_elsewhere=()):
        calls["eval"].append(sorted(adapters))
        right = {"base": 2}  # of 10; each student solves more the more rounds it had
        results = {}
        for label in adapters:
            hits = right.get(label, 6 if "rounds=2" in label else 4)
            outcomes = [ProblemOutcome(greedy=i < hits) for i in range(10)]
            results[label] = {benchmark_key(b): score(benchmark_key(b), label, outcomes) for b in cfg.eval.benchmarks}
        merge_results(cfg.layout.eval_results, results)

    monkeypatch.setattr("pipelines.curate.run_curation", curate)
    monkeypatch.setattr("pipelines.distill.run_distillation", distill)
    monkeypatch.setattr("pipelines.evaluate.run_evaluation", evaluate)
    return calls


def _plan(tmp_path, *extra: str, rounds=(1, 2)):
    plain, axes = split_axes([f"run_dir={tmp_path}", "train.ce_weight=0,1", *extra])
    return plan_sweep(load_config(None, plain), axes, list(rounds))


def test_rounds_share_their_first_training_and_a_rerun_redoes_nothing(tmp_path, stand_ins, capsys):
    sweep = run_sweep(_plan(tmp_path), progress=False)
    store = str((tmp_path / "curated").resolve())
    a, b = tmp_path / "sweep" / "ce_weight=0", tmp_path / "sweep" / "ce_weight=1"
    # the shared store once, then each setting's round 2 with its own round-1 student
    assert stand_ins["curate"] == [(str(tmp_path), None), (str(a / "round-2"), str(a / "adapter")),
                                   (str(b / "round-2"), str(b / "adapter"))]
    # round 1 of a setting trains once for rounds=1 and rounds=2; ce_weight=1's round 2 kept nothing
    assert stand_ins["train"] == [str(a), str(a / "round-2"), str(b)]
    assert json.loads((a / "adapter" / "adapter_config.json").read_text())["store"] == store
    assert json.loads((a / "round-2" / "adapter" / "adapter_config.json").read_text())["store"] is None
    assert stand_ins["eval"] == [["base", "ce_weight=0,rounds=1", "ce_weight=0,rounds=2", "ce_weight=1,rounds=1"]]

    rows = {r["setting"]: r for r in sweep["rows"]}
    assert list(rows) == ["base", "ce_weight=0,rounds=1", "ce_weight=0,rounds=2", "ce_weight=1,rounds=1",
                          "ce_weight=1,rounds=2"]
    two = rows["ce_weight=0,rounds=2"]
    assert two["benchmarks"]["synthetic-heldout"]["accuracy"] == 0.6
    assert two["benchmarks"]["synthetic-heldout"]["delta"] == pytest.approx(0.4)
    # seconds: both rounds' trainings and round 2's curation
    assert two["train"] == {"steps": 2, "rows": 6, "final_loss": 1.0, "seconds": 23.0}
    assert rows["ce_weight=1,rounds=2"]["status"] == "round 2 kept no examples"
    assert rows["ce_weight=1,rounds=2"]["benchmarks"] == {}
    best = sweep["best"]["synthetic-heldout"]
    assert best["setting"] == "ce_weight=0,rounds=2" and best["overlaps"]  # 60% vs 40% of 10: not told apart
    text = render_text(sweep)
    assert "highest is ce_weight=0,rounds=2 60.0%" in text and "does not tell them apart" in text
    assert "round 2 kept no examples" in text
    md = (tmp_path / "sweep.md").read_text()
    assert "| base | 20.0% [5.7, 51.0] | – |" in md and "| ce_weight=0,rounds=2 | 60.0% [31.3, 83.2] | +40.0 |" in md
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"][2]["setting"] == "ce_weight=0,rounds=2"
    assert (tmp_path / "sweep.png").stat().st_size > 0

    stand_ins["train"].clear()
    stand_ins["eval"].clear()
    capsys.readouterr()
    again = run_sweep(_plan(tmp_path), progress=False)
    assert stand_ins["train"] == [] and stand_ins["eval"] == []
    out = capsys.readouterr().out
    # each stage says what it reused: three trainings (ce_weight=1 stopped at round 2) and four labels
    assert out.count(": reuses the adapter trained with these settings") == 3
    assert "evaluate ce_weight=0,rounds=1: reuses its results on synthetic-heldout, measured with these settings" in out
    assert out.count(": reuses its results on") == 4
    assert [r["benchmarks"] for r in again["rows"]] == [r["benchmarks"] for r in sweep["rows"]]

    # other eval settings: every label measured again, with the changed setting named
    run_sweep(_plan(tmp_path, "eval.limit=20"), progress=False)
    assert stand_ins["train"] == [] and len(stand_ins["eval"]) == 1 and len(stand_ins["eval"][0]) == 4
    assert ("evaluate base: redoes it; its results on synthetic-heldout came from other settings "
            "(eval.limit: 100 → 20)") in capsys.readouterr().out
    # other training settings: refused in a line naming the change, nothing touched ...
    with pytest.raises(ValueError, match=r"^train \[1/2\] ce_weight=0 \(round 1\): .* came from other settings "
                                         r"\(train.epochs: 3 → 1\); --on-change retrain redoes it"):
        run_sweep(_plan(tmp_path, "train.epochs=1"), progress=False, on_change="refuse")
    assert stand_ins["train"] == []
    # ... or trained again (the default), and the students evaluated again
    run_sweep(_plan(tmp_path, "train.epochs=1", "eval.limit=20"), progress=False)
    assert stand_ins["train"] == [str(a), str(a / "round-2"), str(b)]
    assert load_config(a / "train" / "config.yaml").train.epochs == 1
    # the base model's results still hold; the retrained students' do not (their adapters' content is in the key)
    assert stand_ins["eval"][-1] == ["ce_weight=0,rounds=1", "ce_weight=0,rounds=2", "ce_weight=1,rounds=1"]


def test_a_retrained_adapter_is_evaluated_again(tmp_path, stand_ins):
    run_sweep(_plan(tmp_path, rounds=(1,)), progress=False)
    (tmp_path / "sweep" / "ce_weight=1" / "adapter" / "adapter_config.json").write_text("{}")
    stand_ins["eval"].clear()
    run_sweep(_plan(tmp_path, rounds=(1,)), progress=False)
    assert stand_ins["eval"] == [["ce_weight=1"]]


def test_a_sweep_without_results_yet_still_tabulates(tmp_path):
    sweep = build_sweep(_plan(tmp_path, rounds=(1,)))
    assert [r["status"] for r in sweep["rows"]] == ["not evaluated", "not trained", "not trained"]
    assert "no setting was evaluated" in render_text(sweep)


# -- the real thing -------------------------------------------------------------------------------

EVALUATED = 4  # held-out problems per model


def tiny_sweep_overrides(run_dir: Path) -> list[str]:
    # The curation settings of the session's curation run (conftest), so its store is this one's.
    return tiny_curation_overrides(run_dir) + [
        "train.ce_weight=0,1", "train.max_steps=2", "train.batch_size=2", "train.lora.r=8", "train.lora.alpha=16",
        "eval.benchmarks=[synthetic-heldout]", f"eval.limit={EVALUATED}", "eval.n=0", "eval.max_tokens=48",
        # one LoRA engine for base and both students: two engine start-ups fewer than merged copies
        "eval.merge_adapters=false",
    ]


@pytest.mark.slow
def test_sweep_trains_each_setting_on_one_store_and_compares_them(curated_run, tmp_path, ray_session, monkeypatch):
    """Two loss settings on the store of the session's curation run, as `ssb sweep --run-dir` over
    an earlier run's directory uses its store; then the CLI again, which redoes nothing."""
    from ssb.store import LogitStore

    curated_cfg, curated = curated_run
    run_dir = tmp_path / "sweep-run"
    run_dir.mkdir()
    for name in ("config.yaml", "curated"):
        src = Path(curated_cfg.output_dir) / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, run_dir / name)
    shards = sorted(p.name for p in (run_dir / "curated").iterdir())

    plain, axes = split_axes(tiny_sweep_overrides(run_dir))
    sweep = run_sweep(plan_sweep(load_config(None, plain), axes), progress=False)

    # one store, curated once: the sweep's curation found every problem done and added nothing
    assert sorted(p.name for p in (run_dir / "curated").iterdir()) == shards
    assert json.loads((run_dir / "curation_summary.json").read_text())["processed"] == 0
    rows = LogitStore.open(str(run_dir / "curated")).summary()["rows"]
    assert rows == curated.store["rows"] > 0
    names = ["ce_weight=0", "ce_weight=1"]
    for name in names:
        setting = run_dir / "sweep" / name
        assert (setting / "adapter" / "adapter_config.json").exists()
        assert not (setting / "curated").exists()
        trained = load_config(setting / "train" / "config.yaml")
        assert trained.train.store == str((run_dir / "curated").resolve())
        assert json.loads((setting / "train" / "summary.json").read_text())["rows"] == rows
    assert load_config(run_dir / "sweep" / "ce_weight=1" / "train" / "config.yaml").train.ce_weight == 1.0

    got = {r["setting"]: r for r in sweep["rows"]}
    assert list(got) == ["base", *names]
    base = got["base"]["benchmarks"]["synthetic-heldout"]
    for name, r in got.items():
        e = r["benchmarks"]["synthetic-heldout"]
        assert e["n"] == EVALUATED and 0.0 <= e["ci95"][0] <= e["accuracy"] <= e["ci95"][1] <= 1.0
        if name != "base":
            assert r["train"]["steps"] == 2 and r["train"]["final_loss"] > 0 and r["train"]["seconds"] > 0
            assert e["delta"] == pytest.approx(e["accuracy"] - base["accuracy"])
    saved = json.loads((run_dir / "sweep.json").read_text())
    assert [r["setting"] for r in saved["rows"]] == ["base", *names]
    md = (run_dir / "sweep.md").read_text()
    assert all(f"| {name} | " in md for name in ["base", *names]) and "## Which setting" in md
    assert (run_dir / "sweep.png").stat().st_size > 0

    # Again, as a user runs it: everything is reused, nothing trains or evaluates.
    stamps = {p: p.stat().st_mtime_ns for p in [run_dir / "eval" / "results.json",
                                                *(run_dir / "sweep").glob("*/train/summary.json")]}
    done = run_ssb("sweep", *tiny_sweep_overrides(run_dir), timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    # the shared stages said, each in a line, what they reused
    assert "curate: resumes " in done.stdout
    assert done.stdout.count(": reuses the adapter trained with these settings") == 2
    for label in ("base", *names):
        assert f"evaluate {label}: reuses its results on synthetic-heldout, measured with these settings" in done.stdout
    assert "== evaluate" not in done.stdout
    assert "synthetic-heldout: " in done.stdout and f"table: {run_dir}/sweep.md" in done.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
