"""Building and deploying the serving layer: `build_curation_app(settings)` and friends.

Applications on one Serve HTTP proxy:
- "ssb" (route "/"): the curation API (ingress) → the job runner → the curation engine.
- "ssb-llm" (route "/openai"): the OpenAI-compatible model endpoint (services/llm.py),
  when `llm.enabled`; with only the "openai" job backend asking for it, it has no route at
  all (the runner reaches it through a handle).
Both answer only with a bearer token of `SSB_API_TOKEN` (at least 16 characters).
"""

from __future__ import annotations

from typing import Any

from ssb.config import RunConfig, apply_overrides, load_config, set_dotted
from ssb.default_model import resolve_model

from services.settings import ServiceSettings, tokens_from_env, with_tokens


def service_settings(run: RunConfig, serve_overrides: list[str], extra: dict[str, Any] | None = None,
                     token_env: str = "SSB_API_TOKEN") -> ServiceSettings:
    """Service settings from `serve.`-stripped dotted overrides (plus `extra` dotted keys set
    after them) around a run config; bearer tokens from the environment, kept as digests."""
    tree = apply_overrides({}, serve_overrides)
    for key, value in (extra or {}).items():
        set_dotted(tree, key, value)
    tree["run"] = run.model_dump()
    settings = ServiceSettings.model_validate(tree)
    try:
        return with_tokens(settings, tokens_from_env(token_env))
    except ValueError as exc:  # a token too short: say where it came from
        raise ValueError(f"{token_env}: {exc}") from None


def _settings_from_args(args: dict[str, Any]) -> ServiceSettings:
    """Serve app-builder args (a RayService's serveConfigV2): {"config": path, "overrides":
    [...]}, where `serve.`-prefixed overrides set the service and the rest the run config."""
    overrides = [str(o) for o in args.get("overrides") or []]
    run = load_config(args.get("config"), [o for o in overrides if not o.startswith("serve.")])
    return service_settings(run, [o[len("serve."):] for o in overrides if o.startswith("serve.")],
                            token_env=args.get("token_env", "SSB_API_TOKEN"))


def require_tokens(settings: ServiceSettings, token_env: str = "SSB_API_TOKEN") -> None:
    if not settings.api.token_digests:
        raise ValueError(f"no API token: set {token_env} (every route but /healthz, /livez and /readyz needs one)")


def build_app(args: dict[str, Any]) -> Any:
    """`import_path: services.app:build_app`: the curation API app (needs SSB_API_TOKEN)."""
    settings = _settings_from_args(args)
    require_tokens(settings, args.get("token_env", "SSB_API_TOKEN"))
    return build_curation_app(settings)


def build_llm_app(args: dict[str, Any]) -> Any:
    """`import_path: services.app:build_llm_app`: the OpenAI-compatible model endpoint app
    (the same tokens as the curation API)."""
    from services.llm import build_model_app

    settings = _settings_from_args(args)
    require_tokens(settings, args.get("token_env", "SSB_API_TOKEN"))
    return build_model_app(settings.run, resolve_model(settings.run.model.name), settings.llm, settings.api)


def build_curation_app(settings: ServiceSettings, model_path: str | None = None) -> Any:
    from ray import serve

    from pipelines.engine import control_actor_options, engine_actor_options
    from services.api import build_api_deployment
    from services.engine_deployment import EngineReplica
    from services.runner import CurationRunner

    run = settings.run
    engine = None
    if settings.jobs.backend == "engine":
        e = run.engine
        engine = serve.deployment(
            EngineReplica, name="EngineReplica", ray_actor_options=engine_actor_options(e, serve=True),
            autoscaling_config={"min_replicas": settings.llm.min_replicas, "max_replicas": max(
                settings.llm.max_replicas, e.replicas), "target_ongoing_requests": e.max_concurrent_batches},
            # each replica works on this many batches at once; more wait in Serve's queue.
            # The replica's __del__ stops its AsyncLLM (about 5 s on CPU): Serve kills the actor
            # once this grace is over, so it must outlast that stop.
            max_ongoing_requests=e.max_concurrent_batches, health_check_timeout_s=120, graceful_shutdown_timeout_s=30,
            health_check_period_s=5,  # a dead engine is noticed (and readiness fails) within seconds
        ).bind(run.model_dump_json(), model_path or resolve_model(run.model.name))
    runner = serve.deployment(
        CurationRunner, name="CurationRunner", num_replicas=settings.jobs.runner_replicas,
        ray_actor_options=control_actor_options(run.engine), health_check_period_s=2, graceful_shutdown_timeout_s=5,
    ).bind(settings.model_dump_json(), engine)
    return build_api_deployment(settings).bind(runner)


def deploy(settings: ServiceSettings, *, blocking: bool = False) -> str:
    """Starts Serve on the API's host/port and deploys the apps; returns the base URL."""
    from ray import serve

    from services.llm import build_model_app

    api = settings.api
    require_tokens(settings)
    serve.start(http_options={"host": api.host, "port": api.port})
    model_path = resolve_model(settings.run.model.name)
    # One app after the other: on a 2-core box the replicas of two apps starting at once (five
    # processes importing torch and vLLM) slowed `ssb serve` in the test suite (123 to 150 s
    # against 109 to 114 s one after the other). The model app first: the "openai" job backend
    # sends its jobs there.
    if settings.llm.enabled or settings.jobs.backend == "openai":
        serve.run(build_model_app(settings.run, model_path, settings.llm, api), name=settings.llm.app_name,
                  route_prefix=settings.llm.route_prefix if settings.llm.enabled else None)
    serve.run(build_curation_app(settings, model_path), name=api.app_name, route_prefix=api.route_prefix,
              blocking=blocking)
    return f"http://{api.host}:{api.port}"
