"""An `AsyncSampler` (ssb/curator.py) backed by the LLMServer deployment.

The Curator builds the same token-id prompts and per-request seeds as in `ssb curate`; this
sends each one as an OpenAI completions request through a DeploymentHandle and turns the
answer back into what vLLM's CompletionOutput holds (text, token ids, finish reason, and
per-token {token id: log-prob} with the sampled token always present), so `encode_topk`
reads it exactly as it reads an in-process engine's output.

Each request is waited on in a thread of the sampler's own pool, so the Curator's event
loop (never the replica's) keeps every problem's requests in flight at once.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from ssb.config import SamplingConfig

_TOKEN_ID = "token_id:"


@dataclass
class ServedCompletion:
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[dict[int, float]] | None


def _token_id(key: str) -> int:
    if not key.startswith(_TOKEN_ID):
        raise ValueError(f"log-prob key {key[:40]!r} is not a token id: request return_tokens_as_token_ids")
    return int(key[len(_TOKEN_ID):])


def to_completions(response: Any) -> list[ServedCompletion]:
    out = []
    for choice in sorted(response.choices, key=lambda c: c.index):
        logprobs = None
        if choice.logprobs is not None:
            logprobs = [{_token_id(k): float(v) for k, v in (top or {}).items()}
                        for top in choice.logprobs.top_logprobs]
        out.append(ServedCompletion(choice.text, list(choice.token_ids or []), choice.finish_reason, logprobs))
    return out


class ServedSampler:
    def __init__(self, handle: Any, model: str, max_in_flight: int = 256):
        """`model`: the served model id, or "<id>:<adapter>" for a LoRA adapter."""
        self.model = model
        options: dict[str, Any] = {"stream": True}
        if ":" in model:
            options["multiplexed_model_id"] = model
        self.handle = handle.options(**options)
        self._pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="ssb-served")

    def request(self, prompt_ids: Sequence[int], seed: int, params: SamplingConfig, logprobs: int | None) -> Any:
        from ray.serve.llm.openai_api_models import CompletionRequest

        return CompletionRequest(
            model=self.model, prompt=list(prompt_ids), n=params.n, temperature=params.temperature,
            top_p=params.top_p, max_tokens=params.max_tokens, seed=seed, logprobs=logprobs,
            # Pinned to SamplingParams' defaults, so `ssb curate` and the service sample alike.
            top_k=0, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
            return_tokens_as_token_ids=True, return_token_ids=True, stream=False,
        )

    async def sample(self, prompt_ids: list[int], seed: int, params: SamplingConfig,
                     logprobs: int | None = None, stage: str = "rollout") -> list[ServedCompletion]:
        # The endpoint's engine is shared with other callers: no busy time to charge `stage` here.
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._sample, prompt_ids, seed, params, logprobs)

    def _sample(self, prompt_ids: list[int], seed: int, params: SamplingConfig,
                logprobs: int | None) -> list[ServedCompletion]:
        answers = list(self.handle.completions.remote(self.request(prompt_ids, seed, params, logprobs), None))
        if not answers:
            raise RuntimeError("the model deployment returned no answer")
        last = answers[-1]
        error = getattr(last, "error", None)
        if error is not None:
            raise RuntimeError(f"the model deployment refused a request: {getattr(error, 'message', error)}")
        return to_completions(last)
