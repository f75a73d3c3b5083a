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

Memory. Only per-shard tables are held; samples are copied out of the memory maps, and the pages a
batch touched are released afterwards, so RSS does not grow with the corpus or with how much was read.
"""
from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_pipeline.errors import DataError, UserError
from data_pipeline.permutation import KeyedPermutation
from data_pipeline.shards import LM_STREAMS, Shard, find_shards

Batch = dict[str, Any]
Transform = Callable[[Batch], Batch]


def _open_shards(path: str | Path, expected_fingerprint: str | None) -> list[Shard]:
    """The shards of one source, checked to share one tokenizer (the trainer's, when given) and layout."""
    shards = [Shard.open(prefix) for prefix in find_shards(path)]
    first = shards[0].header
    for shard in shards[1:]:
        if (shard.header.vocab_fingerprint, shard.header.streams) != (first.vocab_fingerprint, first.streams):
            raise DataError(f"{shard.prefix} and {shards[0].prefix} were made with different tokenizers or "
                            f"stream layouts: put each preprocess run in its own directory")
    if expected_fingerprint not in (None, first.vocab_fingerprint):
        raise DataError(f"{path}: shards were made with tokenizer {first.vocab_fingerprint}, the trainer's "
                        f"tokenizer is {expected_fingerprint} (its files and settings, e.g. lowercase): re-run "
                        f"preprocess with the trainer's tokenizer or train with the one the shards were made with")
    return shards


class _ShardSet:
    """The shards behind one source path, in order, with the shards touched since the last release."""

    num_samples: int

    def __init__(self, path: str | Path, shards: list[Shard]) -> None:
        self.path = str(path)
        self.shards = shards
        self.streams = shards[0].header.streams
        self.vocab_fingerprint = shards[0].header.vocab_fingerprint
        self.fingerprint = hashlib.sha256(" ".join(s.fingerprint for s in shards).encode()).hexdigest()[:16]
        self._touched: set[int] = set()

    def _shard(self, index: int) -> Shard:
        self._touched.add(index)
        return self.shards[index]

    def release_pages(self) -> None:
        for index in self._touched:
            self.shards[index].release_pages()
        self._touched.clear()


class _PackedText(_ShardSet):
    """An LM source: the concatenated "text" stream cut into `nctx` blocks."""

    def __init__(self, path: str | Path, shards: list[Shard], nctx: int) -> None:
        super().__init__(path, shards)
        self.nctx = nctx
        self.starts = np.cumsum([0] + [s.header.num_tokens["text"] for s in shards]).tolist()
        self.num_samples = self.starts[-1] // nctx

    def read_block(self, sample: int, out: np.ndarray) -> None:
        """Copy block `sample` into `out` (length nctx), across shard boundaries if need be."""
        start, filled = sample * self.nctx, 0
        index = bisect_right(self.starts, start) - 1
        while filled < self.nctx:
            local = start + filled - self.starts[index]
            take = min(self.nctx - filled, self.starts[index + 1] - self.starts[index] - local)
            shard = self._shard(index)
            out[filled:filled + take] = shard.check_ids("text", shard.tokens("text")[local:local + take], local)
            filled += take
            index += 1


class _PairedDocs(_ShardSet):
    """A paired source: document i of "left" and of "right", each cut to its first `nctx` tokens."""

    def __init__(self, path: str | Path, shards: list[Shard], nctx: int) -> None:
        super().__init__(path, shards)
        self.nctx = nctx
        self.starts = np.cumsum([0] + [s.header.num_docs for s in shards]).tolist()
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
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], *, nctx: int, batch_size: int,
                 rank: int = 0, world_size: int = 1, weights: Sequence[float] | None = None, seed: int = 0,
                 shuffle: bool = True, epochs: int | None = None, pad_id: int = 0,
                 expected_fingerprint: str | None = None, transform: Transform | None = None) -> None:
        super().__init__()
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
        _check_sources(paths, weights)
        check_batching(nctx, batch_size, rank, world_size, epochs)
        self.nctx, self.batch_size, self.rank, self.world_size = nctx, batch_size, rank, world_size
        self.seed, self.shuffle, self.epochs = seed, shuffle, epochs
        self.pad_id, self.transform = pad_id, transform
        self.sources = [_open_source(p, expected_fingerprint, nctx) for p in paths]
        _check_compatible(self.sources)
        self.paired = self.sources[0].streams != LM_STREAMS
        self._weights = weights
        self._mixture = _Mixture([s.num_samples for s in self.sources], weights, seed, shuffle)
        if self._mixture.total == 0:
            raise UserError(f"data weights {weights} leave no samples: raise at least one weight")
        self._start = 0

    @property
    def preprocessing_stats(self) -> dict[str, int]:
        """What preprocessing counted over every shard read here (skipped and repaired lines, ...)."""
        totals: dict[str, int] = {}
        for source in self.sources:
            for shard in source.shards:
                for name, count in shard.header.stats.items():
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
        return {"sources": [s.fingerprint for s in self.sources], "nctx": self.nctx, "seed": self.seed,
                "shuffle": self.shuffle, "weights": self._weights}

    def __iter__(self) -> Iterator[Batch]:
        end = math.inf if self.epochs is None else self.epochs * self._mixture.total
        for lo, hi, cursor in worker_slices(self._start, end, self.batch_size, self.rank, self.world_size):
            batch = self._read(np.arange(lo, hi, dtype=np.int64), cursor)
            yield self.transform(batch) if self.transform else batch

    def _read(self, positions: np.ndarray, cursor: int) -> Batch:
        epoch, index = np.divmod(positions, self._mixture.total)
        sample_ids = _shuffle(index, epoch, self._mixture.total, self.seed, 0) if self.shuffle else index
        source, sample = np.empty_like(index), np.empty_like(index)
        for e in np.unique(epoch).tolist():
            same = epoch == e
            source[same], sample[same] = self._mixture.locate(e, sample_ids[same])
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


def _open_source(path: str | Path, expected_fingerprint: str | None, nctx: int) -> _ShardSet:
    shards = _open_shards(path, expected_fingerprint)
    source = (_PackedText if shards[0].header.streams == LM_STREAMS else _PairedDocs)(path, shards, nctx)
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
