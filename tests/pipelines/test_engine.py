"""Engine helpers without an engine: the dtype choice, and busy time over overlapping batches."""

from __future__ import annotations

import json
import time

import pytest

from pipelines.engine import (BusyClock, adapter_rank, cpu_has_native_bf16, engine_kwargs, fitting_lora_rank,
                              resolve_dtype)
from ssb.config import load_config

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


def test_busy_clock_counts_overlapping_batches_once():
    clock = BusyClock()
    start = time.perf_counter()
    clock.start()
    clock.start()  # a second batch joins the first
    time.sleep(0.05)
    clock.stop()
    first = clock.take()
    time.sleep(0.05)
    clock.stop()
    idle_from = time.perf_counter()
    time.sleep(0.05)  # nothing in flight: not busy
    second = clock.take()
    assert first >= 0.05 and second >= 0.05
    assert first + second <= idle_from - start + 1e-3
    assert clock.take() == 0.0


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
    from pipelines.engine import _engine_core_env

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", bind)
    assert _engine_core_env(load_config(None, []).engine).get("OMP_NUM_THREADS") == threads


def test_the_core_environment_is_known_before_vllm_is_imported():
    """The fork server must start before this process imports vLLM (4 s here), or the two
    imports run one after the other instead of side by side."""
    import subprocess
    import sys

    code = ("import os, sys; os.environ['VLLM_CPU_OMP_THREADS_BIND'] = '0-1'\n"
            "from pipelines.engine import _engine_core_env, configure_engine_env\n"
            "from ssb.config import load_config\n"
            "engine = load_config(None, []).engine; configure_engine_env(engine); _engine_core_env(engine)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'vllm'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
