"""The trained student's per-token KL to the teacher on one kept problem, as training measures it.

The round's base model with its adapter (peft, CPU, float32, loaded once) reads the student
prompt + the teacher's response; the hidden state at position P + t - 1 predicts response
token t (ssb/batching.py), and there KL(teacher ‖ student) is taken over the k + 1 buckets
the loss sees (the stored top-k ids and the tail) at temperature 1, with ssb.loss's own bucket
math. The LM head is applied a chunk of positions at a time, as training does, so a long
answer on a large vocabulary never holds [T, V] logits.

Computed only when asked and kept as JSON at `<round>/inspect/kl/<problem id>.json` with the
adapter's file stamps: a retrained adapter makes the cached values stale, and they are
computed again.
"""

from __future__ import annotations

import json
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from ssb.run_view import LOAD_LOCK, NotFound, RunView
from ssb.store import example_arrays

TEMPERATURE = 1.0
CHUNK_TOKENS = 256
_lock = threading.Lock()  # one model load and one forward at a time: each takes every core anyway


def adapter_stamp(adapter: Path) -> list[list[Any]]:
    """(name, mtime_ns, size) of every file of the adapter: what the cached values depend on."""
    return [[p.name, p.stat().st_mtime_ns, p.stat().st_size] for p in sorted(adapter.iterdir()) if p.is_file()]


@lru_cache(maxsize=1)
def _student(model_path: str, adapter: str, stamp: str) -> Any:  # stamp: a retrained adapter reloads
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter).eval()


def _bucket_kls(model: Any, prompt: list[int], response: list[int], row: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Per response token: KL(teacher ‖ student) over the buckets, and the student's probability
    of the token the teacher wrote."""
    import torch
    import torch.nn.functional as F

    from ssb.loss import bucket_kl

    ids, logprobs, tail = example_arrays(row)
    causal_lm = model.get_base_model()
    decoder = getattr(causal_lm, causal_lm.base_model_prefix)
    head = causal_lm.get_output_embeddings()
    x = torch.tensor([prompt + response[:-1]])  # the last response token predicts nothing
    kls, ps = [], []
    with torch.inference_mode():
        hidden = decoder(input_ids=x, use_cache=False).last_hidden_state[0, len(prompt) - 1:]
        teacher = torch.cat([torch.from_numpy(logprobs), torch.from_numpy(tail)[:, None]], 1).double()
        top = torch.from_numpy(ids)
        target = torch.tensor(response)
        for start in range(0, len(response), CHUNK_TOKENS):
            rows = slice(start, start + CHUNK_TOKENS)
            logs = F.linear(hidden[rows], head.weight, head.bias).float().log_softmax(-1)
            # A packed store's unused slots (-inf) are no bucket: their ids stay in the tail, as in the loss.
            absent = torch.isneginf(teacher[rows, :-1])
            at = logs.gather(1, top[rows])
            log_tail = logs.scatter(1, top[rows], at.masked_fill(~absent, float("-inf"))).logsumexp(-1, keepdim=True)
            student = torch.cat([at.masked_fill(absent, float("-inf")), log_tail], 1).double()
            kl, _ = bucket_kl(student, teacher[rows], TEMPERATURE)
            kls += kl.tolist()
            ps += logs.gather(1, target[rows, None]).squeeze(1).exp().tolist()
    return kls, ps


def _compute(view: RunView, r: int, problem_id: str, stamp: list[list[Any]]) -> dict[str, Any]:
    from ssb.default_model import resolve_model

    cfg = view.config(r)
    if cfg is None:
        raise NotFound(f"round {r} has no loadable config.yaml: the base model under its adapter is unknown")
    row = view.kept_row(r, problem_id)
    adapter = view.round(r).adapter
    try:
        with LOAD_LOCK:
            model = _student(resolve_model(cfg.model.name), str(adapter), json.dumps(stamp))
    except (OSError, ValueError, RuntimeError) as e:  # no weights here, or an adapter of another model
        raise NotFound(f"the student of round {r} cannot be loaded ({cfg.model.name} + {adapter}): {e}") from e
    kls, ps = _bucket_kls(model, list(row["student_prompt_ids"]), list(row["response_ids"]), row)
    text = view.token_text(r)
    tokens = [{"id": int(t), "text": text(t), "kl": round(kl, 6), "p_student": round(p, 6)}
              for t, kl, p in zip(row["response_ids"], kls, ps)]
    return {"problem_id": problem_id, "round": r, "adapter": str(adapter), "adapter_stamp": stamp,
            "model": cfg.model.name, "temperature": TEMPERATURE, "mean_kl": sum(kls) / len(kls) if kls else 0.0,
            "tokens": tokens}


def per_token_kl(view: RunView, r: int, problem_id: str) -> dict[str, Any]:
    """The cached values when the adapter is unchanged, else computed and cached; `cached` says which.
    NotFound for a round without an adapter or a problem that was not kept."""
    lay = view.round(r)
    if not lay.adapter_config.is_file():
        raise NotFound(f"round {r} has no trained adapter ({lay.adapter_config} does not exist): the KL of the "
                       "student to the teacher needs one")
    view.kept_row(r, problem_id)  # NotFound before any model loads
    path = lay.inspect_kl(problem_id)
    stamp = adapter_stamp(lay.adapter)
    with _lock:
        try:
            old = json.loads(path.read_text())
            if old.get("problem_id") == problem_id and old.get("adapter_stamp") == stamp:
                return {**old, "cached": True}
        except (FileNotFoundError, ValueError):
            pass
        result = _compute(view, r, problem_id, stamp)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, path)  # a reader never sees half a file
    return {**result, "cached": False}
