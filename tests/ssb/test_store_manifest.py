"""A crafted or damaged manifest.json is refused, naming the file and the entry, by every
reader (open, the resuming writer, the API's examples route) before any path, size or
checksum in it is used; a shard's size is compared before the shard is read."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pytest
from fastapi import HTTPException
from fsspec.implementations.local import LocalFileSystem

from services.examples import read_examples
from ssb.store import MANIFEST, ChecksumError, LogitStore, ManifestError
from tests.ssb.test_store import RUN, make_example

Edit = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Edit:
    """Set manifest[path] ("shards.0.name" style) to value; return the manifest."""
    def edit(manifest: dict[str, Any]) -> Any:
        *parents, last = path.split(".")
        node: Any = manifest
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
        return manifest
    return edit


def _drop(path: str) -> Edit:
    def edit(manifest: dict[str, Any]) -> Any:
        *parents, last = path.split(".")
        node: Any = manifest
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]
        return manifest
    return edit


# (edit, what the message must say besides the manifest's location). Entry 0 is a shard,
# entry 1 a skip-only commit, entry 2 another shard.
CRAFTED: dict[str, tuple[Edit, str]] = {
    "name with ..": (_set("shards.0.name", "../outside.parquet"), r"shards\[0\] \('\.\./outside\.parquet'\): name"),
    "name in a subdirectory": (_set("shards.2.name", "x/../shard-00002.parquet"), r"shards\[2\].*not a shard file name"),
    "absolute path": (_set("shards.0.name", "/etc/passwd"), r"shards\[0\] \('/etc/passwd'\).*not a shard file name"),
    "name twice": (_set("shards.2.name", "shard-00000.parquet"), r"shards\[2\].*named by an earlier entry"),
    "negative size": (_set("shards.0.bytes", -1), r"shards\[0\].*negative"),
    "rows not the problem ids": (_set("shards.2.rows", 5), r"shards\[2\].*5 rows, 1 problem ids"),
    "missing sha256": (_drop("shards.0.sha256"), r"shards\[0\].*missing key 'sha256'"),
    "missing shards": (_drop("shards"), r"missing key 'shards'"),
    "missing top_k": (_drop("top_k"), r"missing key 'top_k'"),
    "rows as a string": (_set("shards.0.rows", "1"), r"shards\[0\].*rows is '1', expected int"),
    "size as a float": (_set("shards.0.bytes", 1.5), r"shards\[0\].*bytes is 1\.5, expected int"),
    "top_k as a bool": (_set("top_k", True), r"top_k is True, expected int"),
    "shards as an object": (_set("shards", {}), r"shards is \{\}, expected list"),
    "entry as a list": (_set("shards.1", ["shard-00001.parquet"]), r"shards\[1\]: not an object but list"),
    "name as a number": (_set("shards.0.name", 7), r"shards\[0\]: name is 7, expected str or NoneType"),
    "problem id as a number": (_set("shards.0.problem_ids", [1]), r"shards\[0\].*must be strings"),
    "sha256 not hex": (_set("shards.0.sha256", "../" * 21 + "a"), r"shards\[0\].*not 64 lowercase hex"),
    "skip-only entry with rows": (_set("shards.1.rows", 3), r"shards\[1\].*no file \(name null\)"),
    "not an object": (lambda manifest: [manifest], r"not a JSON object but list"),
    "another format": (_set("format", "ssb-logit-store/0"), r"format 'ssb-logit-store/0'"),
}


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    store = LogitStore.create_or_resume(str(tmp_path / "store"), **RUN)
    store.append([make_example("a", rng)])
    store.append([], skipped={"s": "teacher_wrong"})
    store.append([make_example("b", rng)])
    return tmp_path / "store"


def _refusals(store_dir: Path) -> list[Exception]:
    """What each reader raises: open, the resuming writer, the API's examples route."""
    raised: list[Exception] = []
    for read in (lambda: LogitStore.open(str(store_dir)),
                 lambda: LogitStore.create_or_resume(str(store_dir), **RUN),
                 lambda: read_examples(str(store_dir), 0, 10)):
        with pytest.raises((ManifestError, HTTPException)) as info:
            read()
        raised.append(info.value)
    return raised


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_manifest_is_refused_by_name(store_dir: Path, case: str) -> None:
    edit, expected = CRAFTED[case]
    outside = store_dir.parent / "outside.parquet"
    outside.write_bytes(b"not for this store")
    path = store_dir / MANIFEST
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    before = sorted(p.name for p in store_dir.iterdir())

    opened, resumed, served = _refusals(store_dir)
    for exc in (opened, resumed):
        assert str(path) in str(exc), exc
        assert re.search(expected, str(exc)), exc
    assert isinstance(served, HTTPException) and served.status_code == 409
    assert str(path) in served.detail and re.search(expected, served.detail), served.detail
    assert sorted(p.name for p in store_dir.iterdir()) == before  # the writer swept nothing
    assert outside.read_bytes() == b"not for this store"


def test_manifest_that_is_not_json_is_refused(store_dir: Path) -> None:
    (store_dir / MANIFEST).write_text('{"format": "ssb-logit-store/1", "shards": [')
    for exc in _refusals(store_dir):
        assert f"{store_dir / MANIFEST}: not valid JSON" in str(getattr(exc, "detail", exc))


class _Recording(LocalFileSystem):
    """The local disk, noting every file opened (to see what was read)."""

    cachable = False  # fsspec would hand every test the same instance

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []

    def _open(self, path: str, *args: Any, **kwargs: Any) -> Any:
        self.opened.append(path)
        return super()._open(path, *args, **kwargs)


@pytest.mark.parametrize("wrong", ["larger", "smaller"])
def test_wrong_size_is_refused_before_the_shard_is_read(store_dir: Path, wrong: str) -> None:
    path = store_dir / MANIFEST
    manifest = json.loads(path.read_text())
    true_size = manifest["shards"][2]["bytes"]
    manifest["shards"][2]["bytes"] = true_size + 1 if wrong == "larger" else true_size - 1
    path.write_text(json.dumps(manifest))
    disk = _Recording()
    store = LogitStore.open(str(store_dir), filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(disk)))

    with pytest.raises(ChecksumError) as info:
        store.verify()
    message = str(info.value)
    assert f"shard shard-00001.parquet: {true_size} bytes, manifest says" in message
    assert f"{store_dir / MANIFEST}" in message
    assert not [p for p in disk.opened if p.endswith("shard-00001.parquet")], disk.opened
    with pytest.raises(HTTPException) as served:
        read_examples(str(store_dir), 0, 10)
    assert served.value.status_code == 409 and "shard-00001.parquet" in served.value.detail


def test_api_serves_only_verified_shards(store_dir: Path) -> None:
    total, page = read_examples(str(store_dir), 0, 10)
    assert total == 2 and [row["problem_id"] for row in page] == ["a", "b"]
    shard = store_dir / "shard-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert read_examples(str(store_dir), 0, 1)[1][0]["problem_id"] == "a"  # the page before it is intact
    with pytest.raises(HTTPException) as served:
        read_examples(str(store_dir), 0, 10)
    assert served.value.status_code == 409
    assert "shard shard-00001.parquet: sha256 differs" in served.value.detail
