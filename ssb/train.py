"""One worker's distillation loop: a LoRA student learns the teacher's stored top-k log-probs.

Ray-free (pipelines/distill.py runs it under Ray Train; `run_local` runs it in this process):

    student = build_student(model_path, cfg.lora, device=...)     # peft LoRA on every projection
    module = DistillStudent(student, cfg)                           # decoder + chunked top-k KL
    optimizer, scheduler = make_optimizer(module, cfg, total_steps) # AdamW, warm-up + linear decay
    train_loop(module, optimizer, scheduler, epoch_batches, cfg, state, on_report=...)

The model never computes the [tokens, vocab] logits: DistillStudent runs the decoder for
the final hidden states and hands them with the LM head's weight to ssb.loss.topk_kl_loss,
which applies the head chunk by chunk on the response positions only.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssb.batching import Batch, Row, bucketed, collate
from ssb.config import LoraConfig, TrainConfig
from ssb.layout import CHECKPOINT_ADAPTER, CHECKPOINT_STATE
from ssb.loss import LossOutput, topk_kl_loss

BUCKET_WINDOW = 16  # batches sorted by length together (ssb.batching.bucketed)


def default_device(use_gpu: bool) -> torch.device:
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def model_dtype(device: torch.device) -> torch.dtype:
    # bf16 on GPU; CPU training stays fp32 (bf16 matmuls without AMX are slow and lossy).
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_student(model_path: str, lora: LoraConfig, *, device: torch.device | str = "cpu",
                  gradient_checkpointing: bool = False, seed: int = 0) -> Any:
    """The base model with fresh LoRA adapters on `lora.target_modules`; only those train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=model_dtype(device))
    base.config.use_cache = False
    if gradient_checkpointing:
        # Non-reentrant: the reentrant variant loses LoRA gradients under DDP.
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(seed)  # the same LoRA init on every rank (DDP broadcasts rank 0's anyway)
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, peft_cfg).to(device)


class DistillStudent(nn.Module):
    """The student's decoder and the chunked loss in one forward, so DDP/FSDP wrap both.

    forward(**batch) returns a LossOutput. The loss runs inside forward because under FSDP
    the (tied) LM head weight is only whole during the wrapped module's forward; the loss
    computes its gradients there, so backward never needs the weight again.
    """

    def __init__(self, peft_model: nn.Module, cfg: TrainConfig):
        super().__init__()
        self.peft_model = peft_model
        self.loss_kwargs = dict(temperature=cfg.temperature, kl_weight=cfg.kl_weight,
                                ce_weight=cfg.ce_weight, chunk_tokens=cfg.chunk_tokens)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target_ids: torch.Tensor,
                loss_mask: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                tail_logprob: torch.Tensor) -> LossOutput:
        causal_lm = self.peft_model.get_base_model()
        decoder = getattr(causal_lm, causal_lm.base_model_prefix)  # LlamaModel: no LM head applied
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        head = causal_lm.get_output_embeddings()
        return topk_kl_loss(hidden, head.weight, topk_ids, topk_logprobs, tail_logprob, target_ids,
                            loss_mask, bias=head.bias, **self.loss_kwargs)


def optimizer_steps(rows: int, cfg: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps of the whole run: each rank sees rows // world_size rows an epoch."""
    batches = math.ceil((rows // world_size) / cfg.batch_size)
    total = math.ceil(batches / cfg.grad_accum) * cfg.epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def make_optimizer(module: nn.Module, cfg: TrainConfig, total_steps: int) -> tuple[Any, Any]:
    """AdamW on the trainable (LoRA) parameters; linear warm-up, then linear decay to 0."""
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - cfg.warmup_steps))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint. `batch` counts micro-batches already
    trained on in epoch `epoch` (the data position a resumed run skips to)."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t.tolist()


# on_report(metrics, state, checkpoint): called on every rank at the same steps (a barrier
# under Ray Train) when metrics are due (every log_every steps) or a checkpoint is.
Report = Callable[[dict[str, float], TrainState, bool], None]


def train_loop(module: nn.Module, optimizer: Any, scheduler: Any,
               epoch_batches: Callable[[int], Iterable[Batch]], cfg: TrainConfig, state: TrainState, *,
               device: torch.device, on_report: Report | None = None) -> TrainState:
    """Runs epochs state.epoch .. cfg.epochs-1 (or until cfg.max_steps), from `state` on."""
    params = [p for p in module.parameters() if p.requires_grad]
    report = on_report or (lambda metrics, state, checkpoint: None)
    module.train()
    last_saved, metrics = state.step, {}
    tick = time.perf_counter()
    done = lambda: bool(cfg.max_steps) and state.step >= cfg.max_steps  # noqa: E731
    while state.epoch < cfg.epochs and not done():
        batches = iter(epoch_batches(state.epoch))
        for _ in islice(batches, state.batch):  # resumed mid-epoch: skip what was trained on
            pass
        while not done():
            micro = list(islice(batches, cfg.grad_accum))
            if not micro:
                break
            loss_sum = kl_sum = ce_sum = tokens = input_tokens = 0.0
            for i, batch in enumerate(micro):
                # Under DDP only the last micro-batch all-reduces the gradients.
                last = i == len(micro) - 1
                sync = nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()
                with sync:
                    out: LossOutput = module(**vars(batch.to(device)))
                    (out.loss / len(micro)).backward()
                loss_sum += out.loss.item() * out.tokens
                kl_sum += out.kl * out.tokens
                ce_sum += out.ce * out.tokens
                tokens += out.tokens
                input_tokens += batch.input_tokens
            clip = getattr(module, "clip_grad_norm_", None)  # FSDP's sharded-aware clipping
            grad_norm = clip(cfg.max_grad_norm) if clip else nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch += len(micro)
            # Token-weighted means and totals over all ranks; time includes waiting for data.
            loss_sum, kl_sum, ce_sum, tokens, input_tokens = _all_reduce_sum(
                [loss_sum, kl_sum, ce_sum, tokens, input_tokens], device)
            now = time.perf_counter()
            n = max(tokens, 1.0)
            metrics = {"step": state.step, "epoch": state.epoch, "loss": loss_sum / n, "kl": kl_sum / n,
                       "ce": ce_sum / n, "tokens": int(tokens), "input_tokens": int(input_tokens),
                       "tokens_per_s": input_tokens / (now - tick), "grad_norm": float(grad_norm), "lr": lr}
            tick = now
            save = bool(cfg.checkpoint_every) and state.step % cfg.checkpoint_every == 0
            if save or state.step % cfg.log_every == 0:
                report(metrics, state, save)
                last_saved = state.step if save else last_saved
        if state.batch and not done():  # a whole epoch went through (not a max_steps stop)
            state.epoch, state.batch = state.epoch + 1, 0
            if not cfg.checkpoint_every and state.epoch < cfg.epochs:
                report(metrics, state, True)
                last_saved = state.step
        elif not state.batch:
            raise RuntimeError(f"epoch {state.epoch} yielded no batches: nothing to train on")
    if state.step != last_saved or not metrics:  # the end is always checkpointed
        report(metrics, state, True)
    return state


# -- checkpoints (Ray-free; pipelines/distill.py puts them in Ray Train checkpoints) --------

ADAPTER_DIR, STATE_FILE = CHECKPOINT_ADAPTER, CHECKPOINT_STATE


def save_checkpoint(directory: str | Path, peft_model: Any, optimizer: Any, scheduler: Any,
                    state: TrainState, adapter_state: dict[str, torch.Tensor] | None = None,
                    optimizer_state: dict[str, Any] | None = None) -> None:
    """adapter/ in peft format, plus optimizer, scheduler and TrainState in one file.
    FSDP callers pass the gathered `adapter_state` / `optimizer_state`."""
    directory = Path(directory)
    peft_model.save_pretrained(directory / ADAPTER_DIR, state_dict=adapter_state)
    torch.save({"optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "state": asdict(state)}, directory / STATE_FILE)


def load_adapter(directory: str | Path, peft_model: Any) -> None:
    """The checkpoint's LoRA weights into `peft_model` (before DDP/FSDP wrap it)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(Path(directory) / ADAPTER_DIR / "adapter_model.safetensors")
    set_peft_model_state_dict(peft_model, weights)


def load_training_state(directory: str | Path, optimizer: Any, scheduler: Any,
                        load_optimizer: Callable[[dict[str, Any]], None] | None = None) -> TrainState:
    """Optimizer and scheduler state (after the optimizer is built) and where the run was."""
    # weights_only: a checkpoint may come from anywhere; full unpickling would run its code.
    saved = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
    (load_optimizer or optimizer.load_state_dict)(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return TrainState(**saved["state"])


# -- a whole run in this process (benchmarks, tests, debugging) ---------------------------

def local_epochs(rows: Sequence[Row], cfg: TrainConfig, pad_id: int) -> Callable[[int], Iterable[Batch]]:
    """Per epoch: the rows in a seeded order, length-bucketed, collated."""

    def epoch_batches(epoch: int) -> Iterable[Batch]:
        order = list(rows)
        random.Random(cfg.seed + epoch).shuffle(order)
        for group in bucketed(order, cfg.batch_size, window=BUCKET_WINDOW, seed=cfg.seed + epoch):
            yield collate(group, pad_id)

    return epoch_batches


def run_local(model_path: str, rows: Sequence[Row], cfg: TrainConfig, pad_id: int, *,
              device: torch.device | None = None, on_report: Report | None = None) -> tuple[Any, TrainState]:
    """The same recipe without Ray: returns the trained peft model and the final state."""
    device = device or default_device(cfg.use_gpu)
    student = build_student(model_path, cfg.lora, device=device,
                            gradient_checkpointing=cfg.gradient_checkpointing, seed=cfg.seed)
    module = DistillStudent(student, cfg)
    optimizer, scheduler = make_optimizer(module, cfg, optimizer_steps(len(rows), cfg))
    state = train_loop(module, optimizer, scheduler, local_epochs(rows, cfg, pad_id), cfg, TrainState(),
                       device=device, on_report=on_report)
    return student, state
