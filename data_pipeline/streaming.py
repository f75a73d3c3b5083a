"""TextStreamDataset: batches straight from raw text, tokenized on the fly, for runs that skip preprocess.

It reads the documents `preprocess` would write (the same line rules, skip counts and tokenization,
taken from `data_pipeline.preprocess`), in input order, and turns them into the samples ShardedDataset
makes with `shuffle=False`: LM documents each followed by `sep_id`, concatenated per pass and cut into
`nctx` blocks (a pass's last partial block is dropped); paired lines `left<TAB>right` cut to their first
`nctx` tokens per side and padded with `pad_id`. Epoch e is the e-th pass over the text, sample i of an
epoch is its i-th block (or pair), and position p counts samples across passes.

Splitting and resuming follow ShardedDataset's rule over those positions (global batches of
`batch_size * world_size`, rank slices, worker w taking every num_workers-th global batch), so the
order is the same for any world size and a state resumes with any world size. The price of an order that
does not depend on the world size, without an index: every DataLoader worker of every rank tokenizes the
whole text and keeps only its own samples, and a resumed stream re-tokenizes from the start (one pass to
count the samples per epoch, then from the start of the cursor's pass). For large corpora or many GPUs,
preprocess once and use ShardedDataset, which also shuffles.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset

from data_pipeline.errors import DataError
from data_pipeline.preprocess import encode_chunk, read_chunks
from data_pipeline.readers import Batch, Transform, check_batching, pad_pairs, restored_cursor, worker_slices
from data_pipeline.text_files import expand_inputs
from data_pipeline.tokenizer import Tokenizer

Sample = np.ndarray | tuple[np.ndarray, np.ndarray]


class TextStreamDataset(IterableDataset):
    """Per-rank batches tokenized from text files, dirs, globs or .gz; use with `DataLoader(batch_size=None)`.

    Batches have the fields of ShardedDataset's (`sample_ids` is the index within the pass). `epochs=None`
    streams forever; with `epochs=k` iteration ends after k passes. Call `load_state_dict` before
    creating the DataLoader iterator.
    """

    def __init__(self, inputs: Sequence[str | Path], tokenizer: Tokenizer, *, nctx: int, batch_size: int,
                 rank: int = 0, world_size: int = 1, paired: bool = False, epochs: int | None = None,
                 errors: str = "strict", transform: Transform | None = None) -> None:
        super().__init__()
        check_batching(nctx, batch_size, rank, world_size, epochs)
        self.inputs = [str(i) for i in inputs]
        self.tokenizer, self.nctx, self.batch_size = tokenizer, nctx, batch_size
        self.rank, self.world_size, self.paired, self.epochs = rank, world_size, paired, epochs
        self.errors, self.transform = errors, transform
        self._inputs_fingerprint = _files_fingerprint(expand_inputs(self.inputs))
        self._start = 0

    def state_dict(self, cursor: int) -> dict[str, Any]:
        """What to checkpoint: the cursor of the last consumed batch plus what defines the stream."""
        return {"cursor": int(cursor), **self._order_key()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state["cursor"]` (any world size); a state for other text is a DataError."""
        self._start = restored_cursor(state, self._order_key())

    def _order_key(self) -> dict[str, Any]:
        return {"inputs": self._inputs_fingerprint, "tokenizer": self.tokenizer.fingerprint,
                "nctx": self.nctx, "paired": self.paired}

    def __iter__(self) -> Iterator[Batch]:
        slices = worker_slices(self._start, math.inf, self.batch_size, self.rank, self.world_size)
        lo, hi, end = next(slices)
        rows: list[tuple[int, int, Sample]] = []
        for position, epoch, index, sample in self._positions():
            if lo <= position < hi:
                rows.append((epoch, index, sample))
            if position == end - 1:  # the global batch is complete: emit this rank's slice of it
                if rows:
                    yield self._batch(rows, end)
                    rows = []
                lo, hi, end = next(slices)
        if rows:  # a finite stream ended inside this global batch
            yield self._batch(rows, position + 1)

    def _positions(self) -> Iterator[tuple[int, int, int, Sample]]:
        """(position, epoch, index in epoch, sample) from the start of the start cursor's pass on."""
        position = epoch = 0
        per_epoch = None
        while self.epochs is None or epoch < self.epochs:
            if per_epoch is not None and position + per_epoch <= self._start:
                skip = (self._start - position) // per_epoch  # passes are identical: skip without reading
                if self.epochs is not None:
                    skip = min(skip, self.epochs - epoch)
                position, epoch = position + skip * per_epoch, epoch + skip
                continue
            count = 0
            for sample in self._samples():
                yield position, epoch, count, sample
                position, count = position + 1, count + 1
            if count == 0:
                raise DataError(f"{', '.join(self.inputs)}: no samples (an LM stream needs at least "
                                f"nctx={self.nctx} tokens, a paired one a line with one tab): add text or "
                                f"lower nctx")
            per_epoch, epoch = count, epoch + 1

    def _samples(self) -> Iterator[Sample]:
        """One pass over the text: nctx blocks of the separated token stream, or truncated pairs."""
        leftover = np.empty(0, dtype=np.int64)
        separator = np.array([self.tokenizer.sep_id], dtype=np.int64)
        for chunk in read_chunks(self.inputs, self.paired, self.errors):
            docs = encode_chunk(self.tokenizer, chunk).docs()
            if self.paired:
                yield from ((left[:self.nctx].astype(np.int64), right[:self.nctx].astype(np.int64))
                            for left, right in docs)
                continue
            stream = np.concatenate([leftover, *(part for (doc,) in docs for part in (doc, separator))])
            full = len(stream) - len(stream) % self.nctx
            yield from stream[:full].reshape(-1, self.nctx)
            leftover = stream[full:]

    def _batch(self, rows: list[tuple[int, int, Sample]], cursor: int) -> Batch:
        samples = [sample for _, _, sample in rows]
        batch = pad_pairs(samples, self.tokenizer.pad_id) if self.paired \
            else {"tokens": torch.from_numpy(np.stack(samples))}
        batch.update(sample_ids=torch.tensor([index for _, index, _ in rows]),
                     epoch=torch.tensor([epoch for epoch, _, _ in rows]), cursor=cursor)
        return self.transform(batch) if self.transform else batch


def _files_fingerprint(files: Sequence[Path]) -> str:
    """Names and sizes of the input files: cheap, and changes when the text is swapped or grows."""
    listing = "\n".join(f"{path}\t{path.stat().st_size}" for path in files)
    return hashlib.sha256(listing.encode()).hexdigest()[:16]
