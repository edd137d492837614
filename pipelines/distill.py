"""Distillation job: the curated logit store → Ray Train workers → a LoRA adapter.

    ssb train --run-dir runs/demo                 # trains on runs/demo/curated
    ssb train --run-dir runs/demo --resume        # continues a stopped run from its last checkpoint

1. Check the store: made with this student's model and tokenizer, every shard's checksum
   matches the manifest, and it holds rows. Anything else is refused before Ray starts.
2. Ray Data reads the manifest's shards, each checked against the manifest again as it is
   read (only the training columns; once, into the object store, when the store is small):
   what trains is the bytes that were verified, even if a file changes after step 1. Ray
   Train splits them evenly between `train.num_workers` workers (`get_dataset_shard("train")`).
3. Each worker runs ssb.train's loop on a DDP-wrapped student (FSDP with
   `train.strategy: fsdp`, GPU only: best effort, not exercised on the CPU test box).
   Every `log_every` steps the metrics go through `ray.train.report` and rank 0 appends them
   to <run_dir>/train/metrics.jsonl (and to train/tensorboard when tensorboardX is
   installed); every `checkpoint_every` steps (0: each epoch end) the adapter, optimizer,
   scheduler and data position go into a Ray Train checkpoint under <run_dir>/train/ray/.
   A worker that dies restarts the group (`train.max_failures` times) from the latest
   checkpoint; `--resume` does the same for a stopped run. `train.num_workers=0` runs one
   worker in this process (Ray Train's local mode: quick to debug, no restarts).
4. The final checkpoint's adapter is copied to <run_dir>/adapter/ (peft format: loads in
   `PeftModel.from_pretrained` and as a vLLM `LoRARequest`), and with `train.merge` a
   merged full model goes to <run_dir>/merged/.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from ssb.batching import TRAIN_COLUMNS, bucketed, collate, rows_of
from ssb.config import RunConfig, TrainConfig, dump_config
from ssb.default_model import resolve_model
from ssb.layout import EXPERIMENT, RunLayout
from ssb.prompts import tokenizer_fingerprint
from ssb.store import LogitStore, Shard, StoreError
from ssb.train import (ADAPTER_DIR, BUCKET_WINDOW, DistillStudent, TrainState, build_student, default_device,
                       load_adapter, load_training_state, make_optimizer, optimizer_steps, save_checkpoint,
                       train_loop)

from pipelines.curate import model_identity
from pipelines.merged import merge_adapter

log = logging.getLogger(__name__)

# Stores up to this size (Parquet bytes) are read once into Ray's object store: streaming
# the shards again costs ~8 s at each epoch start on a small box (measured), far more than
# a short epoch. Larger stores stream from their files every epoch.
MATERIALIZE_BYTES = 256 * 2**20


@dataclass
class DistillSummary:
    steps: int = 0
    epochs: int = 0
    rows: int = 0
    resumed_from_step: int | None = None
    final_metrics: dict[str, Any] = field(default_factory=dict)
    adapter_dir: str = ""
    merged_dir: str | None = None
    metrics_path: str = ""
    wall_seconds: float = 0.0

    def table(self) -> str:
        m = self.final_metrics
        lines = [f"rows              {self.rows}",
                 f"steps             {self.steps} (train.epochs={self.epochs})"]
        if m:
            lines.append(f"last step         loss {m.get('loss', 0):.4f}  kl {m.get('kl', 0):.4f}  "
                         f"ce {m.get('ce', 0):.4f}  {m.get('tokens_per_s', 0):.0f} tok/s")
        lines += [f"adapter           {self.adapter_dir}", f"metrics           {self.metrics_path}",
                  f"wall time         {self.wall_seconds:.1f} s"]
        if self.merged_dir:
            lines.insert(-1, f"merged model      {self.merged_dir}")
        return "\n".join(lines)


def store_uri(cfg: RunConfig) -> str:
    return cfg.train.store or cfg.store_dir


def _open_for_model(cfg: RunConfig) -> LogitStore:
    store = LogitStore.open(store_uri(cfg))
    made, student = store.manifest.get("model"), model_identity(cfg.model.name)
    if made != student:
        raise StoreError(f"store at {store.uri} was curated with model {made!r}, but the student is "
                         f"{student!r}: train the model the store was made with (model.name={made}) "
                         "or curate again for this one")
    return store


def open_checked_store(cfg: RunConfig, tokenizer: Any) -> LogitStore:
    """The store to train on, or StoreError: missing, empty, another model or tokenizer,
    or a shard whose bytes differ from the manifest (named)."""
    store = _open_for_model(cfg)
    made, student_tok = store.manifest, tokenizer_fingerprint(tokenizer)
    if made.get("tokenizer") != student_tok:
        raise StoreError(f"store at {store.uri} was curated with tokenizer {made.get('tokenizer')!r}, but "
                         f"the student's tokenizer is {student_tok!r}: its token ids mean other tokens")
    store.verify()
    return store


def _fsdp_kwargs(student: Any) -> dict[str, Any]:
    """One FSDP unit per decoder layer; use_orig_params so the frozen base and the LoRA
    weights can share a flat parameter."""
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    causal_lm = student.get_base_model()
    layers = getattr(causal_lm, causal_lm.base_model_prefix).layers
    policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={type(layers[0])})
    return {"auto_wrap_policy": policy, "use_orig_params": True}


def _fsdp_states(module: Any, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full adapter and optimizer state gathered from the shards (every rank must call)."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                              FullStateDictConfig(offload_to_cpu=True, rank0_only=True),
                              FullOptimStateDictConfig(offload_to_cpu=True, rank0_only=False)):
        full = module.state_dict()
        optim = FSDP.optim_state_dict(module, optimizer)
    prefix = "peft_model."
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}, optim


def train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: ssb.train's loop with Ray's data, reporting and checkpoints."""
    import ray.train
    import ray.train.torch
    import torch

    cfg = TrainConfig.model_validate(config["train"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    layout = RunLayout(config["run_dir"]) if config["run_dir"] else None
    if not cfg.use_gpu:
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))  # Ray's OMP default may be 1
    device = ray.train.torch.get_device() if cfg.use_gpu else default_device(False)
    fsdp = cfg.strategy == "fsdp"

    student = build_student(config["model_path"], cfg.lora, device=device,
                            gradient_checkpointing=cfg.gradient_checkpointing, seed=cfg.seed)
    checkpoint = ray.train.get_checkpoint()
    ckpt_dir = None
    if checkpoint is not None:
        ckpt_dir = checkpoint.to_directory()  # local copy; loaded below, before and after wrapping
        load_adapter(ckpt_dir, student)
    module = ray.train.torch.prepare_model(
        DistillStudent(student, cfg), parallel_strategy="fsdp" if fsdp else "ddp",
        parallel_strategy_kwargs=_fsdp_kwargs(student) if fsdp else None)
    optimizer, scheduler = make_optimizer(module, cfg, config["total_steps"])
    state = TrainState()
    if ckpt_dir is not None:
        state = _resume(ckpt_dir, module, optimizer, scheduler, fsdp=fsdp)
        if rank == 0:
            log.warning("resuming from step %d (epoch %d, batch %d)", state.step, state.epoch, state.batch)
            append_metrics(layout, {"event": "resumed", **asdict(state)})

    shard = ray.train.get_dataset_shard("train")

    def epoch_batches(epoch: int):
        seed = cfg.seed + epoch
        chunks = shard.iter_batches(batch_size=cfg.batch_size * BUCKET_WINDOW, batch_format="numpy",
                                    local_shuffle_buffer_size=cfg.batch_size * BUCKET_WINDOW,
                                    local_shuffle_seed=seed)
        rows = chain.from_iterable(rows_of(chunk) for chunk in chunks)
        for group in bucketed(rows, cfg.batch_size, window=BUCKET_WINDOW, seed=seed):
            yield collate(group, config["pad_id"])

    last_logged = state.step
    board = _tensorboard(layout) if rank == 0 else None

    def on_report(metrics: dict[str, float], state: TrainState, save: bool) -> None:
        nonlocal last_logged
        if rank == 0 and metrics and metrics["step"] > last_logged:
            append_metrics(layout, metrics)
            last_logged = metrics["step"]
            if board is not None:
                for key in ("loss", "kl", "ce", "tokens_per_s", "grad_norm", "lr"):
                    board.add_scalar(f"train/{key}", metrics[key], metrics["step"])
                board.flush()
            print(f"step {metrics['step']}/{config['total_steps']} epoch {metrics['epoch']} "
                  f"loss {metrics['loss']:.4f} kl {metrics['kl']:.4f} ce {metrics['ce']:.4f} "
                  f"{metrics['tokens_per_s']:.0f} tok/s lr {metrics['lr']:.2e}", flush=True)
        if not save:
            ray.train.report(dict(metrics))
            return
        adapter_state, optim_state = _fsdp_states(module, optimizer) if fsdp else (None, None)
        with _staging(layout, config["local_mode"], state.step) as tmp:
            if rank == 0:  # DDP replicas are identical; FSDP gathered the full state on rank 0
                save_checkpoint(tmp, student, optimizer, scheduler, state, adapter_state, optim_state)
                ray.train.report({**metrics, **asdict(state)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report({**metrics, **asdict(state)})

    train_loop(module, optimizer, scheduler, epoch_batches, cfg, state, device=device, on_report=on_report)


def _resume(ckpt_dir: str, module: Any, optimizer: Any, scheduler: Any, *, fsdp: bool) -> TrainState:
    """The optimizer, scheduler and data position of a checkpoint (its local copy, removed
    once read); FSDP's optimizer state is resharded onto this rank's shards."""
    load_optim = None
    if fsdp:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        load_optim = lambda osd: optimizer.load_state_dict(  # noqa: E731
            FSDP.optim_state_dict_to_load(module, optimizer, osd))
    state = load_training_state(ckpt_dir, optimizer, scheduler, load_optim)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return state


def _staging(layout: RunLayout | None, local_mode: bool, step: int) -> Any:
    """Where a checkpoint is written before Ray Train persists it. With num_workers=0 (Ray
    Train's local mode: one in-process worker, for debugging) nothing is copied, so it
    must outlive the report."""
    if local_mode and layout is not None:
        path = layout.local_checkpoint(step)
        path.mkdir(parents=True, exist_ok=True)
        return nullcontext(str(path))
    return tempfile.TemporaryDirectory()


def _tensorboard(layout: RunLayout | None) -> Any:
    """A TensorBoard writer into <run_dir>/train/tensorboard when tensorboardX is installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(layout.train_tensorboard)) if layout is not None else None


def append_metrics(layout: RunLayout | None, record: dict[str, Any]) -> None:
    """One line of train/metrics.jsonl (rank 0 only)."""
    if layout is None:  # a remote run directory: metrics only in Ray's results
        return
    layout.train.mkdir(parents=True, exist_ok=True)
    with open(layout.train_metrics, "a") as f:
        f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def _read_verified(shard: Shard, columns: list[str]) -> list[Any]:
    return [shard.read_table(columns)]


def verified_dataset(store: LogitStore, columns: list[str]) -> Any:
    """Ray Data over the store's shards in commit order, one read task per shard, each
    parsing only the bytes it has checked against the manifest (size, sha256, rows)."""
    import ray.data
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    shards = store.shards()

    class VerifiedShards(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(shard.entry["bytes"] for shard in shards)  # on disk: a lower bound

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            return [ReadTask(functools.partial(_read_verified, shard, columns),
                             BlockMetadata(num_rows=shard.rows, size_bytes=shard.entry["bytes"], exec_stats=None,
                                           input_files=[shard.path]),
                             per_task_row_limit=per_task_row_limit)
                    for shard in shards]

    return ray.data.read_datasource(VerifiedShards())


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = RunLayout(run_dir).train_metrics
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class _Setup:
    """What a training run starts from, checked before Ray starts (see `_set_up`)."""
    model_path: str
    pad_id: int
    store: LogitStore
    rows: int
    layout: RunLayout | None  # None: a remote run directory (see `_run_directory`)
    storage: str  # where Ray Train keeps the checkpoints


def run_distillation(cfg: RunConfig, *, resume: bool = False) -> DistillSummary:
    start = time.perf_counter()
    setup = _set_up(cfg, resume)
    result = _fit(cfg, setup)
    return _finish(cfg, setup, result, start)


def _set_up(cfg: RunConfig, resume: bool) -> _Setup:
    """The checked store, the student's tokenizer and the run directory (module doc, step 1)."""
    from transformers import AutoTokenizer

    t = cfg.train
    if t.strategy not in ("ddp", "fsdp"):
        raise ValueError(f"train.strategy {t.strategy!r}: expected 'ddp' or 'fsdp'")
    if t.strategy == "fsdp" and not t.use_gpu:
        raise ValueError("train.strategy fsdp needs GPUs (train.use_gpu=true); use ddp on CPU")
    _open_for_model(cfg)  # refuse another model's store before downloading or converting this one
    model_path = resolve_model(cfg.model.name)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    store = open_checked_store(cfg, tokenizer)
    chosen_at = (store.manifest.get("encoding") or {}).get("temperature")
    if chosen_at is not None and t.temperature > chosen_at:
        # The store kept each position's entries for their worth at chosen_at; the merged ones cost more above it.
        log.warning("train.temperature=%g is above the %g the store chose its entries for (curate.store.temperature): "
                    "the stored distribution's error bound does not hold there", t.temperature, chosen_at)
    rows = store.summary()["rows"]
    layout, storage = _run_directory(cfg, resume)
    workers = max(t.num_workers, 1)
    if rows < workers:
        raise StoreError(f"store at {store.uri} has {rows} rows: fewer than the {workers} workers")
    return _Setup(model_path, pad_id, store, rows, layout, storage)


def _run_directory(cfg: RunConfig, resume: bool) -> tuple[RunLayout | None, str]:
    """The run directory's layout, and where Ray Train keeps its checkpoints. A remote run
    directory keeps the checkpoints (Ray Train writes through pyarrow) but none of the files
    written here with local file operations: its layout is None."""
    layout = None if cfg.layout.remote else RunLayout(Path(cfg.output_dir).resolve())
    if layout is None:
        storage = cfg.layout.train_ray
        log.warning("run directory %s is remote: Ray Train's checkpoints go to %s, but train/metrics.jsonl, "
                    "train/summary.json and train/config.yaml are not written and the adapter goes to a local "
                    "temporary directory (a local or shared-filesystem run directory keeps them all)",
                    cfg.output_dir, storage)
        return None, storage
    experiment = layout.train_experiment
    if experiment.exists() and not resume:
        raise ValueError(f"a training run already exists in {experiment}: pass --resume to continue it, "
                         "or remove it (or use another run directory) to start over")
    if resume and not experiment.exists():
        raise ValueError(f"nothing to resume: no training run in {experiment}")
    layout.train.mkdir(parents=True, exist_ok=True)
    layout.train_config.write_text(dump_config(cfg))
    return layout, layout.train_ray


def _fit(cfg: RunConfig, setup: _Setup) -> Any:
    """Ray Train's result of training on the store (module doc, steps 2 and 3)."""
    import ray.data
    from ray.train import FailureConfig, LoggingConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.ray_setup import init_ray, quiet_data_context

    t, layout = cfg.train, setup.layout
    init_ray(cfg.ray)
    quiet_data_context()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the same order again on resume: the data position holds
    dataset = verified_dataset(setup.store, TRAIN_COLUMNS)
    if setup.store.summary()["bytes"] <= MATERIALIZE_BYTES:
        dataset = dataset.materialize()

    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"train": t.model_dump(mode="json"), "model_path": setup.model_path, "pad_id": setup.pad_id,
                           "total_steps": optimizer_steps(setup.rows, t, max(t.num_workers, 1)),
                           "run_dir": layout.root if layout is not None else None, "local_mode": t.num_workers == 0},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"GPU": 1, "CPU": t.cpus_per_worker} if t.use_gpu
                                     else {"CPU": t.cpus_per_worker}),
        run_config=RayRunConfig(storage_path=setup.storage, name=EXPERIMENT,
                                failure_config=FailureConfig(max_failures=t.max_failures),
                                # Ray Train logs every report at INFO; our progress line is enough.
                                logging_config=LoggingConfig(log_level="WARNING")),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise RuntimeError("training ended without a checkpoint")
    return result


def _finish(cfg: RunConfig, setup: _Setup, result: Any, start: float) -> DistillSummary:
    """The final checkpoint's adapter (and merged model) in place, and the run's summary (module doc, step 4)."""
    t, layout = cfg.train, setup.layout
    summary = DistillSummary(rows=setup.rows, final_metrics=dict(result.metrics or {}),
                             metrics_path=str(layout.train_metrics) if layout is not None else "")
    summary.steps = int(summary.final_metrics.get("step", 0))
    summary.epochs = t.epochs
    # A remote run directory's adapter and merged model go to a local stand-in run directory.
    outputs = layout or RunLayout(tempfile.mkdtemp())
    adapter_dir = outputs.adapter
    with result.checkpoint.as_directory() as ckpt:
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        shutil.copytree(Path(ckpt) / ADAPTER_DIR, adapter_dir)
    summary.adapter_dir = str(adapter_dir)
    if layout is not None:
        resumed = [m for m in read_metrics(layout.root) if m.get("event") == "resumed"]
        summary.resumed_from_step = resumed[-1]["step"] if resumed else None
    if t.merge:
        summary.merged_dir = str(merge_adapter(setup.model_path, adapter_dir, outputs.merged))
    summary.wall_seconds = time.perf_counter() - start
    if layout is not None:
        layout.train_summary.write_text(json.dumps(asdict(summary), indent=2, default=str))
    return summary
