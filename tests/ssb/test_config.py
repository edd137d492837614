import pytest
from pydantic import ValidationError

from ssb.config import dump_config, load_config


def test_defaults_follow_the_paper():
    cfg = load_config()
    assert (cfg.train.lora.r, cfg.train.lora.alpha, cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == (32, 32, 2e-4, 4, 3)
    assert cfg.train.temperature == 2.0 and cfg.curate.teacher.temperature == 0.4
    assert set(cfg.train.lora.target_modules) >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\ncurate:\n  rollout: {n: 2}\n")
    cfg = load_config(path, ["curate.rollout.n=6", "model.name=Qwen/Qwen2.5-3B-Instruct", "eval.benchmarks=[math500]"])
    assert cfg.name == "x" and cfg.curate.rollout.n == 6 and cfg.model.name == "Qwen/Qwen2.5-3B-Instruct"
    assert cfg.eval.benchmarks == ["math500"]
    assert cfg.curate.rollout.temperature == 0.8  # untouched defaults stay
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(dump_config(cfg))
    assert load_config(resolved) == cfg  # a run's written config reproduces it


def test_a_partial_override_keeps_the_sections_other_defaults(tmp_path):
    cfg = load_config(None, ["curate.teacher.n=4"])
    assert (cfg.curate.teacher.n, cfg.curate.teacher.temperature) == (4, 0.4)
    path = tmp_path / "run.yaml"
    path.write_text("curate:\n  teacher: {max_tokens: 99}\n")
    assert load_config(path).curate.teacher.temperature == 0.4


def test_typos_fail_loudly(tmp_path):
    with pytest.raises(ValidationError):
        load_config(None, ["curate.rolout.n=2"])
    with pytest.raises(ValueError, match="key.path=value"):
        load_config(None, ["curate.rollout.n"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(bad)


def test_curation_hash_tracks_what_examples_depend_on():
    base = load_config()
    assert base.curation_hash() == load_config(None, ["curate.shard_rows=7", "train.lr=1e-3"]).curation_hash()
    assert base.curation_hash() != load_config(None, ["curate.top_k=10"]).curation_hash()
    assert base.curation_hash() != load_config(None, ["model.name=other"]).curation_hash()
