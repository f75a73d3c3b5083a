"""The streaming epoch order: a bijection of [0, N) with locality, computed per position in O(1).

The uniform order sends every rank to nearly every shard in random order, which no bounded cache can
serve. This order keeps each rank on its own shards and each moment on a few of them:

1. Blocks. Samples come in blocks of consecutive samples, one per shard (the samples that start in it);
   the blocks are permuted per (seed, epoch) and concatenated: the shuffled stream. This takes a table
   of one offset per block per epoch (8 bytes per shard), built once per epoch in O(shards).
2. Canonical partitions. The shuffled stream is split into `partitions` contiguous, balanced parts
   (sizes differ by at most one). Within a part, samples are shuffled inside windows of `window`
   consecutive samples (a few blocks), so at any moment a part reads from about window/block + 2 shards.
3. Interleaving. Global batch s of G = partitions * chunk positions takes `chunk` samples from every
   part, in part order. With world size W dividing `partitions` and G = batch_size * W, rank r's slice of
   each global batch is exactly parts [r * P/W, (r + 1) * P/W): a rank reads only its own shards.
   Parts run out of whole chunks at slightly different times; the leftovers (fewer than G + P samples)
   are read in part order at the start of the epoch (to realign epoch and global-batch boundaries when N
   is not a multiple of G) and at its end; only they cross ranks.

Everything depends on (seed, epoch, block sizes, window, partitions, chunk), never on the world size, so
a run resumes exactly at any W that divides `partitions` with the same global batch G. A batch costs
O(B log shards) time.
"""
from __future__ import annotations

import numpy as np

from data_pipeline.errors import UserError
from data_pipeline.permutation import KeyedPermutation

_BLOCK_STREAM = 1 << 61
_WINDOW_STREAM = 1 << 62


class StreamOrder:
    """`order(epoch, index)` -> sample ids of epoch positions `index`; see the module docstring."""

    def __init__(self, block_sizes: np.ndarray, *, window: int, partitions: int, chunk: int, seed: int) -> None:
        self.block_sizes = np.asarray(block_sizes, dtype=np.int64)
        n = int(self.block_sizes.sum())
        if min(n, window, partitions, chunk) < 1 or self.block_sizes.min() < 0:
            raise ValueError(f"every size must be >= 1: n={n} window={window} partitions={partitions} "
                             f"chunk={chunk}")
        self.n, self.window = n, window
        self.block_starts = np.concatenate([[0], np.cumsum(self.block_sizes)[:-1]])
        self._epoch_table: tuple[int, np.ndarray, np.ndarray] | None = None
        self.partitions, self.chunk, self.seed = partitions, chunk, seed
        self.global_batch = partitions * chunk
        self.part_size, self.longer_parts = divmod(n, partitions)

    @staticmethod
    def check_world(partitions: int, world_size: int, global_batch: int) -> int:
        """The chunk (samples per part per global batch) for this world; a one-line UserError if none fits."""
        if partitions % world_size:
            raise UserError(f"data.partitions={partitions} is not a multiple of the world size {world_size}: "
                            f"the streaming order resumes exactly on world sizes that divide data.partitions; "
                            f"run on one of those or start a new stream with data.partitions={world_size}")
        if global_batch % partitions:
            raise UserError(f"the global batch (data.batch_size x world size = {global_batch}) is not a multiple "
                            f"of data.partitions={partitions}: choose data.batch_size so that it is")
        return global_batch // partitions

    def part_start(self, part: np.ndarray) -> np.ndarray:
        return part * self.part_size + np.minimum(part, self.longer_parts)

    def __call__(self, epoch: int, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        part, local = self._interleave(epoch, index)
        shuffled = self._window_shuffle(epoch, part, local)
        return self._unblock(epoch, self.part_start(part) + shuffled)

    def _interleave(self, epoch: int, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(part, index within the part) of each epoch position."""
        P, c, L, extra = self.partitions, self.chunk, self.part_size, self.longer_parts
        head = (-epoch * self.n) % self.global_batch       # positions before the first global-batch edge
        head = min(head, self.n)
        rounds_len = ((self.n - head) // P // c) * c        # samples per part read in whole chunks
        main = P * rounds_len
        part, local = np.empty_like(index), np.empty_like(index)
        inside = (index >= head) & (index < head + main)
        rel = index[inside] - head
        chunk_no = rel // c
        part[inside], local[inside] = chunk_no % P, (chunk_no // P) * c + rel % c
        left = np.where(index < head, index, index - main)[~inside]
        spare = L - rounds_len                              # leftovers of a part with L samples
        in_longer = extra * (spare + 1)
        first = left < in_longer
        rest = left - in_longer
        part[~inside] = np.where(first, left // (spare + 1), extra + rest // max(spare, 1))
        local[~inside] = rounds_len + np.where(first, left % (spare + 1), rest % max(spare, 1))
        return part, local

    def _window_shuffle(self, epoch: int, part: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Shuffle each part within consecutive windows of `window` samples."""
        out = np.empty_like(local)
        window_no = local // self.window
        size = self.part_size + (part < self.longer_parts)
        keys = np.stack([part, window_no], axis=1)
        for p, w in np.unique(keys, axis=0).tolist():
            same = (part == p) & (window_no == w)
            length = min(self.window, int(size[same][0]) - w * self.window)
            permute = KeyedPermutation(length, self.seed, epoch, _WINDOW_STREAM | (p << 31) | w)
            out[same] = w * self.window + permute(local[same] - w * self.window)
        return out

    def _shuffled_blocks(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(block at each slot of the shuffled stream, stream offset of each slot) for one epoch."""
        if self._epoch_table is None or self._epoch_table[0] != epoch:
            order = KeyedPermutation(len(self.block_sizes), self.seed, epoch, _BLOCK_STREAM)(
                np.arange(len(self.block_sizes)))
            offsets = np.concatenate([[0], np.cumsum(self.block_sizes[order])[:-1]])
            self._epoch_table = (epoch, order, offsets)
        return self._epoch_table[1], self._epoch_table[2]

    def _unblock(self, epoch: int, stream: np.ndarray) -> np.ndarray:
        """Sample ids of shuffled-stream positions."""
        order, offsets = self._shuffled_blocks(epoch)
        slot = np.searchsorted(offsets, stream, side="right") - 1  # the last of equal offsets: never empty
        return self.block_starts[order[slot]] + stream - offsets[slot]
