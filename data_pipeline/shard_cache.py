"""A bounded local cache of whole remote shards, shared by the DataLoader workers of one rank.

A shard is downloaded into `directory/KEY/`, each file checked against the dataset manifest (size and
sha256) before it is renamed into place, and opened (memory-mapped) only after that. Downloads, evictions
and opens happen under one file lock, so the workers of a rank never fetch a shard twice, never open a
half-evicted one, and the files on disk never pass `limit` bytes. Eviction follows the order: the reader
says which shards it needs now (never evicted) and soon (evicted only when nothing else can go); the
rest are shards this rank will not read again before the horizon, and go first, oldest first. A worker
keeps the shards it has open mapped, so an eviction by another worker never breaks a read (the kernel
frees the space once the last mapping goes).
"""
from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from data_pipeline.errors import UserError
from data_pipeline.object_store import download_verified, join
from data_pipeline.remote_dataset import RemoteShard
from data_pipeline.shards import Shard

_LOCK_NAME = ".lock"
_FETCH_LOG = "fetches.log"
_VERIFIED = ".verified"


@dataclass(frozen=True)
class CachedShard:
    """A remote shard as the cache sees it: a unique key, where it lives, what it holds."""

    key: str
    dataset_uri: str
    shard: RemoteShard


class ShardCache:
    """Whole-shard cache in `directory`, at most `limit` bytes of shard files (see the module docstring)."""

    def __init__(self, directory: str | Path, limit: int) -> None:
        self.directory = Path(directory)
        self.limit = limit

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / _LOCK_NAME, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _entries(self) -> dict[str, tuple[float, int]]:
        """Cached keys (complete or not) -> (last modified, bytes on disk)."""
        entries = {}
        for entry in os.scandir(self.directory):
            if entry.is_dir():
                files = list(os.scandir(entry.path))
                entries[entry.name] = (entry.stat().st_mtime, sum(f.stat().st_size for f in files))
        return entries

    def used_bytes(self) -> int:
        """Bytes of shard files in the cache now."""
        with self._locked():
            return sum(size for _, size in self._entries().values())

    def fetch_log(self) -> list[tuple[str, int]]:
        """(shard URI, bytes) of every download into this cache, oldest first (for benchmarks and tests)."""
        path = self.directory / _FETCH_LOG
        lines = path.read_text(encoding="utf-8").split() if path.exists() else []
        return [(key, int(size)) for key, size in zip(lines[::2], lines[1::2])]

    def _is_ready(self, item: CachedShard) -> bool:
        """Downloaded, verified, and every file still its full size (a truncated copy is fetched again)."""
        target = self.directory / item.key
        try:
            return (target / _VERIFIED).exists() and all(
                (target / f.name).stat().st_size == f.size for f in item.shard.files)
        except FileNotFoundError:
            return False

    def _make_room(self, need: int, keep_now: Collection[str], keep_soon: Collection[str], required: bool,
                   key: str) -> bool:
        entries = self._entries()
        used = sum(size for _, size in entries.values())
        evictable = sorted((k for k in entries if k not in keep_now and k != key),
                           key=lambda k: (k in keep_soon, entries[k][0]))
        for victim in evictable:
            if used + need <= self.limit:
                break
            if victim in keep_soon and not required:
                return False
            shutil.rmtree(self.directory / victim)
            used -= entries[victim][1]
        if used + need <= self.limit:
            return True
        if not required:
            return False
        raise UserError(f"data.cache_limit={self.limit} bytes cannot hold the shards one batch needs "
                        f"({used + need} bytes with {os.path.basename(key)}): raise data.cache_limit")

    def _download(self, item: CachedShard) -> None:
        target = self.directory / item.key
        shutil.rmtree(target, ignore_errors=True)  # an unfinished download of an earlier process
        target.mkdir(parents=True)
        for remote in item.shard.files:
            download_verified(join(item.dataset_uri, remote.name), target / remote.name, remote.size,
                              remote.sha256)
        (target / _VERIFIED).touch()
        with open(self.directory / _FETCH_LOG, "a", encoding="utf-8") as log_file:
            log_file.write(f"{join(item.dataset_uri, item.shard.name)} {item.shard.size}\n")

    def open(self, item: CachedShard, keep_now: Collection[str], keep_soon: Collection[str]) -> Shard:
        """The shard, downloaded and verified if not cached, memory-mapped; evicts to stay under the limit."""
        with self._locked():
            if not self._is_ready(item):
                self._make_room(item.shard.size, keep_now, keep_soon, required=True, key=item.key)
                self._download(item)
            os.utime(self.directory / item.key)
            return Shard.open(self.directory / item.key / item.shard.name)

    def prefetch(self, item: CachedShard, keep_now: Collection[str], keep_soon: Collection[str]) -> bool:
        """Download the shard ahead of need if room can be made without evicting anything needed soon."""
        with self._locked():
            if self._is_ready(item):
                return True
            if not self._make_room(item.shard.size, keep_now, keep_soon, required=False, key=item.key):
                return False
            self._download(item)
            return True
