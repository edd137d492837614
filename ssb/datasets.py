"""Datasets known by name: gsm8k, math500, aime24 and svamp, as curation sources
(`data.source=svamp`, with `data.split`) and as benchmarks (`eval.benchmarks`).

A named dataset's split is the file `<root>/<name>/<split>.jsonl` under the first data root
that holds it (`data_roots`), in this order:

1. the setting (`data.data_root`, `eval.data_root`), when given;
2. $SSB_DATA_ROOT, when set;
3. the repo's own `data/` (data/README.md): SVAMP train and test, GSM8K test, MATH500, AIME 2024;
4. a `shared/data` directory beside the working directory or beside this checkout (where CI
   keeps its copies, GSM8K train among them);

and, when none holds it, the Hugging Face hub. A root is looked in for each file, so a root
holding only some sets leaves the others to the roots after it. The hub copies carry their own
field names and, for SVAMP, their own train/test split (700/300 where the repo's is 689/311):
each entry says how to read them.

A benchmark's name always means the same problems. `PINNED` holds, for each named benchmark,
the count and digest (`problems_digest`) of the repo's copy, and `check_pinned` refuses a copy
that differs, wherever it was read from (another data root, the hub): the evaluation stops with
a message saying which copy differs and how, rather than filing other problems' accuracy under
the name. Refusing, rather than filing it under another name (`svamp-hub`), keeps every name
`ssb run` and `ssb sweep` look results up by the one in the config. A copy one wants evaluated
anyway is a path benchmark (`mysvamp=/path/svamp/test.jsonl`), labelled as such.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BENCHMARKS", "DATASETS", "PINNED", "BenchmarkMismatch", "NamedDataset", "NamedSource", "Pinned",
           "benchmark_label", "check_pinned", "data_roots", "display_path", "file_sha256", "named_source",
           "problems_digest", "repo_data", "shared_data_dirs", "split_benchmark"]

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


def repo_data() -> Path | None:
    """The repo's own `data/`, or None when this module does not run from a checkout.

    `pip install -e .` (what scripts/setup.sh does) leaves the package in the checkout, so
    REPO is the checkout's root and its data/ is found wherever ssb runs from. A non-editable
    install copies only the packages into site-packages: REPO is then site-packages itself,
    whose `data/` (if any) is no copy of ours, so it is not used (no pyproject.toml beside it)
    and the named sets come from the other roots or the hub, where `check_pinned` still holds
    a named benchmark to the repo's problems (PINNED is code, not data)."""
    data = REPO / "data"
    return data if (REPO / "pyproject.toml").is_file() and data.is_dir() else None


def data_roots(setting: str | None = None) -> list[Path]:
    """The directories that may hold `<name>/<split>.jsonl`, in lookup order (see the module doc)."""
    roots: list[Path] = []
    if setting:
        roots.append(Path(setting).expanduser())
    if os.environ.get(DATA_ROOT_ENV):
        roots.append(Path(os.environ[DATA_ROOT_ENV]).expanduser())
    if (own := repo_data()) is not None:
        roots.append(own)
    roots += [d for d in shared_data_dirs() if d not in roots]
    return roots


def shared_data_dirs() -> list[Path]:
    """The `shared/data` directories beside the working directory and beside the checkout
    that exist (CI lays its copies there; the repo's data/ has no GSM8K train)."""
    candidates = (Path.cwd().parent / "shared" / "data", REPO.parent / "shared" / "data")
    return [d for i, d in enumerate(candidates) if d.is_dir() and d not in candidates[:i]]


def named_source(name: str, split: str, root: str | None = None) -> NamedSource:
    """`name`'s `split` from the first data root holding it, else from the hub."""
    d = DATASETS[name]
    for base in data_roots(root):
        if (base / d.local / f"{split}.jsonl").is_file():
            return NamedSource(str(base / d.local), split)
    if split not in d.hub_splits:
        raise ValueError(f"dataset {name!r} has no split {split!r} (it has {sorted(d.hub_splits)})")
    return NamedSource(d.hub, d.hub_splits[split], d.hub_subset, dict(d.hub_fields))


# -- a benchmark's name means the same problems ----------------------------------------------

@dataclass(frozen=True)
class Pinned:
    """The repo's copy of a named set: data/<file>, its bytes' sha256, and its problems' count
    and digest (`problems_digest`), which any other copy must match to go by the same name."""

    file: str  # under data/
    problems: int
    sha256: str
    problems_sha256: str


# (dataset, split) → the repo's copy (data/README.md lists the same); tests/ssb/test_datasets.py
# checks that data/ holds exactly these.
PINNED: dict[tuple[str, str], Pinned] = {
    ("svamp", "train"): Pinned(
        "svamp/train.jsonl", 689,
        "03383a0d66a8bc6d23d9750c807d7d032bdc0de4550bb798614c1301f75463e4",
        "b593f39168803094d67369906d36260407a8498f326062031c097b9b8cbc5813"),
    ("svamp", "test"): Pinned(
        "svamp/test.jsonl", 311,
        "a91b9dfe00d7c6fc2d927cb2ac5e9297f56b04f18efd79176085a874cc10b676",
        "f33115ec6c5769fb29d9608de8c1271ff7883d48e050569bc832e9d20cb46440"),
    ("gsm8k", "test"): Pinned(
        "gsm8k/test.jsonl", 1319,
        "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
        "23836834d2aedbbc7e950037e9db768996a3b4b13ebed12012466e8bc7d11b1a"),
    ("math500", "test"): Pinned(
        "math500/test.jsonl", 500,
        "84d795ef189609b972faf889443ceef216422504c27b7e615a01c2a075b90563",
        "127c95d115a218d75497eba38bd2a4e9de862a1cd2525a3fc4422c148dfb3d57"),
    ("aime24", "test"): Pinned(
        "aime24/test.jsonl", 30,
        "a924785e02942eaf5ee7f00965c5f64b0abb56b0b679f5b12477859123ee4fee",
        "db9d8c9462719f50f17bcc798b1624cf87eacd35e6ad3a24c8d7171bfefda637"),
}


class BenchmarkMismatch(ValueError):
    """A named benchmark's copy whose problems are not the repo's."""


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split())


def problems_digest(problems: Iterable[object]) -> str:
    """sha256 of the problems as the loader reads them (ssb.data.load_problems: objects with
    `question` and `answer`), normalised so that copies of one set in other formats agree: each
    problem's question and gold answer, Unicode NFC, whitespace runs as one space, one JSON pair
    a line, in file order. Ids are left out (the hub copies number them otherwise); the order is
    kept, because `eval.limit` evaluates the first problems."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([_norm(p.question), _norm(p.answer)], ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (what `sha256sum` prints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def display_path(path: str | Path) -> str:
    """A path as results and reports record it: relative to the checkout when it is in the
    checkout or beside it (data/svamp/test.jsonl, ../shared/data/gsm8k/train.jsonl), else absolute."""
    p = Path(path).expanduser().resolve()
    beside = REPO.parent != Path(REPO.anchor) and p.is_relative_to(REPO.parent)  # not all of / when REPO is /x
    if p.is_relative_to(REPO) or beside:
        return os.path.relpath(p, REPO)
    return str(p)


def check_pinned(dataset: str, split: str, problems: int, digest: str, where: str) -> None:
    """Raises BenchmarkMismatch when the copy of `dataset`'s `split` read from `where` (a path or
    hub name) holds other problems than the repo's: another count or another `problems_digest`.
    A split the repo has no copy of is not checked."""
    pin = PINNED.get((dataset, split))
    if pin is None or (problems, digest) == (pin.problems, pin.problems_sha256):
        return
    how = (f"{problems} problems where the repo's has {pin.problems}" if problems != pin.problems
           else f"the same count ({problems}) but other problems or answers (digest {digest[:12]}…, "
                f"the repo's {pin.problems_sha256[:12]}…)")
    raise BenchmarkMismatch(
        f"{dataset} {split}: the copy read from {where} holds {how}, so it is not the benchmark that name "
        f"means (data/{pin.file}, sha256 {pin.sha256[:12]}…; ssb/datasets.py). Read the repo's copy (a "
        f"checkout's data/, or data.data_root / ${DATA_ROOT_ENV} pointing at a copy of it), or evaluate this "
        f"copy under a name of its own: eval.benchmarks='[my-{dataset}=PATH]'.")


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
