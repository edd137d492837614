"""The evaluation's Ray Data actor (pipelines/evaluate.py runs the job): vLLM engines, one at a
time, answer each EvalRecord's problem with the student prompt, and the project's Verifier
checks every answer."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pyarrow as pa

from ssb.config import RunConfig
from ssb.eval_table import EVAL_SCHEMA, from_table, to_table
from ssb.records import EvalRecord, SkipReason, Verdict
from ssb.scoring import majority_vote

# What the actor takes and returns: EvalRecords, unanswered and answered (ssb/eval_table.py).
OUT_SCHEMA = EVAL_SCHEMA


class EvalWorker:
    """A Ray Data actor: one vLLM AsyncLLM engine at a time and a Verifier. `engines` lists what
    each engine loads (a model directory, and {label: LoRA adapter or None}); a record's label
    names its engine, and the actor loads the engines it is sent in turn, so evaluating several
    merged models costs one actor and one `import vllm`, not one of each per model. Ray Data
    calls it with up to `engine.max_concurrent_batches` batches at once; their requests share
    the engine's running batch, and a batch is verified while the next ones generate, so the
    engine never waits for a batch's slowest answer or for the verifier. A batch for another
    engine waits until the batches on the loaded one have generated, then swaps it."""

    def __init__(self, cfg_json: str, engines: list[tuple[str, dict[str, str | None]]]):
        start = time.perf_counter()  # importing vLLM is part of the engine's start-up
        import asyncio
        import os
        import socket

        from pipelines.engine import shut_down_at_exit
        from pipelines.fast_start import prestart_engine_core
        from ssb.cost import StageClock

        self.cfg = cfg = RunConfig.model_validate_json(cfg_json)
        prestart_engine_core(cfg.engine)
        import vllm
        from vllm.sampling_params import RequestOutputKind

        from ssb.prompts import Prompts
        from ssb.verify import Verifier

        self.engines = engines
        self.engine_of = {label: i for i, (_, labels) in enumerate(engines) for label in labels}
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.llm: Any = None
        self.loaded: int | None = None  # index into `engines` of the engine in self.llm
        self.lora: dict[str, Any] = {}
        self.tokenizer: Any = None
        self._tokenizers: dict[str, Any] = {}
        self._inflight = 0  # batches generating on the loaded engine
        self._turn = asyncio.Condition()
        self.prompts = Prompts.from_config(cfg.prompts)
        self.verifier = Verifier(timeout_s=cfg.verify.timeout_s, fallbacks=cfg.verify.fallbacks)
        self.verifier.start()  # its sympy import is start-up, not the first batch's time
        ev = cfg.eval
        final = RequestOutputKind.FINAL_ONLY  # one output per request: nothing streams per token
        self.sample_params = (vllm.SamplingParams(n=ev.n, temperature=ev.temperature, top_p=ev.top_p,
                                                  max_tokens=ev.max_tokens, output_kind=final)
                              if ev.n > 0 else None)
        self.zero_shot_params = vllm.SamplingParams(n=1, temperature=0.0, max_tokens=ev.max_tokens, output_kind=final)
        self.greedy_params = self.zero_shot_params if ev.greedy else None
        self._tokens_prompt = vllm.inputs.TokensPrompt
        self._clock = StageClock()  # one stage: the evaluation's generation
        self._requests = itertools.count()
        self._imports_seconds = time.perf_counter() - start
        self.load_seconds: float | None = None
        self._load(0)  # rows come sorted by engine: the first one is needed first
        shut_down_at_exit(self.shutdown)

    def _load(self, index: int) -> None:
        """Replaces the loaded engine with engines[index]; its start-up (the first one's with
        the actor's imports) goes out with the next row produced."""
        import os

        from transformers import AutoTokenizer

        from pipelines.engine import build_async_llm

        start = time.perf_counter()
        model_path, adapters = self.engines[index]
        if self.llm is not None:
            llm, self.llm, self.loaded = self.llm, None, None
            llm.shutdown()  # its engine core and KV cache go before the next one is built
        lora = any(adapters.values())
        self.llm = build_async_llm(model_path, self.cfg.model, self.cfg.engine, max_logprobs=1, enable_lora=lora,
                                   lora_adapters=[p for p in adapters.values() if p], seed_offset=os.getpid())
        self.loaded = index
        if model_path not in self._tokenizers:
            self._tokenizers[model_path] = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer = self._tokenizers[model_path]
        self.lora = {}
        if lora:
            from vllm.lora.request import LoRARequest

            ids = iter(range(1, len(adapters) + 1))
            self.lora = {label: LoRARequest(label, next(ids), path) if path else None
                         for label, path in adapters.items()}
        seconds = time.perf_counter() - start + self._imports_seconds
        self._imports_seconds = 0.0
        self.load_seconds = (self.load_seconds or 0.0) + seconds

    async def _acquire(self, index: int) -> None:
        async with self._turn:
            while self.loaded != index and self._inflight:
                await self._turn.wait()
            if self.loaded != index:
                self._load(index)
            self._inflight += 1

    async def _release(self) -> None:
        async with self._turn:
            self._inflight -= 1
            self._turn.notify_all()

    async def __call__(self, batch: pa.Table) -> pa.Table:
        import asyncio

        records = from_table(batch)
        # Ray Data may hand one batch records of two engines (where one engine's records end).
        for index in sorted({self.engine_of[r.label] for r in records}):
            await self._acquire(index)
            try:
                await self._generate([r for r in records if self.engine_of[r.label] == index])
            finally:
                await self._release()
        # The verifier blocks on its child process: off the event loop, so the other batches'
        # requests keep streaming in and out of the engine meanwhile.
        await asyncio.to_thread(self._verify, records)
        seconds = sum(self._clock.take().values())
        for r in records:
            r.generate_seconds = seconds / max(len(records), 1)
        if self.load_seconds is not None and records:
            records[0].engine_load_seconds, self.load_seconds = self.load_seconds, None
        return to_table(records)

    async def _generate(self, records: list[EvalRecord]) -> None:
        """Every sample and greedy answer of these records on the loaded engine."""
        import asyncio

        from pipelines.engine import generate_one

        requests, slots = [], []  # slot: (record, "samples" | "greedy")
        for r in records:
            r.engine_model, r.worker = self.engines[self.engine_of[r.label]][0], self.worker
            ids = self._prompt_ids(r.question)
            r.prompt_tokens = len(ids)
            if len(ids) > self.cfg.model.max_model_len - self.cfg.eval.max_tokens:
                r.status = SkipReason.PROMPT_TOO_LONG  # scored as unanswered, never dropped
                continue
            kinds = ((("greedy", self.zero_shot_params),) if r.extra is not None
                     else (("samples", self.sample_params), ("greedy", self.greedy_params)))
            for kind, params in kinds:
                if params is not None:
                    requests.append(generate_one(self.llm, self._tokens_prompt(prompt_token_ids=ids), params,
                                                 f"eval-{next(self._requests)}", self.lora.get(r.label)))
                    slots.append((r, kind))
        self._clock.start("eval")
        try:
            results = await asyncio.gather(*requests)
        finally:
            self._clock.stop("eval")
        for (r, kind), res in zip(slots, results):
            if kind == "samples":
                r.sample_texts = [c.text for c in res.outputs]
                r.sample_finish = [str(c.finish_reason) for c in res.outputs]
                r.sample_tokens = sum(len(c.token_ids) for c in res.outputs)
            else:
                c = res.outputs[0]
                r.greedy_text, r.greedy_finish, r.greedy_tokens = c.text, str(c.finish_reason), len(c.token_ids)

    def __del__(self) -> None:
        # Ray Data drops the UDF when the job ends: stop the engine first, so its output loop is
        # cancelled rather than finding the engine process gone and logging it as a crash.
        self.shutdown()

    def shutdown(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        verifier, self.verifier = getattr(self, "verifier", None), None
        if llm is not None:
            llm.shutdown()
        if verifier is not None:
            verifier.close()

    def _prompt_ids(self, question: str) -> list[int]:
        from ssb.prompts import render_ids, student_messages

        return render_ids(self.tokenizer, student_messages(question, self.prompts))

    def _verify(self, records: list[EvalRecord]) -> None:
        """Verdicts for every sample and greedy answer, and the majority answer."""
        texts: list[tuple[str, str]] = []
        for r in records:
            texts += [(t, r.answer) for t in r.sample_texts]
            if r.greedy_text is not None:
                texts.append((r.greedy_text, r.answer))
        checks = iter(self.verifier.check_many(texts))
        for r in records:
            verdicts = [next(checks) for _ in r.sample_texts]
            r.sample_answers = [a for a, _ in verdicts]
            r.sample_verdicts = [Verdict(v) for _, v in verdicts]
            if r.greedy_text is not None:
                a, v = next(checks)
                r.greedy_answer, r.greedy_verdict = a, Verdict(v)
            elif self.greedy_params is not None or r.extra is not None:
                r.greedy_verdict = Verdict.NO_ANSWER
            if self.sample_params is not None and r.extra is None:
                pick = majority_vote(r.sample_answers, same=self.verifier.equivalent)
                r.maj_answer = r.sample_answers[pick] if pick is not None else None
                r.maj_correct = pick is not None and r.sample_verdicts[pick] is Verdict.CORRECT
