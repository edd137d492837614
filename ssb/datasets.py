"""Datasets known by name: gsm8k, math500, aime24 and svamp, as curation sources
(`data.source=svamp`, with `data.split`) and as benchmarks (`eval.benchmarks`).

A named dataset is read from a local copy when one is there, else from the Hugging Face hub.
The local copy lives in `<data root>/<name>/<split>.jsonl`; the data root is the setting
(`data.data_root`, `eval.data_root`), else $SSB_DATA_ROOT, else a `shared/data` directory
beside the working directory or beside this checkout (where CI puts its copies). The hub
copies carry their own field names and, for SVAMP, their own train/test split (700/300; a
local copy may split otherwise): each entry says how to read them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BENCHMARKS", "DATASETS", "NamedDataset", "NamedSource", "benchmark_label", "data_root", "named_source",
           "split_benchmark"]

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT_ENV = "SSB_DATA_ROOT"


@dataclass(frozen=True)
class NamedDataset:
    local: str  # directory under the data root, holding <split>.jsonl
    hub: str
    # our split name → the hub's (aime24 publishes its only split as "train")
    hub_splits: dict[str, str] = field(default_factory=dict)
    hub_subset: str | None = None
    # the hub copy's field names, where ssb.data's defaults would not find them
    hub_fields: dict[str, str] = field(default_factory=dict)


DATASETS: dict[str, NamedDataset] = {
    "gsm8k": NamedDataset("gsm8k", "openai/gsm8k", {"train": "train", "test": "test"}, "main"),
    "math500": NamedDataset("math500", "HuggingFaceH4/MATH-500", {"test": "test"}),
    "aime24": NamedDataset("aime24", "HuggingFaceH4/aime_2024", {"test": "train"}),
    # SVAMP's hub copy keeps the story (Body) and the question apart; question_concat joins them.
    "svamp": NamedDataset("svamp", "ChilleD/SVAMP", {"train": "train", "test": "test"},
                          hub_fields={"question_field": "question_concat", "answer_field": "Answer", "id_field": "ID"}),
}

# Benchmark name → (dataset, split).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "gsm8k-test": ("gsm8k", "test"),
    "math500": ("math500", "test"),
    "aime24": ("aime24", "test"),
    "svamp": ("svamp", "test"),
}


@dataclass(frozen=True)
class NamedSource:
    """Where a named dataset's split is read from: the fields of a DataConfig."""

    source: str
    split: str
    subset: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


def data_root(setting: str | None = None) -> Path | None:
    """The directory holding local copies of the named datasets, or None when there is none."""
    if setting:
        return Path(setting).expanduser()
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]).expanduser()
    for candidate in (Path.cwd().parent / "shared" / "data", REPO.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def named_source(name: str, split: str, root: str | None = None) -> NamedSource:
    """The local copy of `name`'s `split` when there is one under the data root, else the hub's."""
    d = DATASETS[name]
    base = data_root(root)
    if base is not None and (base / d.local / f"{split}.jsonl").is_file():
        return NamedSource(str(base / d.local), split)
    if split not in d.hub_splits:
        raise ValueError(f"dataset {name!r} has no split {split!r} (it has {sorted(d.hub_splits)})")
    return NamedSource(d.hub, d.hub_splits[split], d.hub_subset, dict(d.hub_fields))


def split_benchmark(spec: str) -> tuple[str, str]:
    """`label=source` → (label, source); a bare name or path is its own source, labelled by
    `benchmark_label`."""
    label, sep, source = spec.partition("=")
    if sep and label.strip() and source.strip():
        return _safe(label.strip()), source.strip()
    if sep:
        raise ValueError(f"benchmark {spec!r}: write name=path (both parts non-empty) or a bare name or path")
    return benchmark_label(spec), spec


_GENERIC_STEMS = {"train", "test", "validation", "val", "dev", "data"}


def benchmark_label(source: str) -> str:
    """A file-name-safe label for a benchmark given without one: a named benchmark keeps its
    name; a file keeps its stem, prefixed by its directory when the stem only names a split
    (…/svamp/test.jsonl → svamp-test); a hub name drops its owner (org/dataset → dataset)."""
    if source in BENCHMARKS:
        return source
    path = Path(source)
    if path.suffix in (".jsonl", ".json", ".parquet"):
        parent = path.parent.name
        label = f"{parent}-{path.stem}" if path.stem in _GENERIC_STEMS and parent else path.stem
    else:
        label = source.rstrip("/").rsplit("/", 1)[-1]
    return _safe(label)


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip(".") or "benchmark"
