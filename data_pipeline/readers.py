"""ShardedDataset: per-rank batches from token shards, in one resumable global order.

The stream is a sequence of positions. With N samples per epoch, position p is sample
`perm_{seed, p // N}(p mod N)` of epoch `p // N` (the identity instead of `perm` when `shuffle=False`).
Reading starts at a cursor c (0, or the restored one); global batch s covers positions
`[c + s*G, c + (s+1)*G)` with `G = batch_size * world_size`, rank r takes the r-th `batch_size` slice,
and DataLoader worker w of the rank produces the batches with `s % num_workers == w` (the DataLoader
round-robins over workers, so the rank sees them in order). The order depends only on (seed, epoch), so
every sample is read exactly once per epoch for any world size, worker count or number of files, and a
restart resumes at any cursor with any world size in O(1).

Samples. LM shards (stream "text"): the tokens of all shards of a source, virtually concatenated (the
writer put a separator after every document), are cut into blocks of `nctx`; sample i is block i and the
last `len % nctx` tokens of each source are never read. Paired shards (streams "left"/"right"): sample i
is document i of both streams, each cut to its first `nctx` tokens, padded with `pad_id` to the longest
in the batch.

Mixing. Several sources (shard sets) with weights w_i: a mixture epoch has `M_i = round(w_i * N_i)`
positions of source i (1.0 = every sample once, 2.0 = twice, 0.5 = half of them). Mixture index q in
[0, sum M) maps to source i and its k-th slot; slot k of mixture epoch e is source-local position
`u = e * M_i + k`, i.e. sample `perm_i(u mod N_i)` of source epoch `u // N_i`. So a source with weight
0.5 is read completely every two mixture epochs (a different random half each time), and all of it is
O(1) per position. With weight 1, `perm_i` is the identity (the mixture permutation already shuffles),
so a single source's `sample_ids` are its block (or pair) indices.

Streaming order (`order="stream"`, see stream_order.py): instead of `perm`, mixture index i of epoch e
is `StreamOrder(e, i)`: shards permuted in blocks, samples shuffled within a window of a few shards, and
`partitions` canonical parts arranged so that rank r's slice of each global batch comes from its own
parts. It needs every weight to be 1 (the mixture is then the sources concatenated, which keeps shards
contiguous) and a world size dividing `partitions`; resume is exact on any such world size with the same
global batch.

Remote sources (object-store URIs, see shard_stores.py) are read through a `ShardCache`; the reader
computes the shards of the rank's next global batches from the order and prefetches exactly those
(prefetch.py), keeping the cache under its limit.

Memory. Only per-shard tables are held; samples are copied out of the memory maps, and the pages a
batch touched are released afterwards, so RSS does not grow with the corpus or with how much was read.
"""
from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_pipeline.errors import DataError, UserError
from data_pipeline.permutation import KeyedPermutation
from data_pipeline.prefetch import ReadAhead
from data_pipeline.shard_cache import ShardCache
from data_pipeline.shard_stores import RemoteShards, ShardStore, open_store
from data_pipeline.shards import LM_STREAMS, Shard
from data_pipeline.stream_order import StreamOrder

Batch = dict[str, Any]
Transform = Callable[[Batch], Batch]


def _open_shards(path: str | Path, expected_fingerprint: str | None, cache: ShardCache | None) -> ShardStore:
    """The shards of one source, checked to share one tokenizer (the trainer's, when given) and layout."""
    store = open_store(path, cache)
    first = store.headers[0]
    for name, header in zip(store.names[1:], store.headers[1:]):
        if (header.vocab_fingerprint, header.streams) != (first.vocab_fingerprint, first.streams):
            raise DataError(f"{name} and {store.names[0]} were made with different tokenizers or "
                            f"stream layouts: put each preprocess run in its own directory")
    if expected_fingerprint not in (None, first.vocab_fingerprint):
        raise DataError(f"{path}: shards were made with tokenizer {first.vocab_fingerprint}, the trainer's "
                        f"tokenizer is {expected_fingerprint} (its files and settings, e.g. lowercase): re-run "
                        f"preprocess with the trainer's tokenizer or train with the one the shards were made with")
    return store


class _ShardSet:
    """The shards behind one source path, in order, with the shards touched since the last release."""

    num_samples: int
    starts: list[int]  # per shard, the first sample unit (token or document) it holds; then the total

    def __init__(self, path: str | Path, store: ShardStore) -> None:
        self.path = str(path)
        self.store = store
        self.headers = store.headers
        self.streams = self.headers[0].streams
        self.vocab_fingerprint = self.headers[0].vocab_fingerprint
        self.fingerprint = hashlib.sha256(" ".join(h.content_sha256[:16] for h in self.headers).encode()
                                          ).hexdigest()[:16]
        self._touched: set[int] = set()

    def _shard(self, index: int) -> Shard:
        self._touched.add(index)
        return self.store.open(index)

    def release_pages(self) -> None:
        for index in self._touched:
            self.store.open(index).release_pages()
        self._touched.clear()

    def shards_of(self, samples: np.ndarray) -> set[int]:
        """The whole shards that reading `samples` needs (what the prefetcher fetches and the cache keeps)."""
        return set((np.searchsorted(self.starts, samples, side="right") - 1).tolist())

    def block_sizes(self) -> np.ndarray:
        """Samples per shard, in shard order: the blocks of the streaming order."""
        return np.diff(self.starts)


class _PackedText(_ShardSet):
    """An LM source: the concatenated "text" stream cut into `nctx` blocks."""

    def __init__(self, path: str | Path, store: ShardStore, nctx: int) -> None:
        super().__init__(path, store)
        self.nctx = nctx
        self.starts = np.cumsum([0] + [h.num_tokens["text"] for h in self.headers]).tolist()
        self.num_samples = self.starts[-1] // nctx

    def shards_of(self, samples: np.ndarray) -> set[int]:
        """A block's own shard, and the next ones only when it reaches past the next shard's head."""
        first = np.searchsorted(self.starts, samples * self.nctx, side="right") - 1
        last = np.searchsorted(self.starts, (samples + 1) * self.nctx - 1, side="right") - 1
        ends_in_head = (last == first + 1) & ((samples + 1) * self.nctx - np.take(self.starts, last)
                                              <= self.store.head_tokens)
        return {i for a, b, head in zip(first.tolist(), last.tolist(), ends_in_head.tolist())
                for i in range(a, a + 1 if head else b + 1)}

    def block_sizes(self) -> np.ndarray:
        """Samples per shard: those that start in it (the last one may run into the next shard)."""
        first_sample = -(-np.asarray(self.starts, dtype=np.int64) // self.nctx)
        return np.diff(np.minimum(first_sample, self.num_samples))

    def read_block(self, sample: int, out: np.ndarray) -> None:
        """Copy block `sample` into `out` (length nctx), across shard boundaries if need be; the part in a
        following shard comes from that shard's head when the store has one."""
        start, filled = sample * self.nctx, 0
        index = bisect_right(self.starts, start) - 1
        while filled < self.nctx:
            local = start + filled - self.starts[index]
            take = min(self.nctx - filled, self.starts[index + 1] - self.starts[index] - local)
            head = self.store.head(index, "text") if filled and take <= self.store.head_tokens else None
            if head is not None:  # checked against the manifest's digest when fetched
                out[filled:filled + take] = head[local:local + take]
            else:
                shard = self._shard(index)
                out[filled:filled + take] = shard.check_ids("text", shard.tokens("text")[local:local + take], local)
            filled += take
            index += 1


class _PairedDocs(_ShardSet):
    """A paired source: document i of "left" and of "right", each cut to its first `nctx` tokens."""

    def __init__(self, path: str | Path, store: ShardStore, nctx: int) -> None:
        super().__init__(path, store)
        self.nctx = nctx
        self.starts = np.cumsum([0] + [h.num_docs for h in self.headers]).tolist()
        self.num_samples = self.starts[-1]

    def read_pair(self, sample: int) -> tuple[np.ndarray, np.ndarray]:
        index = bisect_right(self.starts, sample) - 1
        shard, doc = self._shard(index), sample - self.starts[index]

        def cut(stream: str) -> np.ndarray:
            begin, end = shard.offsets(stream)[doc:doc + 2]
            ids = shard.check_ids(stream, shard.tokens(stream)[begin:min(end, begin + self.nctx)], int(begin))
            return np.array(ids, dtype=np.int64)
        return cut("left"), cut("right")


class _Mixture:
    """Maps mixture indices to (source, sample) in O(1); see the module docstring for the rule."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int, shuffle: bool) -> None:
        self.sizes = list(sizes)
        self.slots = [round(w * n) for w, n in zip(weights, sizes)]
        self.starts = np.cumsum([0] + self.slots)
        self.total = int(self.starts[-1])
        self.seed, self.shuffle = seed, shuffle

    def locate(self, epoch: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source ids and per-source sample ids of mixture indices `index` of mixture epoch `epoch`."""
        source = np.searchsorted(self.starts, index, side="right") - 1
        sample = np.empty_like(index)
        for i in np.unique(source).tolist():
            chosen = source == i
            local = epoch * self.slots[i] + (index[chosen] - self.starts[i])
            source_epoch, offset = np.divmod(local, self.sizes[i])
            resample = self.shuffle and self.slots[i] != self.sizes[i]
            sample[chosen] = _shuffle(offset, source_epoch, self.sizes[i], self.seed, 1 + i) if resample \
                else offset
        return source, sample


class ShardedDataset(IterableDataset):
    """Per-rank batches from one or more preprocessed shard sets; use with `DataLoader(batch_size=None)`.

    Each batch is a dict: `tokens` [B, nctx] (LM) or `left`/`right` [B, T] (paired), `sample_ids`
    (the mixture index within its epoch, unique per position, for per-sample RNG seeding), `epoch`, and
    `cursor` (the global position reached once this global batch is consumed; pass it to
    `state_dict`). `epochs=None` streams forever; `epochs=1, shuffle=False` is a single ordered pass
    (validation), where ranks read disjoint slices, the last batches may be short and ranks may get
    one batch more than others. Call `load_state_dict` before creating the DataLoader iterator.
    `order="stream"` selects the streaming order (module docstring), with `partitions` canonical parts
    (0: the world size) and windows of `window_shards` shards; `cache` is needed for remote sources, and
    `lookahead` is how many of its own batches each DataLoader worker prefetches.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], *, nctx: int, batch_size: int,
                 rank: int = 0, world_size: int = 1, weights: Sequence[float] | None = None, seed: int = 0,
                 shuffle: bool = True, epochs: int | None = None, pad_id: int = 0,
                 expected_fingerprint: str | None = None, transform: Transform | None = None,
                 order: Literal["uniform", "stream"] = "uniform", partitions: int = 0, window_shards: int = 4,
                 cache: ShardCache | None = None, lookahead: int = 2) -> None:
        super().__init__()
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
        _check_sources(paths, weights)
        check_batching(nctx, batch_size, rank, world_size, epochs)
        self.nctx, self.batch_size, self.rank, self.world_size = nctx, batch_size, rank, world_size
        self.seed, self.shuffle, self.epochs = seed, shuffle, epochs
        self.pad_id, self.transform = pad_id, transform
        self.sources = [_open_source(p, expected_fingerprint, nctx, cache) for p in paths]
        _check_compatible(self.sources)
        self.paired = self.sources[0].streams != LM_STREAMS
        self._weights = weights
        self._mixture = _Mixture([s.num_samples for s in self.sources], weights, seed, shuffle)
        if self._mixture.total == 0:
            raise UserError(f"data weights {weights} leave no samples: raise at least one weight")
        self._stream = self._stream_order(partitions, window_shards) if shuffle and order == "stream" else None
        self._remote = cache is not None and any(isinstance(s.store, RemoteShards) for s in self.sources)
        self.lookahead = lookahead
        self._start = 0

    def _stream_order(self, partitions: int, window_shards: int) -> StreamOrder:
        if any(w != 1.0 for w in self._weights):
            raise UserError(f"data.shuffle=stream reads every sample exactly once per epoch, so data.weights "
                            f"must all be 1.0 (got {self._weights}): drop the weights or use data.shuffle=uniform")
        if window_shards < 1:
            raise UserError(f"data.shuffle_window={window_shards}: use 1 or more shards")
        partitions = partitions or self.world_size
        chunk = StreamOrder.check_world(partitions, self.world_size, self.batch_size * self.world_size)
        blocks = np.concatenate([s.block_sizes() for s in self.sources])
        window = window_shards * max(1, self._mixture.total // len(blocks))
        return StreamOrder(blocks, window=window, partitions=partitions, chunk=chunk, seed=self.seed)

    @property
    def preprocessing_stats(self) -> dict[str, int]:
        """What preprocessing counted over every shard read here (skipped and repaired lines, ...)."""
        totals: dict[str, int] = {}
        for source in self.sources:
            for header in source.headers:
                for name, count in header.stats.items():
                    totals[name] = totals.get(name, 0) + count
        return totals

    @property
    def samples_per_epoch(self) -> int:
        """N: positions per (mixture) epoch."""
        return self._mixture.total

    def state_dict(self, cursor: int) -> dict[str, Any]:
        """What to checkpoint: the cursor of the last consumed batch plus what defines the order."""
        return {"cursor": int(cursor), **self._order_key()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state["cursor"]` (any world size); a state for other data is a DataError."""
        self._start = restored_cursor(state, self._order_key())

    def _order_key(self) -> dict[str, Any]:
        key = {"sources": [s.fingerprint for s in self.sources], "nctx": self.nctx, "seed": self.seed,
               "shuffle": self.shuffle, "weights": self._weights}
        if self._stream is not None:  # absent for the uniform order, so older states still load
            key.update(order="stream", partitions=self._stream.partitions,
                       global_batch=self._stream.global_batch, window=self._stream.window)
        return key

    def __iter__(self) -> Iterator[Batch]:
        end = math.inf if self.epochs is None else self.epochs * self._mixture.total
        slices = worker_slices(self._start, end, self.batch_size, self.rank, self.world_size)
        read_ahead = self._read_ahead(end) if self._remote else None
        global_batch = self.batch_size * self.world_size
        try:
            for lo, hi, cursor in slices:
                if read_ahead:
                    read_ahead.at((lo - self.rank * self.batch_size - self._start) // global_batch)
                batch = self._read(np.arange(lo, hi, dtype=np.int64), cursor)
                yield self.transform(batch) if self.transform else batch
        finally:
            if read_ahead:
                read_ahead.close()

    def _read_ahead(self, end: float) -> ReadAhead:
        info = get_worker_info()
        workers = info.num_workers if info else 1
        global_batch = self.batch_size * self.world_size

        def needs(batch: int) -> list[set[int]] | None:
            lo = self._start + batch * global_batch + self.rank * self.batch_size
            hi = min(lo + self.batch_size, end)
            if lo >= hi:
                return None
            source, sample = self.locate(np.arange(lo, int(hi), dtype=np.int64))[2:]
            return [src.shards_of(sample[source == i]) for i, src in enumerate(self.sources)]
        return ReadAhead(needs, [s.store for s in self.sources], behind=workers,
                         horizon=workers * self.lookahead)

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(epoch, sample_ids, source, sample within the source) of stream positions."""
        epoch, index = np.divmod(positions, self._mixture.total)
        sample_ids = index
        if self.shuffle and self._stream is None:
            sample_ids = _shuffle(index, epoch, self._mixture.total, self.seed, 0)
        elif self.shuffle:
            sample_ids = np.empty_like(index)
            for e in np.unique(epoch).tolist():
                sample_ids[epoch == e] = self._stream(e, index[epoch == e])
        source, sample = np.empty_like(index), np.empty_like(index)
        for e in np.unique(epoch).tolist():
            same = epoch == e
            source[same], sample[same] = self._mixture.locate(e, sample_ids[same])
        return epoch, sample_ids, source, sample

    def _read(self, positions: np.ndarray, cursor: int) -> Batch:
        epoch, sample_ids, source, sample = self.locate(positions)
        batch = self._read_pairs(source, sample) if self.paired else self._read_blocks(source, sample)
        for src in self.sources:
            src.release_pages()
        batch.update(sample_ids=torch.from_numpy(sample_ids), epoch=torch.from_numpy(epoch), cursor=cursor)
        return batch

    def _read_blocks(self, source: np.ndarray, sample: np.ndarray) -> Batch:
        tokens = np.empty((len(sample), self.nctx), dtype=np.int64)
        for row, (src, smp) in enumerate(zip(source.tolist(), sample.tolist())):
            self.sources[src].read_block(smp, tokens[row])
        return {"tokens": torch.from_numpy(tokens)}

    def _read_pairs(self, source: np.ndarray, sample: np.ndarray) -> Batch:
        pairs = [self.sources[src].read_pair(smp) for src, smp in zip(source.tolist(), sample.tolist())]
        return pad_pairs(pairs, self.pad_id)


def _shuffle(index: np.ndarray, epoch: np.ndarray, n: int, seed: int, stream: int) -> np.ndarray:
    """`perm_{seed, epoch, stream}(index)` elementwise, for indices from possibly several epochs."""
    out = np.empty_like(index)
    for e in np.unique(epoch).tolist():
        same = epoch == e
        out[same] = KeyedPermutation(n, seed, e, stream)(index[same])
    return out


def worker_slices(start: int, end: float, batch_size: int, rank: int,
                  world_size: int) -> Iterator[tuple[int, int, int]]:
    """(lo, hi, cursor) for each batch this rank's current DataLoader worker produces, in order.

    Global batch s covers positions [start + s*G, start + (s+1)*G) clipped to `end` (math.inf: no end),
    G = batch_size * world_size; this rank reads the rank-th batch_size slice [lo, hi), and worker w
    takes the batches with s % num_workers == w. `cursor` is where the global batch ends.
    """
    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
    global_batch = batch_size * world_size
    first = start + worker * global_batch
    while first < end:
        lo = first + rank * batch_size
        hi = min(lo + batch_size, end)
        if lo < hi:
            yield lo, int(hi), int(min(first + global_batch, end))
        first += num_workers * global_batch


def restored_cursor(state: dict[str, Any], order_key: dict[str, Any]) -> int:
    """The cursor of a saved data state, after checking it was saved for the same data and order."""
    for key, value in order_key.items():
        if state.get(key) != value:
            raise DataError(f"data state was saved with {key}={state.get(key)!r} but this dataset has "
                            f"{value!r}: resume with the same data settings or start the data stream afresh")
    cursor = state.get("cursor")
    if not isinstance(cursor, int) or cursor < 0:
        raise DataError(f"data state has an invalid cursor {cursor!r}: it must be a position >= 0")
    return cursor


def pad_pairs(pairs: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int) -> Batch:
    """`left` and `right` LongTensors [B, T], each padded on the right with `pad_id` to its longest row."""
    def pad(rows: list[np.ndarray]) -> torch.Tensor:
        out = np.full((len(rows), max(1, max(len(r) for r in rows))), pad_id, dtype=np.int64)
        for i, row in enumerate(rows):
            out[i, :len(row)] = row
        return torch.from_numpy(out)
    return {"left": pad([p[0] for p in pairs]), "right": pad([p[1] for p in pairs])}


def _open_source(path: str | Path, expected_fingerprint: str | None, nctx: int,
                 cache: ShardCache | None) -> _ShardSet:
    store = _open_shards(path, expected_fingerprint, cache)
    source = (_PackedText if store.headers[0].streams == LM_STREAMS else _PairedDocs)(path, store, nctx)
    if source.num_samples == 0:
        raise DataError(f"{path}: no samples (an LM corpus needs at least nctx={nctx} tokens, a paired one "
                        f"at least one pair): add data or lower nctx")
    return source


def _check_compatible(sources: Sequence[_ShardSet]) -> None:
    first = sources[0]
    for other in sources[1:]:
        if (other.vocab_fingerprint, other.streams) != (first.vocab_fingerprint, first.streams):
            raise DataError(f"{other.path} and {first.path} differ in tokenizer or in LM/paired layout: "
                            f"mix only sources preprocessed with the same tokenizer and layout")


def _check_sources(paths: Sequence, weights: Sequence[float]) -> None:
    if not paths:
        raise UserError("no data paths given: pass at least one preprocessed shard directory")
    if len(weights) != len(paths):
        raise UserError(f"{len(weights)} weights for {len(paths)} data paths: give one weight per path")
    if any(not (math.isfinite(w) and w >= 0) for w in weights):
        raise UserError(f"data weights must be finite and >= 0, got {list(weights)}")


def check_batching(nctx: int, batch_size: int, rank: int, world_size: int, epochs: int | None) -> None:
    """One-line UserErrors for batching settings that cannot work (shared by the text stream)."""
    if nctx < 1 or batch_size < 1:
        raise UserError(f"nctx and batch_size must be >= 1, got nctx={nctx} batch_size={batch_size}")
    if not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is outside world_size {world_size}")
    if epochs is not None and epochs < 1:
        raise UserError(f"epochs must be >= 1 or None (stream forever), got {epochs}")
