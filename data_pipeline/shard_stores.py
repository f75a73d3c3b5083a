"""Where a source's shards live: a local directory (mapped up front) or an object store (cached on demand).

Both give the reader the same thing: every shard's header at once (sample counts, fingerprints) and
`open(i)` for shard i's memory maps. A remote store also takes the reader's plan (the shards the next
batch needs, and those the batches after it will) so its cache evicts by the order and it keeps open
only what is still to be read.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Collection, Protocol

import numpy as np

from data_pipeline.errors import DataError
from data_pipeline.object_store import is_uri, join, read_range
from data_pipeline.remote_dataset import HEAD_BYTES, read_manifest
from data_pipeline.shard_cache import CachedShard, ShardCache
from data_pipeline.shards import Shard, ShardHeader, find_shards, token_array_dtype

_HEADS_KEPT = 64  # LM blocks that run into a shard read its head: keep the recent ones (64 KiB each)


class ShardStore(Protocol):
    headers: list[ShardHeader]
    names: list[str]           # for messages: a local prefix or a URI per shard
    head_tokens: int           # a block reaching fewer tokens into a shard reads `head` (0: never)

    def open(self, index: int) -> Shard: ...
    def head(self, index: int, stream: str) -> np.ndarray | None: ...
    def plan(self, now: Collection[int], soon: Collection[int]) -> None: ...
    def prefetch(self, index: int) -> bool: ...


class LocalShards:
    """Shards in a local directory, glob or prefix, memory-mapped when the reader is built."""

    def __init__(self, path: str | Path) -> None:
        self._shards = [Shard.open(prefix) for prefix in find_shards(path)]
        self.headers = [s.header for s in self._shards]
        self.names = [str(s.prefix) for s in self._shards]
        self.head_tokens = 0

    def open(self, index: int) -> Shard:
        return self._shards[index]

    def head(self, index: int, stream: str) -> np.ndarray | None:
        return None

    def plan(self, now: Collection[int], soon: Collection[int]) -> None:
        """Nothing to do: every local shard is mapped already."""

    def prefetch(self, index: int) -> bool:
        return True


class RemoteShards:
    """The shards of a dataset in object storage, read through a `ShardCache` (see shard_cache.py)."""

    def __init__(self, uri: str, cache: ShardCache) -> None:
        self.uri = uri.rstrip("/")
        self._remote = read_manifest(self.uri)
        self.headers = [s.header for s in self._remote]
        self.names = [join(self.uri, s.name) for s in self._remote]
        tag = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        self._items = [CachedShard(f"{tag}-{s.name}", self.uri, s) for s in self._remote]
        self.cache = cache
        self.head_tokens = HEAD_BYTES // token_array_dtype(self.headers[0].dtype).itemsize
        self._open: dict[int, Shard] = {}
        self._heads: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._now: set[str] = set()
        self._soon: set[str] = set()

    def __getstate__(self) -> dict:
        # A DataLoader worker starts with nothing open and no plan; it maps what it reads itself.
        return {**self.__dict__, "_open": {}, "_heads": OrderedDict(), "_now": set(), "_soon": set()}

    def head(self, index: int, stream: str) -> np.ndarray | None:
        """The first `head_tokens` of a stream of shard `index` from one ranged GET, checked against the
        manifest's head digest; None when the whole shard is open anyway."""
        if index in self._open:
            return None
        if (index, stream) not in self._heads:
            self._heads[(index, stream)] = self._fetch_head(index, stream)
            while len(self._heads) > _HEADS_KEPT:
                self._heads.popitem(last=False)
        return self._heads[(index, stream)]

    def _fetch_head(self, index: int, stream: str) -> np.ndarray:
        name = f"{self._remote[index].name}.{stream}.bin"
        remote = next(f for f in self._remote[index].files if f.name == name)
        uri = join(self.uri, name)
        for _ in range(3):
            data = read_range(uri, 0, min(remote.size, HEAD_BYTES))
            if hashlib.sha256(data).hexdigest() == remote.head_sha256:
                return np.frombuffer(data, dtype=token_array_dtype(self.headers[index].dtype))
        raise DataError(f"{uri}: corrupt in the object store (its first {len(data)} bytes do not match the "
                        f"dataset manifest) after 3 reads: re-run preprocess to upload it again")

    def plan(self, now: Collection[int], soon: Collection[int]) -> None:
        self._now = {self._items[i].key for i in now}
        self._soon = {self._items[i].key for i in soon} | self._now
        keep = set(now) | set(soon)
        for index in [i for i in self._open if i not in keep]:
            del self._open[index]  # unmapped once the last view of it goes

    def open(self, index: int) -> Shard:
        shard = self._open.get(index)
        if shard is None:
            shard = self._open[index] = self.cache.open(self._items[index], self._now | {self._items[index].key},
                                                        self._soon)
        return shard

    def prefetch(self, index: int) -> bool:
        return self.cache.prefetch(self._items[index], self._now, self._soon)


def open_store(path: str | Path, cache: ShardCache | None) -> ShardStore:
    """The store for one `data.train`/`data.valid` entry: a URI needs a cache, a local path does not."""
    if is_uri(path):
        if cache is None:
            raise ValueError(f"{path}: reading an object store needs a ShardCache")
        return RemoteShards(str(path), cache)
    return LocalShards(path)
