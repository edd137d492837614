"""One committed file of a logit store (a shard or a trace file), read only through the checks
of its manifest entry: its size before reading, its sha256 and row count before anything
parses it. A packed (format-3 or -4) shard is decoded on reading (ssb/store_codec.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ssb import store_codec as codec
from ssb.manifest import ChecksumError


def _size_problem(size: int | None, want: int) -> str:
    return f"{size} bytes, manifest says {want}" + (" (truncated?)" if size is not None and size < want else "")


@dataclass
class Shard:
    """One committed shard and its manifest entry; small and picklable (Ray Data read tasks)."""

    filesystem: pafs.FileSystem
    path: str  # inside `filesystem`
    entry: dict[str, Any]
    manifest: str  # the manifest's location, for messages
    kind: str = "shard"  # or "trace file": what messages call it

    @property
    def name(self) -> str:
        return self.entry["name"]

    @property
    def rows(self) -> int:
        return self.entry["rows"]

    def _fail(self, problem: str) -> ChecksumError:
        return ChecksumError(f"{self.kind} {self.name}: {problem} ({self.manifest})")

    def read_bytes(self, verify: bool = True) -> bytes:
        """The file's bytes; with `verify`, only once size, sha256 and row count match the entry."""
        want = self.entry["bytes"]
        info = self.filesystem.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            raise self._fail("missing from the store")
        if info.type != pafs.FileType.File:
            raise self._fail("not a file")
        if verify and info.size is not None and info.size != want:
            # Before reading: a wrong entry could name a file far larger than any shard.
            raise self._fail(_size_problem(info.size, want))
        try:
            with self.filesystem.open_input_stream(self.path) as f:
                data = f.read()
        except FileNotFoundError as e:
            raise self._fail("missing from the store") from e
        if verify:
            if len(data) != want:  # changed since get_file_info
                raise self._fail(_size_problem(len(data), want))
            if hashlib.sha256(data).hexdigest() != self.entry["sha256"]:
                raise self._fail("sha256 differs from the manifest (corrupted)")
            rows = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
            if rows != self.rows:
                raise self._fail(f"{rows} rows, manifest says {self.rows}")
        return data

    def read_table(self, columns: Sequence[str] | None = None, verify: bool = True) -> pa.Table:
        """The rows parsed from exactly the bytes that were verified. A packed (format-3 or -4) shard's
        top-k comes back decoded, as the format-2 columns topk_ids, topk_logprobs (float32) and
        tail_logprob in their place, so every reader reads every format alike."""
        parquet = pq.ParquetFile(pa.BufferReader(self.read_bytes(verify)))
        names = parquet.schema_arrow.names
        if "packed_ids" not in names:
            return parquet.read(columns=columns)
        if columns is None:
            at = names.index(codec.PACKED_COLUMNS[0])
            columns = [*names[:at], *codec.DECODED_COLUMNS, *(n for n in names[at:] if n not in codec.PACKED_COLUMNS)]
        decoded = [c for c in columns if c in codec.DECODED_COLUMNS]
        packed = [c for c in codec.PACKED_COLUMNS if c in names]  # format 3 has no id_dictionary
        table = parquet.read(columns=[c for c in columns if c not in decoded] + (packed if decoded else []))
        meta = parquet.schema_arrow.metadata or {}
        try:
            top_k, width = int(meta[b"ssb.top_k"]), int(meta[codec.ID_BYTES_KEY])
            arrays = codec.decode_packed(table, top_k, width) if decoded else {}
        except (KeyError, ValueError) as e:
            raise self._fail(f"unreadable packed top-k ({e})") from None
        fields = [codec.DECODED_FIELDS[c] if c in arrays else table.schema.field(c) for c in columns]
        return pa.Table.from_arrays([arrays[c] if c in arrays else table.column(c) for c in columns],
                                    schema=pa.schema(fields, metadata=meta))
