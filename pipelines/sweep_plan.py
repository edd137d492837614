"""`ssb sweep`'s command line: axes from overrides, rounds, settings and their names, and the
plan of every setting with its validated config, made before anything is written or started.

An override whose value has a comma outside brackets and quotes is a sweep axis; every
combination of the axes' values (times each of `--rounds`) is a setting. Other overrides apply
to all. Only training settings (train.*) can be axes: a sweep compares them on one store with
one evaluation, so what the store or the evaluation depends on stays fixed.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass
from pathlib import Path

from ssb.config import RunConfig, apply_overrides, parse_override
from ssb.layout import RunLayout

# The sweep's tables, plot and records are written with local file operations.
STAGE = "ssb sweep (curate once, train and evaluate each setting, compare)"
BASE = "base"
AXIS_SECTION = "train."
MAX_NAME = 120  # characters of a setting's directory name, before a hash stands in for the rest
_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+-]")
_OPEN, _CLOSE = "[{(", "]})"


@dataclass(frozen=True)
class Axis:
    key: str  # dotted, e.g. train.ce_weight
    values: tuple[str, ...]  # as given, each parsed like an override's value


@dataclass(frozen=True)
class Setting:
    name: str  # the setting's label in results and tables, e.g. "ce_weight=0.5,rounds=2"
    values: tuple[tuple[str, str], ...]  # (axis key, value as given)
    rounds: int
    train_name: str  # its directory under <run_dir>/sweep/, shared by its rounds values
    cfg: RunConfig  # run_dir: that directory; train.store: the shared store


@dataclass
class SweepPlan:
    base: RunConfig
    axes: list[Axis]
    rounds: list[int]
    settings: list[Setting]

    @property
    def layout(self) -> RunLayout:
        return self.base.layout


def split_values(text: str) -> list[str]:
    """`text` cut at its commas outside [], {}, () and quotes: `0,0.5` → 2 values, `[a,b]` → 1."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def split_axes(overrides: list[str]) -> tuple[list[str], list[Axis]]:
    """(overrides that apply to every setting, sweep axes), in the order given."""
    plain: list[str] = []
    axes: list[Axis] = []
    for item in overrides:
        key, value = parse_override(item)  # the one reading of an override: a malformed one fails here
        raw = item.split("=", 1)[1]  # as given: an axis's commas are read before its values' YAML is
        values = split_values(raw) if isinstance(value, str) else [raw]
        if len(values) == 1:
            plain.append(item)
            continue
        if any(v == "" for v in values):
            raise ValueError(f"sweep axis {key}={raw}: an empty value (values are separated by single commas)")
        if len(set(values)) < len(values):
            raise ValueError(f"sweep axis {key}={raw}: a value is given twice")
        axes.append(Axis(key, tuple(values)))
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"sweep axis {key} is given twice: give all its values in one override ({key}=a,b,c)")
        if key in {parse_override(p)[0] for p in plain}:
            raise ValueError(f"{key} is given both as a sweep axis and as a single value")
        _check_axis_key(key)
    return plain, axes


def _check_axis_key(key: str) -> None:
    if key == "rounds":
        raise ValueError("rounds is not a setting: sweep it with --rounds 1,2")
    if key == "train.store":
        raise ValueError("train.store cannot be swept: a sweep trains every setting on its run directory's store")
    if not key.startswith(AXIS_SECTION):
        raise ValueError(f"{key} cannot be a sweep axis: a sweep compares training settings (train.*) on one "
                         "curated store with one evaluation (curation's and evaluation's settings stay fixed; "
                         "use --rounds 1,2 for bootstrapping rounds). A single value with a comma is quoted: "
                         f"{key}='a, b'")


def parse_rounds(text: str) -> list[int]:
    """`--rounds 1,2` → [1, 2]: each a whole number ≥ 1, in increasing order."""
    rounds = []
    for part in text.split(","):
        try:
            r = int(part.strip())
        except ValueError:
            raise ValueError(f"rounds {text!r}: {part.strip()!r} is not a whole number") from None
        if r < 1:
            raise ValueError(f"rounds {text!r}: {r}: need at least 1")
        rounds.append(r)
    if len(set(rounds)) < len(rounds):
        raise ValueError(f"rounds {text!r}: a value is given twice")
    return sorted(rounds)


def setting_name(values: tuple[tuple[str, str], ...], rounds: int | None) -> str:
    """`ce_weight=0.5,temperature=1,rounds=2`, safe as a directory name and as an evaluation label."""
    parts = [f"{key.removeprefix(AXIS_SECTION)}={value}" for key, value in values]
    if rounds is not None:
        parts.append(f"rounds={rounds}")
    name = _UNSAFE.sub("_", ",".join(parts)) or "default"
    if name.startswith("."):
        name = "_" + name[1:]
    if len(name) > MAX_NAME:
        name = name[:MAX_NAME - 17] + "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return name


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """`cfg` with dotted overrides laid over it, read as every `ssb` command reads them."""
    return RunConfig.model_validate(apply_overrides(cfg.model_dump(mode="json"), overrides))


def plan_sweep(base: RunConfig, axes: list[Axis], rounds: list[int] | None = None) -> SweepPlan:
    """Every setting with its validated config, or ValueError (pydantic's for a bad value)
    before anything is written or started."""
    rounds = sorted(rounds or [1])
    layout = base.layout
    layout.local(STAGE)
    if base.train.store:
        raise ValueError(f"train.store={base.train.store}: a sweep trains on its run directory's own store "
                         f"({layout.curated}); to sweep on an earlier run's store, give that run's --run-dir")
    if not axes and len(rounds) == 1:
        raise ValueError("nothing to sweep: give a training setting with several values (train.ce_weight=0,1) "
                         "or several rounds (--rounds 1,2); `ssb run` runs a single setting")
    store = _shared_store(base)
    show_rounds = len(rounds) > 1 or rounds != [1]
    settings: list[Setting] = []
    for combo in itertools.product(*[[(a.key, v) for v in a.values] for a in axes]):
        values = tuple(combo)
        train_name = setting_name(values, None)
        cfg = with_overrides(base, [f"{k}={v}" for k, v in values])
        # Set, not parsed: a path is not read as YAML.
        cfg = cfg.model_copy(update={"run_dir": layout.sweep_setting(train_name).root,
                                     "train": cfg.train.model_copy(update={"store": store})})
        for r in rounds:
            settings.append(Setting(setting_name(values, r if show_rounds else None), values, r, train_name, cfg))
    names = [s.name for s in settings]
    for name in names:
        if names.count(name) > 1 or name == BASE:
            raise ValueError(f"two settings would share the name {name!r}: give values that differ in letters or "
                             "digits")
    return SweepPlan(base, axes, rounds, settings)


def _shared_store(base: RunConfig) -> str:
    # Absolute: the training's resolved config then names the very store it read.
    return str(Path(base.store_dir).resolve())
