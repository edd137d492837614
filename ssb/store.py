"""The logit store: curated examples as Parquet shards, committed through a JSON manifest.

A run's store is one directory (a local path, file://, s3://, gs://, or a path inside a
given pyarrow filesystem) holding `shard-00000.parquet`, ... and `manifest.json`. The
manifest is the commit point: a shard exists for readers only once the manifest names it,
with its row count, byte size and sha256. Files the manifest does not name (a writer killed
mid-commit) are ignored by readers and deleted by the next `create_or_resume`.

Only one writer per store is supported (the curation driver): two writers would each
rewrite the manifest from their own copy and lose the other's shards. Readers may run at
any time.

Problems rejected during curation are recorded with their reason, so a resumed run skips
them too. A commit holding only skips writes no Parquet file: its manifest entry has
`"name": null` (rows 0, bytes 0, sha256 null).

The teacher's top-k is written packed (format 4, ssb/store_codec.py: per position the entries
worth their bytes, quantized log-probs, ids ranked in a per-shard dictionary; the manifest's
`encoding`; format-3 stores, ids as they are, are still read), or with
`encoding=None` every entry in float16 (format 2). Readers see one shape either way: a packed
shard decodes to the format-2 columns. A store is resumed only in its own format.

A manifest is checked as a whole when a store is opened (ssb/manifest.py; ManifestError names
the file and the entry). Shards are read through `Shard` (ssb/shard.py), which compares the
file's size before reading it and its sha256 and row count before anything parses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ssb import store_codec as codec
from ssb import trace as traces_
from ssb.manifest import (  # noqa: F401
    FORMAT,
    FORMAT_FLOAT16,
    MANIFEST,
    PACKED_FORMATS,
    RESUMABLE_FORMATS,
    SHARD_NAME,
    TRACE_NAME,
    TRACED_FORMATS,
    ChecksumError,
    ManifestError,
    StoreError,
    check_manifest,
)
from ssb.records import CuratedExample
from ssb.shard import Shard
from ssb.store_codec import DEFAULT_ENCODING, StoreEncoding
from ssb.trace import ProblemTrace

_TMP_PREFIX = ".tmp-"


def _list(value_type: pa.DataType) -> pa.DataType:
    # "element" is the item name Parquet's compliant nested type reads back: schemas compare equal.
    return pa.list_(pa.field("element", value_type, nullable=False))


_STR, _INTS = pa.string(), _list(pa.int32())
SCHEMA = pa.schema(
    [pa.field(name, dtype, nullable=name == "incorrect_answer") for name, dtype in [
        ("problem_id", _STR), ("question", _STR), ("answer", _STR),
        ("student_prompt_ids", _INTS), ("teacher_prompt_ids", _INTS), ("response_ids", _INTS),
        ("response_text", _STR), ("num_tokens", pa.int32()),
        ("topk_ids", _INTS),  # [T*k], row-major
        # float16 halves the bytes; its rounding (<= 2^-11 relative, |delta p| < 2e-4) is
        # below the noise between two engines' log-probs for the same text.
        ("topk_logprobs", _list(pa.float16())), ("tail_logprob", _list(pa.float32())),
        ("correct_rollout", _STR), ("incorrect_rollout", _STR), ("incorrect_answer", _STR),
        ("model", _STR), ("tokenizer", _STR), ("config_hash", _STR), ("seed", pa.int64()),
        ("meta", _STR),  # JSON object
    ]],
    metadata={"ssb.format": FORMAT_FLOAT16},
)
# Format 4: the top-k packed (ssb/store_codec.py) in place of the three top-k columns.
_AT = SCHEMA.names.index(codec.DECODED_COLUMNS[0])
PACKED_SCHEMA = pa.schema([*list(SCHEMA)[:_AT], *codec.PACKED_FIELDS,
                           *(f for f in list(SCHEMA)[_AT:] if f.name not in codec.DECODED_COLUMNS)],
                          metadata={"ssb.format": FORMAT})
# Columns computed from a CuratedExample's fields rather than copied from one.
_DERIVED = ("num_tokens", "topk_ids", "topk_logprobs", "tail_logprob", "meta")

# Measured on Zipf-like synthetic data (T=200, k=20): ~72-79 bytes per response token in the
# whole file, against ~93 with Arrow's defaults. Ids repeat across positions, so a dictionary
# beats plain/delta; log-probs have no repeats but their exponent bytes do, which
# byte-stream-split exposes to zstd. Nested columns must be named by their leaf path.
_WRITE_OPTIONS: dict[str, Any] = dict(
    compression="zstd",
    compression_level=3,
    use_dictionary=["topk_ids.list.element", "response_ids.list.element", "model", "tokenizer",
                    "config_hash", "meta", "incorrect_answer"],
    column_encoding={"topk_logprobs.list.element": "BYTE_STREAM_SPLIT",
                     "tail_logprob.list.element": "BYTE_STREAM_SPLIT"},
    write_statistics=False,  # min/max of token ids and log-probs prune nothing
)
# Packed formats, measured on the default run's store (bench/store_size.py): zstd level 19 takes ~1.4
# bytes a token off level 3's files, for a few milliseconds a shard at write and nothing at read;
# the Arrow schema pyarrow keeps in every footer (~2 KB: 4 bytes a token in a 500-token shard) is
# left out, the Parquet schema alone reads back the same types (no float16 here); dictionaries
# cost more than they save once the top-k ids are packed (~370 bytes a shard, a page each).
_PACKED_WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd", "compression_level": 19, "write_statistics": False, "store_schema": False,
    "use_dictionary": False,
}


def example_arrays(row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(topk_ids [T,k] int64, topk_logprobs [T,k] float32, tail [T] float32) of a table row."""
    num_tokens = int(row["num_tokens"])
    ids = np.asarray(row["topk_ids"], dtype=np.int64)
    if num_tokens <= 0 or ids.size % num_tokens:
        raise ValueError(f"row {row.get('problem_id')!r}: {ids.size} top-k ids for {num_tokens} tokens")
    k = ids.size // num_tokens
    logprobs = np.asarray(row["topk_logprobs"], dtype=np.float32).reshape(num_tokens, k)
    tail = np.asarray(row["tail_logprob"], dtype=np.float32).reshape(num_tokens)
    return ids.reshape(num_tokens, k), logprobs, tail


def _list_column(chunks: Sequence[Any], field: pa.Field) -> pa.Array:
    dtype = field.type.value_type.to_pandas_dtype()
    arrays = [np.asarray(chunk, dtype=dtype) for chunk in chunks]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise StoreError(f"{field.name}: too many values for one shard; append fewer examples at a time")
    values = pa.array(np.concatenate(arrays) if arrays else np.zeros(0, dtype))
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values, type=field.type)


class LogitStore:
    """A run's curated examples; build with `create_or_resume` (writer) or `open` (reader)."""

    def __init__(self, fs: pafs.FileSystem, root: str, uri: str, manifest: dict[str, Any], writable: bool):
        self.filesystem = fs
        self.root = root  # the directory's path inside `filesystem`
        self.uri = uri
        self.manifest = manifest
        self._writable = writable

    # -- construction ---------------------------------------------------------------------

    @staticmethod
    def _resolve(uri: str | os.PathLike[str], filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str, str]:
        uri = os.fspath(uri)
        if filesystem is not None:
            return filesystem, uri.rstrip("/"), uri.rstrip("/")
        if "://" not in uri:
            path = os.path.abspath(uri)  # from_uri rejects relative paths
            return pafs.LocalFileSystem(), path, path
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/"), uri.rstrip("/")

    @classmethod
    def create_or_resume(
        cls, uri: str, *, config_hash: str, model: str, tokenizer: str, top_k: int,
        filesystem: pafs.FileSystem | None = None, encoding: StoreEncoding | None = DEFAULT_ENCODING,
    ) -> LogitStore:
        """Open `uri` for writing: a new store, or the same run's store to resume.

        `encoding`: how a packed (format-4) store packs the top-k; None writes format 2 (every top-k
        log-prob in float16). Raises StoreError when the directory holds a store of another
        run (config hash, model, tokenizer, top-k or encoding differ) or of another format.
        Deletes orphan files left by a killed writer.
        """
        fs, root, norm_uri = cls._resolve(uri, filesystem)
        wanted: dict[str, Any] = {"config_hash": config_hash, "model": model, "tokenizer": tokenizer, "top_k": int(top_k)}
        if encoding is not None:
            wanted["encoding"] = encoding.to_json()
        manifest = cls._read_manifest(fs, root, norm_uri)
        if manifest is None:
            fs.create_dir(root, recursive=True)
            manifest = {"format": FORMAT if encoding else FORMAT_FLOAT16, **wanted,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "shards": []}
            store = cls(fs, root, norm_uri, manifest, writable=True)
            store._write_manifest()
        else:
            diffs = [f"{key}: store has {manifest.get(key)!r}, this run has {value!r}"
                     for key, value in wanted.items() if manifest.get(key) != value]
            if manifest["format"] not in RESUMABLE_FORMATS:
                why = "before traces were kept" if manifest["format"] not in TRACED_FORMATS else "by an earlier version"
                raise StoreError(f"store at {norm_uri} is {manifest['format']}, made {why}: "
                                 "it can be read and trained on, but not resumed; curate into another run directory")
            if (manifest["format"] == FORMAT) != (encoding is not None):
                packed = manifest["format"] == FORMAT
                raise StoreError(f"store at {norm_uri} is {manifest['format']} ({'packed' if packed else 'float16'} "
                                 f"top-k) and this run writes {FORMAT_FLOAT16 if packed else FORMAT}: resume it with "
                                 f"curate.store.packed={'true' if packed else 'false'}, or curate into another run directory")
            if diffs:
                raise StoreError(f"store at {norm_uri} belongs to another run ({'; '.join(diffs)}); "
                                 "use another run directory, or the original config to resume")
            store = cls(fs, root, norm_uri, manifest, writable=True)
        store._remove_orphans()
        return store

    @classmethod
    def open(
        cls, uri: str, *, filesystem: pafs.FileSystem | None = None, allow_empty: bool = False
    ) -> LogitStore:
        """Open a store read-only. StoreError if there is none, or if it has no rows
        (unless `allow_empty`): training on nothing is always a mistake upstream."""
        fs, root, norm_uri = cls._resolve(uri, filesystem)
        manifest = cls._read_manifest(fs, root, norm_uri)
        if manifest is None:
            raise StoreError(f"no store at {norm_uri} (no {MANIFEST})")
        store = cls(fs, root, norm_uri, manifest, writable=False)
        if not allow_empty and not store.kept_ids():
            raise StoreError(f"store at {norm_uri} is empty: no examples committed "
                             f"({len(store.done_ids())} problems skipped)")
        return store

    @staticmethod
    def _read_manifest(fs: pafs.FileSystem, root: str, uri: str) -> dict[str, Any] | None:
        path = f"{root}/{MANIFEST}"
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(path) as f:
            data = f.read()
        try:
            manifest = json.loads(data)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
            raise ManifestError(f"{uri}/{MANIFEST}: not valid JSON ({e})") from None
        return check_manifest(manifest, f"{uri}/{MANIFEST}")

    # -- writing --------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def _fsync(self, path: str) -> None:
        # Only a local disk can lose a renamed-but-unflushed file on power loss; object
        # stores make a PUT durable before they acknowledge it.
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_atomic(self, name: str, data: bytes) -> None:
        tmp = self._path(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{name}")
        with self.filesystem.open_output_stream(tmp) as f:
            f.write(data)
        self._fsync(tmp)
        self.filesystem.move(tmp, self._path(name))
        self._fsync(self.root)

    def _write_manifest(self) -> None:
        self._write_atomic(MANIFEST, json.dumps(self.manifest, indent=1).encode())

    def _remove_orphans(self) -> None:
        named = {entry["name"] for entry in self.manifest["shards"] if entry["name"]}
        named |= {entry["trace"]["name"] for entry in self.manifest["shards"] if "trace" in entry}
        for info in self.filesystem.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
            name = posixpath.basename(info.path)
            committed_name = SHARD_NAME.fullmatch(name) or TRACE_NAME.fullmatch(name)
            if info.type == pafs.FileType.File and (
                name.startswith(_TMP_PREFIX) or (committed_name and name not in named)
            ):
                self.filesystem.delete_file(info.path)

    def _check(self, ex: CuratedExample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        for key in ("config_hash", "model", "tokenizer"):
            if getattr(ex, key) != self.manifest[key]:
                raise ValueError(
                    f"{ex.problem_id}: {key} {getattr(ex, key)!r} != store's {self.manifest[key]!r}"
                )
        ids = np.asarray(ex.topk_ids, dtype=np.int64)
        logprobs = np.asarray(ex.topk_logprobs, dtype=np.float32)
        tail = np.asarray(ex.tail_logprob, dtype=np.float32)
        shape = (len(ex.response_ids), self.manifest["top_k"])
        if shape[0] == 0 or ids.shape != shape or logprobs.shape != shape or tail.shape != shape[:1]:
            raise ValueError(f"{ex.problem_id}: topk_ids {ids.shape}, topk_logprobs {logprobs.shape}, "
                             f"tail {tail.shape}; expected [T, k] = {shape} with T = len(response_ids) > 0")
        if ids.min() < 0 or ids.max() > np.iinfo(np.int32).max:
            raise ValueError(f"{ex.problem_id}: top-k ids must be int32 and >= 0")
        return ids.reshape(-1), logprobs.reshape(-1), tail  # _list_column casts to the column types

    def _to_table(self, examples: Sequence[CuratedExample]) -> pa.Table:
        checked = [self._check(ex) for ex in examples]
        k = self.manifest["top_k"]
        derived: dict[str, Any] = {
            "num_tokens": [len(ex.response_ids) for ex in examples],
            "meta": [json.dumps(ex.meta, sort_keys=True) for ex in examples],
        }
        # The top-k in the file's own metadata lets a lone shard be read without the manifest.
        extra = {b"ssb.top_k": str(k).encode()}
        if (encoding := self.encoding) is None:
            schema = SCHEMA
            derived.update(topk_ids=[c[0] for c in checked], topk_logprobs=[c[1] for c in checked],
                           tail_logprob=[c[2] for c in checked])
        else:
            schema = PACKED_SCHEMA
            packed = [codec.pack_row(ids.reshape(-1, k), lp.reshape(-1, k), tail, encoding) for ids, lp, tail in checked]
            width = codec.id_bytes(packed)
            derived.update(codec.packed_columns(packed, k, width))
            extra[codec.ID_BYTES_KEY] = str(width).encode()
        columns = []
        for field in schema:
            values = derived[field.name] if field.name in derived else [getattr(ex, field.name) for ex in examples]
            if isinstance(values, pa.Array):
                columns.append(values)
            else:
                is_list = pa.types.is_list(field.type)
                columns.append(_list_column(values, field) if is_list else pa.array(values, field.type))
        return pa.Table.from_arrays(columns, schema=schema.with_metadata({**schema.metadata, **extra}))

    @property
    def encoding(self) -> StoreEncoding | None:
        """How this store packs the top-k (formats 3, 4); None: every entry in float16 (formats 1, 2)."""
        return StoreEncoding(**self.manifest["encoding"]) if self.manifest["format"] in PACKED_FORMATS else None

    def append(
        self, examples: Sequence[CuratedExample], skipped: Mapping[str, str] | None = None,
        traces: Sequence[ProblemTrace] | None = None,
    ) -> dict | None:
        """Commit one shard of accepted examples plus skipped problems {id: reason}, and the
        trace of every one of those problems (one trace file per entry). Curation passes every
        problem's whole trace; without `traces` (a store built from examples alone) each kept
        example's trace is what the example holds and a skip's is its reason.

        Problems already done (kept or skipped in a committed shard) are dropped, as are
        repeats inside `examples`. Returns the new manifest entry, or None if nothing new.
        Write order: Parquet files to temp names, moved to their final names, then the manifest
        via temp + move, so a crash at any point leaves the previous manifest valid.
        """
        if not self._writable:
            raise StoreError(f"store at {self.uri} was opened read-only")
        done = self.done_ids()
        kept: dict[str, CuratedExample] = {}
        for ex in examples:
            if ex.problem_id not in done and ex.problem_id not in kept:
                kept[ex.problem_id] = ex
        skips = {pid: reason.value if isinstance(reason, Enum) else str(reason)
                 for pid, reason in (skipped or {}).items() if pid not in done}
        if both := sorted(set(kept) & set(skips)):
            raise ValueError(f"problems both kept and skipped in one append: {both[:5]}")
        if not kept and not skips:
            return None
        if traces is None:
            traces = [*map(traces_.trace_of_example, kept.values()),
                      *(ProblemTrace(pid, "", "", "", reason) for pid, reason in skips.items())]
        traced = self._traces_for([*kept, *skips], traces)
        entry: dict[str, Any] = {"name": None, "rows": 0, "tokens": 0, "bytes": 0, "sha256": None,
                                 "problem_ids": list(kept), "skipped": skips}
        if kept:
            options = _WRITE_OPTIONS if self.encoding is None else _PACKED_WRITE_OPTIONS
            entry.update(self._write_parquet(f"shard-{len(self.shard_uris()):05d}.parquet",
                                             self._to_table(list(kept.values())), options))
            entry["tokens"] = sum(len(ex.response_ids) for ex in kept.values())
        entry["trace"] = self._write_parquet(f"trace-{len(self.manifest['shards']):05d}.parquet",
                                             traces_.to_table(traced), traces_.WRITE_OPTIONS)
        self.manifest["shards"].append(entry)
        try:
            self._write_manifest()
        except BaseException:
            self.manifest["shards"].pop()  # not committed: keep memory in step with the disk
            raise
        return entry

    def _write_parquet(self, name: str, table: pa.Table, options: dict[str, Any]) -> dict[str, Any]:
        """`table` written atomically as `name`: its manifest fields (name, rows, bytes, sha256)."""
        buf = pa.BufferOutputStream()
        with pq.ParquetWriter(buf, table.schema, **options) as writer:
            writer.write_table(table)
            if not options.get("store_schema", True) and table.schema.metadata:
                writer.add_key_value_metadata(table.schema.metadata)  # else dropped with the Arrow schema
        data = buf.getvalue().to_pybytes()
        self._write_atomic(name, data)
        return {"name": name, "rows": table.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    @staticmethod
    def _traces_for(problem_ids: list[str], traces: Sequence[ProblemTrace]) -> list[ProblemTrace]:
        """The traces of exactly the problems an entry commits, in its order: none missing."""
        by_id = {t.problem_id: t for t in traces}
        missing = [pid for pid in problem_ids if pid not in by_id]
        if missing:
            raise ValueError(f"no trace for {len(missing)} of the problems to commit: {missing[:5]}")
        return [by_id[pid] for pid in problem_ids]

    # -- reading --------------------------------------------------------------------------

    def _files(self) -> list[dict[str, Any]]:
        return [entry for entry in self.manifest["shards"] if entry["name"]]

    def kept_ids(self) -> set[str]:
        return {pid for entry in self.manifest["shards"] for pid in entry["problem_ids"]}

    def done_ids(self) -> set[str]:
        return self.kept_ids() | {pid for entry in self.manifest["shards"] for pid in entry["skipped"]}

    def shard_uris(self) -> list[str]:
        """Committed shard files in commit order (paths inside `filesystem` when one was given)."""
        return [f"{self.uri}/{entry['name']}" for entry in self._files()]

    def shard_paths(self) -> list[str]:
        """The same shards as paths inside `self.filesystem`; unverified, unlike `shards()`."""
        return [self._path(entry["name"]) for entry in self._files()]

    def shards(self) -> list[Shard]:
        """Committed shards in commit order, each read through its manifest checks."""
        return [Shard(self.filesystem, self._path(entry["name"]), entry, f"{self.uri}/{MANIFEST}")
                for entry in self._files()]

    def trace_files(self) -> list[Shard] | None:
        """Every entry's trace file, in commit order; None for a store made before traces."""
        if self.manifest["format"] not in TRACED_FORMATS:
            return None
        return [Shard(self.filesystem, self._path(entry["trace"]["name"]), entry["trace"], f"{self.uri}/{MANIFEST}",
                      kind="trace file") for entry in self.manifest["shards"]]

    def verify(self) -> None:
        """Re-hash every committed shard and trace file; ChecksumError names the first missing/bad one."""
        for shard in [*self.shards(), *(self.trace_files() or [])]:
            shard.read_bytes()

    def _tables(self, verify: bool) -> Iterator[pa.Table]:
        for shard in self.shards():
            yield shard.read_table(verify=verify)

    def read_table(self, verify: bool = True) -> pa.Table:
        """All committed rows; with `verify`, a ChecksumError before anything bad is read."""
        tables = list(self._tables(verify))
        return pa.concat_tables(tables) if tables else SCHEMA.empty_table()

    def iter_examples(self) -> Iterator[CuratedExample]:
        """Every committed example (verified), one shard in memory at a time."""
        for table in self._tables(verify=True):
            for row in table.to_pylist():
                ids, logprobs, tail = example_arrays(row)
                yield CuratedExample(
                    **{key: value for key, value in row.items() if key not in _DERIVED},
                    topk_ids=ids.tolist(), topk_logprobs=logprobs.tolist(), tail_logprob=tail.tolist(),
                    meta=json.loads(row["meta"]),
                )

    def summary(self) -> dict[str, Any]:
        files = self._files()
        tokens = sum(entry["tokens"] for entry in files)
        size = sum(entry["bytes"] for entry in files)
        reasons = Counter(reason for entry in self.manifest["shards"] for reason in entry["skipped"].values())
        traces = [entry["trace"] for entry in self.manifest["shards"] if "trace" in entry]
        trace_bytes, traced = sum(t["bytes"] for t in traces), sum(t["rows"] for t in traces)
        return {"rows": sum(entry["rows"] for entry in files), "shards": len(files), "tokens": tokens,
                "bytes": size, "bytes_per_token": size / tokens if tokens else None,
                "skipped": dict(reasons), "trace_bytes": trace_bytes,
                "trace_bytes_per_problem": trace_bytes / traced if traced else None}
