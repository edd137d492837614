"""The curation engine: one vLLM AsyncLLM, its tokenizer, a verifier and the Curators.

The Ray Data actors of `ssb curate` (pipelines/curate.py) and the Serve deployment of the
curation API (services/engine_deployment.py) are thin adapters over this one class. It
takes several batches at once (`engine.max_concurrent_batches`); every problem of every batch
is its own chain of requests (ssb/curator.py), so rollout and teacher requests of different
problems share the engine's continuous batching and the engine is busy while any is left.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any, Sequence

from ssb.config import RunConfig, SamplingConfig
from ssb.cost import StageClock
from ssb.curator import Curator
from ssb.records import Problem, ProblemState
from ssb.verify import VerifierPool

from pipelines.engine import (build_async_llm, generate_one, prestart_engine_core, sampling_params,
                              shut_down_at_exit)

# A long-lived Serve replica sees many jobs, each with its own config: keep a few Curators.
_MAX_CURATORS = 8
# What a job may not change on a running engine: it is how the engine was built.
_FIXED_MODEL_FIELDS = ("dtype", "max_model_len", "name", "adapter")


def lora_request(cfg: RunConfig) -> Any:
    """The adapter every request of this run goes through, or None for the bare model."""
    if not cfg.model.adapter:
        return None
    from vllm.lora.request import LoRARequest

    return LoRARequest("ssb-adapter", 1, cfg.model.adapter)


class AsyncLLMSampler:
    """An `AsyncSampler` over vLLM's AsyncLLM; `clock` counts the seconds any request was in
    flight, split by stage in proportion to the requests of each (ssb/cost.py).

    The engine is asked for token ids only (no detokenization, flat log-prob arrays): vLLM's
    output processor would otherwise turn every generated token and each of its top-k
    alternatives into a string, step by step, in this process, on the cores the engine needs.
    Each finished sample is decoded once here instead."""

    def __init__(self, llm: Any, tokenizer: Any, lora: Any = None):
        import vllm
        from vllm.sampling_params import RequestOutputKind

        self.llm, self.tokenizer, self.lora = llm, tokenizer, lora
        self.clock = StageClock()
        self._vllm, self._final = vllm, RequestOutputKind.FINAL_ONLY
        self._prefix = f"curate-{uuid.uuid4().hex[:8]}"
        self._ids = itertools.count()

    async def sample(self, prompt_ids: list[int], seed: int, params: SamplingConfig,
                     logprobs: int | None = None, stage: str = "rollout") -> Sequence[Any]:
        sp = sampling_params(self._vllm, params, logprobs=logprobs, seed=seed, output_kind=self._final,
                             detokenize=False)
        prompt = self._vllm.inputs.TokensPrompt(prompt_token_ids=prompt_ids)
        self.clock.start(stage)
        try:
            out = await generate_one(self.llm, prompt, sp, f"{self._prefix}-{next(self._ids)}", self.lora)
        finally:
            self.clock.stop(stage)
        for c in out.outputs:
            c.text = self.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        return out.outputs


class CurationEngine:
    """An engine for one model (and adapter); each job or run brings its own config."""

    def __init__(self, cfg: RunConfig, model_path: str):
        start = time.perf_counter()  # importing vLLM is part of the engine's start-up
        prestart_engine_core(cfg.engine)
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.llm = build_async_llm(model_path, cfg.model, cfg.engine, max_logprobs=cfg.curate.top_k,
                                   enable_lora=cfg.model.adapter is not None,
                                   lora_adapters=[cfg.model.adapter] if cfg.model.adapter else [])
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.sampler = AsyncLLMSampler(self.llm, self.tokenizer, lora_request(cfg))
        self.verifier = self._verifier(cfg)
        self._curators: dict[str, Curator] = {cfg.model_dump_json(): Curator(cfg, self.tokenizer, self.sampler,
                                                                              self.verifier)}
        self._load_seconds: float | None = time.perf_counter() - start
        self._ready_at = time.time()
        shut_down_at_exit(self.shutdown)

    @staticmethod
    def _verifier(cfg: RunConfig) -> VerifierPool:
        v = cfg.verify
        verifier = VerifierPool(v.workers, timeout_s=v.timeout_s, fallbacks=v.fallbacks)
        verifier.start()  # its sympy import is start-up, not the first batch's time
        return verifier

    def curator(self, cfg_json: str | None = None) -> Curator:
        """The Curator of a job's config (the engine's own when None)."""
        if cfg_json is None:
            return next(iter(self._curators.values()))
        if cfg_json not in self._curators:
            cfg = RunConfig.model_validate_json(cfg_json)
            if any(getattr(cfg.model, k) != getattr(self.cfg.model, k) for k in _FIXED_MODEL_FIELDS):
                raise ValueError("a job may not change the served model (name, adapter, dtype, max_model_len)")
            if cfg.curate.top_k > self.cfg.curate.top_k:
                raise ValueError(f"top_k {cfg.curate.top_k} > the engine's max_logprobs {self.cfg.curate.top_k}")
            same = cfg.verify == self.cfg.verify
            if len(self._curators) >= _MAX_CURATORS:
                oldest = self._curators.pop(next(iter(self._curators)))
                if oldest.verifier is not self.verifier:
                    oldest.verifier.close()
            self._curators[cfg_json] = Curator(cfg, self.tokenizer, self.sampler,
                                               self.verifier if same else self._verifier(cfg))
        return self._curators[cfg_json]

    async def curate(self, problems: Sequence[Problem], cfg_json: str | None = None) -> list[ProblemState]:
        """Every step for a batch of problems, each problem at its own pace."""
        return self._account(await self.curator(cfg_json).curate_many(problems))

    async def roll_out(self, problems: Sequence[Problem], cfg_json: str | None = None) -> list[ProblemState]:
        """Rollouts, verdicts, the pair and the teacher's prompt (`engine.colocate: false`)."""
        import asyncio

        curator = self.curator(cfg_json)
        states = await asyncio.gather(*(curator.roll_out(ProblemState(p)) for p in problems))
        return self._account(list(states))

    async def teach(self, states: Sequence[ProblemState], cfg_json: str | None = None) -> list[ProblemState]:
        """The teacher's answers and their judgement for states `roll_out` made."""
        import asyncio

        curator = self.curator(cfg_json)
        return self._account(list(await asyncio.gather(*(curator.teach(s) for s in states))))

    def _account(self, states: list[ProblemState]) -> list[ProblemState]:
        by_stage = self.sampler.clock.take()
        for s in states:
            s.rollout_engine_seconds += by_stage.get("rollout", 0.0) / len(states)
            s.teacher_engine_seconds += by_stage.get("teacher", 0.0) / len(states)
            s.engine_seconds += sum(by_stage.values()) / len(states)
        if self._load_seconds is not None and states:
            states[0].engine_load_seconds, self._load_seconds = self._load_seconds, None
            states[0].engine_ready_at = self._ready_at
        return states

    def shutdown(self) -> None:
        """Stops the engine before its process goes, so its output loop is cancelled rather than
        finding the engine core gone and reporting a crash."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.shutdown()
        verifiers = {id(c.verifier): c.verifier for c in getattr(self, "_curators", {}).values()}
        for verifier in verifiers.values():
            verifier.close()
