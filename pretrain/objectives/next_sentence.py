"""Next Sentence Prediction pairs from LM data: one line split in two, its first half as the context and
its second half as the response.

It is a reader transform over LM blocks (packed lines, each followed by the separator), so it works on LM
shards and raw text alike. Per block it picks one line, with a chance proportional to its length among the
lines of at least two tokens (a line cut by the block edge counts with the part inside the block), and
splits it at its middle. The pick is seeded by (seed, epoch, sample) like the masks, so a resumed run pairs
exactly as an uninterrupted one.
"""
from __future__ import annotations

import numpy as np

from data_pipeline.readers import pad_pairs


def line_halves(block: np.ndarray, sep_id: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(first half, second half) of one line of `block` chosen as the module doc says; a block with no
    line of two tokens (only separators and one-token lines) is split at its own middle instead."""
    bounds = np.concatenate([[-1], np.flatnonzero(block == sep_id), [block.size]])
    starts, lengths = bounds[:-1] + 1, np.diff(bounds) - 1
    usable = lengths >= 2
    if not usable.any():
        return block[:block.size // 2], block[block.size // 2:]
    line = rng.choice(np.flatnonzero(usable), p=lengths[usable] / lengths[usable].sum())
    start, middle, end = starts[line], starts[line] + lengths[line] // 2, starts[line] + lengths[line]
    return block[start:middle], block[middle:end]


class LineSplitter:
    """Reader transform: an LM batch (`tokens` [B, nctx]) -> a paired batch (`left`, `right` padded with
    pad_id), keeping `sample_ids`, `epoch` and `cursor`. Picklable for DataLoader workers."""

    def __init__(self, *, seed: int, sep_id: int, pad_id: int) -> None:
        self.seed, self.sep_id, self.pad_id = seed, sep_id, pad_id

    def __call__(self, batch: dict) -> dict:
        pairs = [line_halves(block, self.sep_id, np.random.default_rng([self.seed, epoch, sample_id]))
                 for block, epoch, sample_id in zip(batch["tokens"].numpy(), batch["epoch"].tolist(),
                                                    batch["sample_ids"].tolist())]
        out = {key: value for key, value in batch.items() if key != "tokens"}
        out.update(pad_pairs(pairs, self.pad_id))
        return out
