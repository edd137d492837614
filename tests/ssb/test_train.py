"""One worker's distillation loop, without Ray: alignment, masking, bucketing, learning, resuming."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ssb.batching import bucketed, collate, padding_share
from ssb.config import LoraConfig, TrainConfig
from ssb.train import (DistillStudent, TrainState, build_student, load_adapter, load_training_state,
                       local_epochs, make_optimizer, optimizer_steps, run_local, save_checkpoint,
                       train_loop)

VOCAB, K, PAD = 256, 4, 0


def make_row(prompt: list[int], response: list[int], rng: np.random.Generator, k: int = K) -> dict:
    """A stored-row lookalike; the teacher puts its mass on the response token and k-1 others."""
    t = len(response)
    ids = np.stack([np.concatenate([[tok], rng.choice(np.setdiff1d(np.arange(1, VOCAB), [tok]), k - 1,
                                                      replace=False)]) for tok in response])
    probs = np.tile(np.array([0.7] + [0.2 / (k - 1)] * (k - 1)), (t, 1))
    return {"problem_id": f"p{len(prompt)}-{t}", "student_prompt_ids": np.asarray(prompt),
            "response_ids": np.asarray(response), "num_tokens": t,
            "topk_ids": ids.reshape(-1).astype(np.int32), "topk_logprobs": np.log(probs).reshape(-1),
            "tail_logprob": np.full(t, np.log(0.1), dtype=np.float32)}


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        prompt = rng.integers(1, VOCAB, rng.integers(3, 12)).tolist()
        # A learnable response: a run of consecutive ids from a random start.
        start = int(rng.integers(1, VOCAB - 40))
        rows.append(make_row(prompt, list(range(start, start + int(rng.integers(4, 24)))), rng))
    return rows


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=1, bos_token_id=1)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


def tiny_cfg(**overrides) -> TrainConfig:
    base = dict(lora=LoraConfig(r=8, alpha=16), lr=1e-2, batch_size=4, epochs=3, chunk_tokens=16, seed=0)
    return TrainConfig(**{**base, **overrides})


def test_collate_puts_response_token_t_at_position_prompt_plus_t_minus_1():
    rng = np.random.default_rng(0)
    short = make_row([5, 6], [10, 11, 12], rng)
    long = make_row([7, 8, 9, 20], [30, 31, 32, 33], rng)
    batch = collate([short, long], pad_id=PAD)

    assert batch.input_ids.tolist() == [[5, 6, 10, 11, 12, PAD, PAD, PAD], [7, 8, 9, 20, 30, 31, 32, 33]]
    assert batch.attention_mask.tolist() == [[1] * 5 + [0] * 3, [1] * 8]
    # Row 0: P = 2, so positions 1, 2, 3 predict response tokens 0, 1, 2; nothing else is trained.
    assert batch.loss_mask[0].tolist() == [False, True, True, True, False, False, False, False]
    assert batch.target_ids[0, 1:4].tolist() == [10, 11, 12]
    assert batch.loss_mask[1].tolist() == [False, False, False, True, True, True, True, False]
    assert batch.target_ids[1, 3:7].tolist() == [30, 31, 32, 33]
    for row, b, p in ((short, 0, 2), (long, 1, 4)):
        t = row["num_tokens"]
        ids = row["topk_ids"].reshape(t, K)
        assert batch.topk_ids[b, p - 1: p - 1 + t].tolist() == ids.tolist()
        assert torch.allclose(batch.topk_logprobs[b, p - 1: p - 1 + t],
                              torch.from_numpy(row["topk_logprobs"].reshape(t, K)).float())
        # The teacher's top-1 is the token the position must predict.
        assert (batch.topk_ids[b, p - 1: p - 1 + t, 0] == batch.target_ids[b, p - 1: p - 1 + t]).all()
    assert batch.tokens == 7 and batch.input_tokens == 13


def test_student_cross_entropy_equals_the_models_own_shifted_loss(tiny_model):
    """With kl_weight 0, ce_weight 1 the loss is HF's causal-LM loss on response labels:
    the hidden state that predicts response token t is the one HF uses for it."""
    rows = synthetic_rows(3)
    batch = collate(rows, pad_id=PAD)
    cfg = tiny_cfg(kl_weight=0.0, ce_weight=1.0)
    student = build_student(tiny_model, cfg.lora)
    student.eval()
    ours = DistillStudent(student, cfg)(**vars(batch))
    labels = torch.full_like(batch.input_ids, -100)
    for i, row in enumerate(rows):
        p, t = len(row["student_prompt_ids"]), row["num_tokens"]
        labels[i, p: p + t] = torch.as_tensor(row["response_ids"])
    reference = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
    assert ours.tokens == sum(r["num_tokens"] for r in rows)
    assert ours.loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert ours.ce == pytest.approx(reference.item(), rel=1e-5)


def test_length_bucketing_cuts_padding_and_keeps_every_row():
    rng = random.Random(0)
    rows = [{"student_prompt_ids": [1] * 20, "response_ids": [2] * rng.randint(5, 400)} for _ in range(256)]
    plain = list(bucketed(rows, 4, window=1))
    buckets = list(bucketed(rows, 4, window=16, seed=0))
    assert sorted(map(id, (r for b in buckets for r in b))) == sorted(map(id, rows))
    assert padding_share(buckets) < 0.25 * padding_share(plain)
    assert [len(b) for b in buckets] == [4] * 64
    # Seeded: the same order again; another seed, another order.
    again = list(bucketed(rows, 4, window=16, seed=0))
    assert [[id(r) for r in b] for b in again] == [[id(r) for r in b] for b in buckets]
    assert [[id(r) for r in b] for b in bucketed(rows, 4, window=16, seed=1)] != [[id(r) for r in b] for b in buckets]


def test_a_few_steps_lower_the_loss_and_report_every_metric(tiny_model):
    reports: list[dict] = []
    cfg = tiny_cfg(epochs=6, warmup_steps=2)
    student, state = run_local(tiny_model, synthetic_rows(16), cfg, PAD,
                               on_report=lambda m, s, ckpt: reports.append(dict(m)))
    steps = [r for r in reports if r]
    assert state.step == optimizer_steps(16, cfg) == 24
    assert {"loss", "kl", "ce", "tokens", "tokens_per_s", "grad_norm", "lr", "step", "epoch"} <= set(steps[0])
    by_epoch = [np.mean([r["loss"] for r in steps if r["epoch"] == e]) for e in range(cfg.epochs)]
    assert all(b < a for a, b in zip(by_epoch, by_epoch[1:])), by_epoch
    assert by_epoch[-1] < 0.95 * by_epoch[0], by_epoch
    assert steps[0]["lr"] < steps[2]["lr"]  # warm-up, then linear decay towards 0
    assert steps[-1]["lr"] < steps[2]["lr"]
    # Only the LoRA adapters train.
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_resuming_from_a_checkpoint_matches_an_uninterrupted_run(tiny_model, tmp_path):
    rows, cfg = synthetic_rows(12), tiny_cfg(epochs=2, checkpoint_every=2, grad_accum=2, batch_size=2)
    total = optimizer_steps(len(rows), cfg)
    epochs = local_epochs(rows, cfg, PAD)

    def fresh():
        student = build_student(tiny_model, cfg.lora, seed=cfg.seed)
        module = DistillStudent(student, cfg)
        return (student, module, *make_optimizer(module, cfg, total))

    student, module, opt, sched = fresh()
    train_loop(module, opt, sched, epochs, cfg, TrainState(), device=torch.device("cpu"))
    expected = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}

    class Crash(Exception):
        pass

    def crash_after_step_4(metrics, state, checkpoint):
        if checkpoint and state.step == 4:  # step 4 is mid-epoch 1: batch position matters
            save_checkpoint(tmp_path, student, opt, sched, state)
            raise Crash

    student, module, opt, sched = fresh()
    with pytest.raises(Crash):
        train_loop(module, opt, sched, epochs, cfg, TrainState(), device=torch.device("cpu"),
                   on_report=crash_after_step_4)
    student, module, opt, sched = fresh()
    load_adapter(tmp_path, student)
    state = load_training_state(tmp_path, opt, sched)
    assert (state.step, state.epoch, state.batch) == (4, 1, 2)
    state = train_loop(module, opt, sched, epochs, cfg, state, device=torch.device("cpu"))
    assert state.step == total
    for name, p in student.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_training(tiny_model):
    rows = synthetic_rows(8)
    trained = []
    for checkpointing in (False, True):
        cfg = tiny_cfg(epochs=1, gradient_checkpointing=checkpointing)
        student, _ = run_local(tiny_model, rows, cfg, PAD)
        trained.append({n: p.detach() for n, p in student.named_parameters() if p.requires_grad})
    for name, value in trained[0].items():
        torch.testing.assert_close(trained[1][name], value, rtol=1e-4, atol=1e-6)
