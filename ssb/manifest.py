"""The logit store's manifest: its format, and the check every manifest passes before any
name, size or checksum in it is used (a store may come from another machine or a shared
bucket; a shard name such as `../x` would otherwise lead readers and the orphan sweep
outside the store). ssb/store.py writes and reads it."""

from __future__ import annotations

import re
from typing import Any

from ssb.store_codec import StoreEncoding

# Format 4 packs the top-k (ssb/store_codec.py: adaptive k, quantized log-probs, ids as ranks in
# a per-shard dictionary; the manifest's `encoding` says how); format 3 packed the same way with
# the ids as they are; format 2 holds every top-k entry in float16; all three commit a trace
# file with every entry. Formats 3, 2 and 1 (no traces) are still read.
FORMAT = "ssb-logit-store/4"
FORMAT_PACKED_IDS = "ssb-logit-store/3"  # ids as they are, no per-shard dictionary: read, not resumed
FORMAT_FLOAT16 = "ssb-logit-store/2"
FORMAT_WITHOUT_TRACES = "ssb-logit-store/1"
PACKED_FORMATS = (FORMAT, FORMAT_PACKED_IDS)
TRACED_FORMATS = (FORMAT, FORMAT_PACKED_IDS, FORMAT_FLOAT16)
RESUMABLE_FORMATS = (FORMAT, FORMAT_FLOAT16)
READABLE_FORMATS = (FORMAT, FORMAT_PACKED_IDS, FORMAT_FLOAT16, FORMAT_WITHOUT_TRACES)
MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"shard-\d{5,}\.parquet")
TRACE_NAME = re.compile(r"trace-\d{5,}\.parquet")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class StoreError(Exception):
    pass


class ChecksumError(StoreError):
    pass


class ManifestError(StoreError):
    """manifest.json is malformed: refused before any name, size or checksum in it is used."""


_RUN_KEYS: dict[str, tuple[type, ...]] = {
    "config_hash": (str,), "model": (str,), "tokenizer": (str,), "top_k": (int,), "shards": (list,)}
_ENTRY_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str, type(None)), "rows": (int,), "tokens": (int,), "bytes": (int,),
    "sha256": (str, type(None)), "problem_ids": (list,), "skipped": (dict,)}


def _type_problem(key: str, value: Any, types: tuple[type, ...]) -> str | None:
    # JSON true/false load as bool, a subclass of int: not a count.
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return None
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{key} is {shown}, expected {' or '.join(t.__name__ for t in types)}"


_TRACE_KEYS: dict[str, tuple[type, ...]] = {"name": (str,), "rows": (int,), "bytes": (int,), "sha256": (str,)}


def _trace_problem(entry: dict[str, Any], named: set[str]) -> str | None:
    trace = entry.get("trace")
    if not isinstance(trace, dict):
        return "missing its trace file (key 'trace')" if trace is None else "trace is not an object"
    for key, types in _TRACE_KEYS.items():
        if key not in trace:
            return f"trace: missing key {key!r}"
        if problem := _type_problem(f"trace {key}", trace[key], types):
            return problem
    if not TRACE_NAME.fullmatch(trace["name"]):
        return f"trace name {trace['name']!r} is not a trace file name of this store (trace-NNNNN.parquet)"
    if trace["name"] in named:
        return f"{trace['name']} is named by an earlier entry too"
    named.add(trace["name"])
    if not _SHA256.fullmatch(trace["sha256"]):
        return f"trace sha256 {trace['sha256']!r} is not 64 lowercase hex digits"
    problems = len(entry["problem_ids"]) + len(entry["skipped"])
    if trace["rows"] != problems or trace["bytes"] < 1:
        return f"a trace file with {trace['rows']} rows and {trace['bytes']} bytes for {problems} problems"
    return None


def _entry_problem(entry: Any, named: set[str], traced: bool) -> str | None:
    if not isinstance(entry, dict):
        return f"not an object but {type(entry).__name__}"
    for key, types in _ENTRY_KEYS.items():
        if key not in entry:
            return f"missing key {key!r}"
        if problem := _type_problem(key, entry[key], types):
            return problem
    if traced and (problem := _trace_problem(entry, named)):
        return problem
    name, rows, ids = entry["name"], entry["rows"], entry["problem_ids"]
    if min(rows, entry["tokens"], entry["bytes"]) < 0:
        return "negative rows, tokens or bytes"
    if not all(isinstance(pid, str) for pid in ids) or not all(
            isinstance(pid, str) and isinstance(why, str) for pid, why in entry["skipped"].items()):
        return "problem ids and skip reasons must be strings"
    if name is None:
        if rows or entry["bytes"] or entry["tokens"] or ids or entry["sha256"] is not None:
            return "no file (name null) but rows, tokens, bytes, sha256 or problem_ids given"
        return None
    if not SHARD_NAME.fullmatch(name):
        return f"name {name!r} is not a shard file name of this store (shard-NNNNN.parquet)"
    if name in named:
        return f"{name} is named by an earlier entry too"
    named.add(name)
    if not _SHA256.fullmatch(entry["sha256"] or ""):
        return f"sha256 {entry['sha256']!r} is not 64 lowercase hex digits"
    if rows < 1 or rows != len(ids) or entry["bytes"] < 1:
        return f"a shard file with {rows} rows, {len(ids)} problem ids and {entry['bytes']} bytes"
    return None


_ENCODING_KEYS = ({"mass", "logprob_bits"}, {"mass", "logprob_bits", "entry_nats", "temperature"})


def _encoding_problem(encoding: Any) -> str | None:
    # entry_nats and temperature come together (a store choosing entries by tempered KL) or not at all.
    if not isinstance(encoding, dict) or set(encoding) not in _ENCODING_KEYS:
        return "expected an object with mass and logprob_bits (and entry_nats with temperature)"
    try:
        StoreEncoding(**encoding)
    except (TypeError, ValueError) as e:
        return str(e)
    return None


def check_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """`manifest` if it is one this module writes; ManifestError naming `where` and the entry."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{where}: not a JSON object but {type(manifest).__name__}")
    if manifest.get("format") not in READABLE_FORMATS:
        raise ManifestError(f"{where}: format {manifest.get('format')!r}, expected one of {READABLE_FORMATS}")
    for key, types in _RUN_KEYS.items():
        problem = f"missing key {key!r}" if key not in manifest else _type_problem(key, manifest[key], types)
        if problem:
            raise ManifestError(f"{where}: {problem}")
    if manifest["top_k"] < 1:
        raise ManifestError(f"{where}: top_k {manifest['top_k']} < 1")
    if manifest["format"] in PACKED_FORMATS and (problem := _encoding_problem(manifest.get("encoding"))):
        raise ManifestError(f"{where}: encoding: {problem}")
    named: set[str] = set()
    for i, entry in enumerate(manifest["shards"]):
        if problem := _entry_problem(entry, named, manifest["format"] in TRACED_FORMATS):
            label = f" ({entry['name']!r})" if isinstance(entry, dict) and isinstance(entry.get("name"), str) else ""
            raise ManifestError(f"{where}: shards[{i}]{label}: {problem}")
    return manifest
