"""Engine helpers without an engine (the dtype choice, busy time over overlapping batches, what
`engine.fast_start` turns on), and an engine started the libraries' own way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines.engine import (adapter_rank, cpu_has_native_bf16, engine_kwargs, fitting_lora_rank,
                              resolve_dtype)
from pipelines import fast_start
from ssb.config import EngineConfig, load_config
from tests.conftest import REPO

ZEN2 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
NEOVERSE_V2 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize("text, native", [(ZEN2, False), (SAPPHIRE_RAPIDS, True), (NEOVERSE_V2, True), ("", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, text, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert cpu_has_native_bf16(str(cpuinfo)) is native


def test_unreadable_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_auto_is_bf16_on_gpus_and_follows_the_cpu_otherwise():
    cpu = load_config(None, [])
    assert cpu.model.dtype == "auto"
    expected = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert resolve_dtype(cpu.model, cpu.engine) == expected
    assert engine_kwargs("m", cpu.model, cpu.engine)["dtype"] == expected
    gpu = load_config(None, ["engine.gpus_per_replica=1"])
    assert resolve_dtype(gpu.model, gpu.engine) == "bfloat16"


def test_an_explicit_dtype_is_kept():
    cfg = load_config(None, ["model.dtype=float16"])
    assert resolve_dtype(cfg.model, cfg.engine) == "float16"


def _adapter(root, name: str, **config) -> str:
    path = root / name
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps(config))
    return str(path)


def test_a_lora_engine_is_sized_to_the_adapters_it_serves(tmp_path):
    r8, r12 = _adapter(tmp_path, "r8", r=8), _adapter(tmp_path, "r12", r=12)
    patterned = _adapter(tmp_path, "pattern", r=8, rank_pattern={"q_proj": 40})
    assert adapter_rank(patterned) == 40 and adapter_rank(str(tmp_path / "missing")) is None
    assert fitting_lora_rank([r8], 64) == 8
    assert fitting_lora_rank([r8, r12], 64) == 16  # the smallest rank vLLM takes that fits both
    assert fitting_lora_rank([r8, patterned], 8) == 64  # fits, even past the configured rank
    assert fitting_lora_rank([], 64) == 64  # Serve: adapters come later, from a directory
    assert fitting_lora_rank([r8, "org/hub-adapter"], 32) == 32  # a rank it cannot read


def test_engine_arguments_carry_the_fitted_rank(tmp_path):
    model_path = "m"
    cfg = load_config(None, ["engine.max_lora_rank=64"])
    kwargs = engine_kwargs(model_path, cfg.model, cfg.engine, enable_lora=True,
                           lora_adapters=[_adapter(tmp_path, "a", r=32)])
    assert kwargs["enable_lora"] and kwargs["max_lora_rank"] == 32
    assert engine_kwargs(model_path, cfg.model, cfg.engine, enable_lora=True)["max_lora_rank"] == 64
    assert "max_lora_rank" not in engine_kwargs(model_path, cfg.model, cfg.engine)


@pytest.mark.parametrize("bind, threads", [("0-1", "2"), ("0,2", "2"), ("3", "1"), ("0-1,4-5,7", "5"),
                                           ("auto", None), ("nobind", None), ("0-1|2-3", None)])
def test_the_engine_core_gets_one_thread_per_bound_core(monkeypatch, bind, threads):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", bind)
    assert fast_start.engine_core_env(load_config(None, []).engine).get("OMP_NUM_THREADS") == threads


def test_the_core_environment_is_known_before_vllm_is_imported():
    """The fork server must start before this process imports vLLM (4 s here), or the two
    imports run one after the other instead of side by side."""
    import subprocess
    import sys

    code = ("import os, sys; os.environ['VLLM_CPU_OMP_THREADS_BIND'] = '0-1'\n"
            "from pipelines.engine import configure_engine_env\n"
            "from pipelines.fast_start import engine_core_env, runs_in_engine_core\n"
            "from ssb.config import load_config\n"
            "engine = load_config(None, []).engine; configure_engine_env(engine); engine_core_env(engine)\n"
            "runs_in_engine_core(engine)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'vllm'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_fast_start_by_default_follows_the_installed_releases(monkeypatch):
    from importlib import metadata

    installed = {"vllm-cpu": fast_start.VLLM_VERSION, "ray": fast_start.RAY_VERSION}

    def version(name: str) -> str:
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(fast_start.metadata, "version", version)
    for ray_version, on in ((fast_start.RAY_VERSION, True), ("9.9.9", False)):
        installed["ray"] = ray_version
        fast_start.written_for_installed.cache_clear()
        assert fast_start.enabled(EngineConfig()) is on
        assert fast_start.enabled(EngineConfig(fast_start=True)) is True
        assert fast_start.enabled(EngineConfig(fast_start=False)) is False
    fast_start.written_for_installed.cache_clear()


def test_fast_start_applies_to_cpu_engines_of_one_rank_only():
    assert fast_start.runs_in_engine_core(EngineConfig(fast_start=True))
    assert not fast_start.runs_in_engine_core(EngineConfig(fast_start=False))
    assert not fast_start.runs_in_engine_core(EngineConfig(fast_start=True, gpus_per_replica=1))
    assert not fast_start.runs_in_engine_core(EngineConfig(fast_start=True, tensor_parallel_size=2))
    # Serve: the in-core server only where it applies, and the setting for the replica to read
    on = fast_start.serve_options(EngineConfig(fast_start=True))
    assert on == {"server_cls": "pipelines.fast_start.InCoreLLMServer",
                  "experimental_configs": {fast_start.SERVE_KEY: True}}
    assert fast_start.serve_options(EngineConfig(fast_start=False)) == {
        "experimental_configs": {fast_start.SERVE_KEY: False}}


PLAIN_ENGINE = r"""
import asyncio, json, os, sys
from pipelines.engine import build_async_llm, generate_one, prestart_engine_core
from ssb.config import load_config

cfg = load_config(None, ["engine.fast_start=false", "engine.cpu_kvcache_gb=1", "model.max_model_len=512"])
prestart_engine_core(cfg.engine)  # with the setting off: nothing
from vllm import SamplingParams, TokensPrompt

llm = build_async_llm(sys.argv[1], cfg.model, cfg.engine)
out = asyncio.run(generate_one(llm, TokensPrompt(prompt_token_ids=[1, 2, 3, 4]),
                               SamplingParams(temperature=0.0, max_tokens=8), "plain-0"))
children = []
for pid in os.listdir("/proc"):
    try:
        if pid.isdigit() and open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid()):
            children.append(open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode())
    except OSError:
        continue
llm.shutdown()
from pipelines import fast_start
print("RESULT " + json.dumps({"tokens": list(out.outputs[0].token_ids), "children": children,
                              "fork_server": fast_start._fork_server_env is not None}))
"""


@pytest.mark.slow
def test_an_engine_starts_and_generates_with_fast_start_off(model_path):
    """The libraries' own start-up: no fork server, and vLLM's engine core is this process's
    own child (spawned), not one forked from a server."""
    out = subprocess.run([sys.executable, "-c", PLAIN_ENGINE, model_path], capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert len(got["tokens"]) == 8
    assert not got["fork_server"]
    assert any(title.startswith("VLLM::EngineCore") for title in got["children"]), got["children"]
