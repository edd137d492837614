"""Settings of the serving layer: the model endpoint, the curation API, the job store.

The curation defaults (model, prompts, sampling, store layout) are a normal `RunConfig`;
these settings say how they are served. `ssb serve` takes both: `serve.*` overrides land
here, all others in the run config.

Bearer tokens are kept only as HMAC digests under a random salt: the settings travel to every
Serve replica (and into Ray's deployment records), so the tokens themselves never do, and a
digest seen in one deployment says nothing in another (services.auth checks them).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.auth import token_digest
from ssb.config import BudgetConfig, RunConfig
from ssb.layout import is_remote, needs_local

# Job run directories are swept, listed and shown to clients with local file operations.
SERVICE_STAGE = "the curation service (ssb serve)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LLMServiceConfig(_Strict):
    """The model as an OpenAI-compatible Ray Serve deployment (rollout and teacher endpoint)."""

    enabled: bool = True  # False: no OpenAI endpoint (the "engine" job backend needs none)
    model_id: str = "ssb"  # the name clients put in "model"; "ssb:<adapter>" selects a LoRA adapter
    app_name: str = "ssb-llm"
    route_prefix: str = "/openai"  # → /openai/v1/completions, /openai/v1/chat/completions
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: int = 32
    max_ongoing_requests: int = 256
    # LoRA adapters served by name: <lora_root>/<name>/ holds a peft adapter.
    lora_root: str | None = None
    max_adapters_per_replica: int = 4
    ingress_replicas: int = 1  # the OpenAI router in front of the engine replicas


class ApiConfig(_Strict):
    app_name: str = "ssb"
    route_prefix: str = "/"
    host: str = "127.0.0.1"
    port: int = 8000
    token_digests: list[str] = Field(default_factory=list)  # token_digest(token, token_salt)
    token_salt: str = ""  # hex; with_tokens draws one per deployment
    max_request_bytes: int = 1_000_000
    max_problems_per_job: int = 1000
    max_question_chars: int = 4000
    max_sync_problems: int = 4
    sync_timeout_s: float = 600.0
    max_concurrent_jobs_per_token: int = 4
    max_page_size: int = 100
    # Dataset references in a request must resolve inside one of these (after symlinks).
    allowed_data_roots: list[str] = Field(default_factory=list)
    # Every job's curate.budget is at most this, limit by limit, whatever its token asks; a job that
    # asks for none gets this one.
    job_budget_cap: BudgetConfig = Field(default_factory=BudgetConfig)
    api_replicas: int = 1


class JobsConfig(_Strict):
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "ssb"
    # Every ended job (succeeded, failed, cancelled) expires this long after it ended; 0: never.
    job_ttl_s: int = 7 * 86400
    idempotency_ttl_s: int = 86400
    max_stored_jobs_per_token: int = 1000  # records not yet expired, in any state (bounds Redis)
    # The runner removes <jobs_root>/<id> once its job has ended (or its record expired) and
    # nothing in it changed for this long; 0 keeps run directories forever.
    run_dir_retention_s: int = 7 * 86400
    prune_every_s: float = 600.0
    batch_timeout_s: float = 3600.0  # one batch through the engine; past it the job fails, resumable
    jobs_root: str = "runs/serve/jobs"  # a job's run directory is ssb.layout.job_dir: <jobs_root>/<job id>
    runner_replicas: int = 1
    lease_s: float = 30.0  # a runner that stops renewing for this long has lost its job
    max_attempts: int = 3  # runner losses before a job is failed (resumable)
    poll_s: float = 0.5
    # "engine": an EngineReplica deployment (one pipelines CurationEngine per replica) runs `ssb curate`'s batches (equal shards);
    # "openai": the runner samples through the OpenAI LLMServer deployment (services/llm.py).
    backend: str = "engine"

    @field_validator("jobs_root")
    @classmethod
    def _local_jobs_root(cls, value: str) -> str:
        if is_remote(value):
            raise needs_local(SERVICE_STAGE, value, "jobs root")
        return value


class ServiceSettings(_Strict):
    llm: LLMServiceConfig = Field(default_factory=LLMServiceConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    # The curation defaults every job starts from (requests override sampling only).
    run: RunConfig = Field(default_factory=RunConfig)


MIN_TOKEN_CHARS = 16


def tokens_from_env(name: str = "SSB_API_TOKEN") -> list[str]:
    """Comma-separated tokens in the environment variable `name` (none → empty)."""
    return [t.strip() for t in os.environ.get(name, "").split(",") if t.strip()]


def with_tokens(settings: ServiceSettings, tokens: list[str]) -> ServiceSettings:
    """Adds the digests of `tokens`; a token under MIN_TOKEN_CHARS is refused (ValueError)."""
    short = [i for i, t in enumerate(tokens) if len(t) < MIN_TOKEN_CHARS]
    if short:
        raise ValueError(f"API token {short[0] + 1} of {len(tokens)} has {len(tokens[short[0]])} characters; "
                         f"tokens need at least {MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 24`)")
    api = settings.api
    salt = api.token_salt or secrets.token_hex(16)
    digests = sorted(set(api.token_digests) | {token_digest(t, salt) for t in tokens})
    return settings.model_copy(update={"api": api.model_copy(update={"token_digests": digests, "token_salt": salt})})


def http_routes(self: Any) -> list[list[Any]]:
    """[path, methods] of every route of a Serve FastAPI ingress (`self.app`), for a handle call:
    what tests enumerate to prove that every route of a running app wants a token."""
    return sorted([route.path, sorted(getattr(route, "methods", None) or [])] for route in self.app.routes)


def resolve_under(reference: str, roots: list[str]) -> Path | None:
    """`reference` as a path inside one of `roots` (after resolving `..` and symlinks), or None.

    A relative reference is tried against each root in order; an absolute one must already
    lie inside a root. Nothing outside the roots is ever returned, so a request cannot read
    /etc/passwd, ../../secrets or a symlink that points out of a root.
    """
    if not reference or "\x00" in reference or "://" in reference:
        return None
    for root in roots:
        try:
            base = Path(root).resolve()
            candidate = (base / reference).resolve()  # an absolute reference replaces base here
            if candidate.is_relative_to(base) and candidate.exists():
                return candidate
        except (OSError, ValueError):  # a name too long, a symlink loop: not a dataset
            continue
    return None
