import pytest
from pydantic import ValidationError

from ssb.config import dump_config, key_digest, load_config


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
    assert base.curation_hash() == key_digest(base.curation_key())  # what the store's manifest records


def test_the_train_key_tracks_what_an_adapter_learns_from():
    base = load_config()
    key = base.train_key("store-a")
    for how in ("train.log_every=5", "train.checkpoint_every=3", "train.max_failures=0", "eval.limit=3",
                "curate.shard_rows=2", "train.store=/elsewhere"):
        assert load_config(None, [how]).train_key("store-a") == key, how
    for what in ("train.lr=1e-4", "train.lora.r=8", "train.max_steps=2", "train.ce_weight=1", "model.name=other"):
        assert load_config(None, [what]).train_key("store-a") != key, what
    assert base.train_key("store-b") != key  # the store's content counts, not its path


def test_the_eval_key_tracks_what_a_result_measured(tmp_path):
    base = load_config()
    bench = {"source": "synthetic"}
    key = base.eval_key(None, bench)
    for how in ("eval.merge_adapters=true", "eval.diagnostics=false", "engine.replicas=2", "train.lr=1e-4",
                "verify.workers=4", "curate.rollout.n=2"):
        assert load_config(None, [how]).eval_key(None, bench) == key, how
    for what in ("eval.limit=50", "eval.n=8", "eval.max_tokens=64", "prompts.tutor_system=Be brief.",
                 "verify.fallbacks=[gsm8k]", "engine.seed=1", "model.name=other"):
        assert load_config(None, [what]).eval_key(None, bench) != key, what
    assert base.eval_key("adapter-digest", bench) != key and base.eval_key(None, {"source": "svamp"}) != key
    # a greedy-only pass over given problems: the sampling of the benchmarks' samples does not count
    assert load_config(None, ["eval.n=8", "eval.limit=3"]).eval_key(None, bench, samples=False) == \
        base.eval_key(None, bench, samples=False)


def test_a_local_models_key_follows_its_files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = load_config(None, [f"model.name={model}"])
    before = cfg.model_key()
    assert before["files"] is not None and cfg.model_key() == before
    (model / "config.json").write_text('{"layers": 2}')
    assert cfg.model_key() != before
    assert load_config().model_key()["files"] is None  # the embedded default: its name says it


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("curate.rollout.n=0", "curate.rollout.n"),
        ("curate.rollout.n=-3", "curate.rollout.n"),
        ("curate.rollout.n=true", "curate.rollout.n"),
        ("curate.rollout.temperature=-5", "curate.rollout.temperature"),
        ("curate.teacher.top_p=0", "curate.teacher.top_p"),
        ("curate.teacher.top_p=1.5", "curate.teacher.top_p"),
        ("curate.top_k=0", "curate.top_k"),
        ("curate.shard_rows=0", "curate.shard_rows"),
        ("data.limit=-1", "data.limit"),
        ("data.limit=0", "data.limit"),
        ("data.synthetic.n=0", "data.synthetic.n"),
        ("engine.batch_size=0", "engine.batch_size"),
        ("engine.replicas=0", "engine.replicas"),
        ("engine.gpu_memory_utilization=1.5", "engine.gpu_memory_utilization"),
        ("engine.cpu_kvcache_gb=0", "engine.cpu_kvcache_gb"),
        ("verify.timeout_s=0", "verify.timeout_s"),
        ("verify.workers=0", "verify.workers"),
        ("prompts.rollout_shots=-1", "prompts.rollout_shots"),
        ("train.lr=0", "train.lr"),
        ("train.epochs=0", "train.epochs"),
        ("train.temperature=0", "train.temperature"),
        ("train.lora.dropout=1", "train.lora.dropout"),
        ("train.max_grad_norm=0", "train.max_grad_norm"),
        ("train.max_failures=-2", "train.max_failures"),
        ("train.strategy=zero3", "train.strategy"),
        ("train.max_steps=0", "train.max_steps"),
        ("eval.n=-1", "eval.n"),
        ("eval.limit=0", "eval.limit"),
        ("ray.object_store_memory=1000", "ray.object_store_memory"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_setting(override, field):
    with pytest.raises(ValidationError) as err:
        load_config(None, [override])
    assert [".".join(map(str, e["loc"])) for e in err.value.errors()] == [field]


def test_limits_that_mean_something_stay_allowed():
    cfg = load_config(None, ["eval.n=0", "train.num_workers=0", "train.max_failures=-1", "curate.rollout.temperature=0",
                             "train.kl_weight=0", "train.ce_weight=1", "prompts.rollout_shots=0"])
    assert (cfg.eval.n, cfg.train.num_workers, cfg.train.max_failures, cfg.curate.rollout.temperature) == (0, 0, -1, 0)
    with pytest.raises(ValidationError, match="no loss"):
        load_config(None, ["train.kl_weight=0"])


def test_config_file_errors_are_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file .*nope.yaml.* does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("curate:\n  rollout: {n: 2\n")
    with pytest.raises(ValueError, match=r"bad.yaml: not valid YAML at line 3") as err:
        load_config(bad)
    assert "\n" not in str(err.value)
    # An override that is not YAML is text: a prompt may hold anything.
    assert load_config(None, ["prompts.tutor_system=Solve: {x"]).prompts.tutor_system == "Solve: {x"
