"""Short content digests that stage keys are made of (ssb/config.py RunConfig.*_key)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def model_digest(name: str) -> str | None:
    """A local model directory's content; None for a hub name or the embedded default. Small files
    count by their bytes, weight files by size and modification time: hashing gigabytes on every
    run would cost more than the stage it guards."""
    root = Path(name).expanduser()
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(file.read_bytes() if stat.st_size < 1 << 20 else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def digest_dir(path: str) -> str:
    """Content hash of an adapter directory: a retrained adapter at the same path is another model."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
