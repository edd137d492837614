"""The evaluation's Ray Data actor (pipelines/evaluate.py runs the job): vLLM engines, one at a
time, answer each row's problem with the student prompt, and the project's Verifier checks
every answer."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pyarrow as pa

from ssb.config import RunConfig
from ssb.records import Verdict
from ssb.scoring import majority_vote

OUT_SCHEMA = pa.schema([
    ("benchmark", pa.string()), ("label", pa.string()), ("id", pa.string()), ("question", pa.string()),
    ("answer", pa.string()), ("status", pa.string()), ("prompt_tokens", pa.int64()),
    ("sample_texts", pa.list_(pa.string())), ("sample_answers", pa.list_(pa.string())),
    ("sample_verdicts", pa.list_(pa.string())), ("sample_finish", pa.list_(pa.string())),
    ("sample_tokens", pa.int64()),
    ("greedy_text", pa.string()), ("greedy_answer", pa.string()), ("greedy_verdict", pa.string()),
    ("greedy_finish", pa.string()), ("greedy_tokens", pa.int64()),
    ("maj_answer", pa.string()), ("maj_correct", pa.bool_()),
    # The engine's busy seconds (any batch generating) handed out batch by batch over their
    # rows, and each engine's start-up (on the next row the actor produced only): lets a
    # benchmark separate engine time from overhead.
    ("generate_seconds", pa.float64()), ("engine_load_seconds", pa.float64()),
    ("extra", pa.int64()),  # -1: a benchmark's problem; else the index of its ExtraSet
    # The model directory the engine that answered loaded, and the actor ("host:pid") it ran in.
    ("engine_model", pa.string()), ("worker", pa.string()),
])


class EvalWorker:
    """A Ray Data actor: one vLLM AsyncLLM engine at a time and a Verifier. `engines` lists what
    each engine loads (a model directory, and {label: LoRA adapter or None}); a row names its
    engine by index, and the actor loads the engines it is sent in turn, so evaluating several
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

        from pipelines.engine import BusyClock, prestart_engine_core, shut_down_at_exit

        self.cfg = cfg = RunConfig.model_validate_json(cfg_json)
        prestart_engine_core(cfg.engine)
        import vllm
        from vllm.sampling_params import RequestOutputKind

        from ssb.prompts import Prompts
        from ssb.verify import Verifier

        self.engines = engines
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
        self._clock = BusyClock()
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

        rows = batch.to_pylist()
        out = [self._empty(r) for r in rows]
        # Ray Data may hand one batch rows of two engines (where one engine's rows end).
        for index in sorted({r["engine"] for r in rows}):
            await self._acquire(index)
            try:
                await self._generate([(r, o) for r, o in zip(rows, out) if r["engine"] == index])
            finally:
                await self._release()
        # The verifier blocks on its child process: off the event loop, so the other batches'
        # requests keep streaming in and out of the engine meanwhile.
        await asyncio.to_thread(self._verify, out)
        seconds = self._clock.take()
        for o in out:
            o["generate_seconds"] = seconds / max(len(out), 1)
        if self.load_seconds is not None and out:
            out[0]["engine_load_seconds"], self.load_seconds = self.load_seconds, None
        return pa.Table.from_pylist(out, schema=OUT_SCHEMA)

    async def _generate(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Every sample and greedy answer of these rows (row, its output) on the loaded engine."""
        import asyncio

        from pipelines.engine import generate_one

        requests, slots = [], []  # slot: (output, "samples" | "greedy")
        for row, o in pairs:
            o["engine_model"], o["worker"] = self.engines[row["engine"]][0], self.worker
            ids = self._prompt_ids(row["question"])
            o["prompt_tokens"] = len(ids)
            if len(ids) > self.cfg.model.max_model_len - self.cfg.eval.max_tokens:
                o["status"] = "prompt_too_long"  # scored as unanswered, never dropped
                continue
            kinds = ((("greedy", self.zero_shot_params),) if row["extra"] >= 0
                     else (("samples", self.sample_params), ("greedy", self.greedy_params)))
            for kind, params in kinds:
                if params is not None:
                    requests.append(generate_one(self.llm, self._tokens_prompt(prompt_token_ids=ids), params,
                                                 f"eval-{next(self._requests)}", self.lora.get(row["label"])))
                    slots.append((o, kind))
        self._clock.start()
        try:
            results = await asyncio.gather(*requests)
        finally:
            self._clock.stop()
        for (o, kind), res in zip(slots, results):
            if kind == "samples":
                o["sample_texts"] = [c.text for c in res.outputs]
                o["sample_finish"] = [str(c.finish_reason) for c in res.outputs]
                o["sample_tokens"] = sum(len(c.token_ids) for c in res.outputs)
            else:
                c = res.outputs[0]
                o["greedy_text"], o["greedy_finish"], o["greedy_tokens"] = c.text, str(c.finish_reason), len(c.token_ids)

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

    def _verify(self, out: list[dict[str, Any]]) -> None:
        """Verdicts for every sample and greedy answer, and the majority answer."""
        texts: list[tuple[str, str]] = []
        for o in out:
            texts += [(t, o["answer"]) for t in o["sample_texts"]]
            if o["greedy_text"] is not None:
                texts.append((o["greedy_text"], o["answer"]))
        checks = iter(self.verifier.check_many(texts))
        for o in out:
            verdicts = [next(checks) for _ in o["sample_texts"]]
            o["sample_answers"] = [a for a, _ in verdicts]
            o["sample_verdicts"] = [Verdict(v).value for _, v in verdicts]
            if o["greedy_text"] is not None:
                a, v = next(checks)
                o["greedy_answer"], o["greedy_verdict"] = a, Verdict(v).value
            elif self.greedy_params is not None or o["extra"] >= 0:
                o["greedy_verdict"] = Verdict.NO_ANSWER.value
            if self.sample_params is not None and o["extra"] < 0:
                pick = majority_vote(o["sample_answers"], same=self.verifier.equivalent)
                o["maj_answer"] = o["sample_answers"][pick] if pick is not None else None
                o["maj_correct"] = pick is not None and o["sample_verdicts"][pick] == Verdict.CORRECT.value

    def _empty(self, row: dict[str, Any]) -> dict[str, Any]:
        o: dict[str, Any] = {name: None for name in OUT_SCHEMA.names}
        o.update({k: row[k] for k in ("benchmark", "label", "id", "question", "answer", "extra")})
        o.update(status="", sample_texts=[], sample_answers=[], sample_verdicts=[], sample_finish=[],
                 sample_tokens=0, greedy_tokens=0, generate_seconds=0.0, engine_load_seconds=0.0)
        return o
