"""A preprocessed dataset in object storage: its shard files plus `dataset.json`, written last.

An object store has no directory rename, so completeness is published by one object: the manifest lists
every shard with its header and the byte size and sha256 of each file. It is uploaded only after every
shard file is stored and checked, so a half-uploaded dataset has no manifest and is never read. Readers
take shard sizes from the manifest (nothing else is fetched up front) and verify each download against it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from data_pipeline import object_store
from data_pipeline.errors import DataError, UserError
from data_pipeline.shards import ShardHeader, shard_files

MANIFEST_NAME = "dataset.json"
MANIFEST_VERSION = 1
HEAD_BYTES = 1 << 16  # a file's head has its own digest: an LM block that runs into a shard reads only that


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    sha256: str
    head_sha256: str  # of the first min(size, HEAD_BYTES) bytes


@dataclass(frozen=True)
class RemoteShard:
    """One shard of a remote dataset: its name (`shard-00000`), header and files."""

    name: str
    header: ShardHeader
    files: tuple[RemoteFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _parse(text: str, uri: str) -> list[RemoteShard]:
    try:
        raw = json.loads(text)
        if raw.get("format_version") != MANIFEST_VERSION:
            raise DataError(f"{uri}: dataset manifest version {raw.get('format_version')!r}, this code reads "
                            f"{MANIFEST_VERSION}: re-run preprocess")
        shards = [RemoteShard(name=str(s["name"]),
                              header=ShardHeader.from_json(json.dumps(s["header"]), Path(uri)),
                              files=tuple(RemoteFile(str(f["name"]), int(f["size"]), str(f["sha256"]),
                                                         str(f["head_sha256"])) for f in s["files"]))
                  for s in raw["shards"]]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{uri}: not a valid dataset manifest ({err}): re-run preprocess") from None
    if not shards:
        raise DataError(f"{uri}: the dataset manifest lists no shards: re-run preprocess")
    return shards


def read_manifest(dataset_uri: str) -> list[RemoteShard]:
    """The shards of the dataset at `dataset_uri`; no manifest means none was (completely) uploaded."""
    uri = object_store.join(dataset_uri, MANIFEST_NAME)
    try:
        text = object_store.read_bytes(uri).decode("utf-8")
    except object_store.ObjectNotFound:
        object_store.list_names(dataset_uri)  # a missing bucket says so
        raise DataError(f"{dataset_uri}: no {MANIFEST_NAME} (not a preprocessed dataset, or its upload did not "
                        f"finish): check the URI or run `python -m data_pipeline preprocess --out "
                        f"{dataset_uri}`") from None
    return _parse(text, uri)


class DatasetUpload:
    """Uploads shards as they close, then publishes the manifest: `add` each shard, then `publish`."""

    def __init__(self, dataset_uri: str) -> None:
        self.uri = dataset_uri.rstrip("/")
        existing = object_store.list_names(self.uri)
        if existing:
            raise UserError(f"{self.uri} already holds {len(existing)} object(s) ({existing[0]}, ...): "
                            f"choose a new prefix or delete it")
        self._entries: list[dict] = []

    def add(self, prefix: Path, header: ShardHeader) -> None:
        """Upload one closed local shard (header last), then delete the local copy."""
        files = []
        for path in shard_files(prefix, header.streams):
            size, sha = object_store.upload_verified(path, object_store.join(self.uri, path.name))
            with open(path, "rb") as handle:
                head = hashlib.sha256(handle.read(HEAD_BYTES)).hexdigest()
            files.append({"name": path.name, "size": size, "sha256": sha, "head_sha256": head})
        for path in shard_files(prefix, header.streams):
            path.unlink()
        self._entries.append({"name": prefix.name, "header": json.loads(header.to_json()), "files": files})

    def add_file(self, local: Path, name: str) -> None:
        """Upload a file that goes with the shards (the tokenizer's vocab) as `name` under the prefix."""
        object_store.upload_verified(local, object_store.join(self.uri, name))

    def publish(self) -> None:
        """Write the manifest: from now on the dataset is readable."""
        text = json.dumps({"format_version": MANIFEST_VERSION, "shards": self._entries}, indent=1,
                          sort_keys=True) + "\n"
        object_store.write_bytes(object_store.join(self.uri, MANIFEST_NAME), text.encode("utf-8"))
