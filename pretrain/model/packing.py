"""Unpadding for batches of short sequences: several sequences share one row, kept apart by document masks,
so no attention or FFN compute goes to padding; each sequence is then pooled from its own tokens.

Rows are filled in batch order (next fit: a sequence that does not fit in the current row starts a new
one), so the packing is a pure function of the batch and every rank packs its own batch identically.
Pairs (an encoder-decoder's contexts and responses) are packed row for row (`pack_aligned`), so a row of
responses finds its contexts in the same row of the encoder's batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PackedSequences:
    """B right-padded sequences packed into R rows of the same length T."""

    tokens: torch.Tensor      # [R, T], pad_id after the last sequence of a row
    documents: torch.Tensor   # [R, T] index of the sequence each token belongs to, -1 at padding
    flat_index: torch.Tensor  # [N] position in the flattened [R * T] of every real token, sequence by sequence
    sequence: torch.Tensor    # [N] the sequence of each of those tokens
    starts: torch.Tensor      # [B] flattened position of each sequence's first token
    lengths: torch.Tensor     # [B] real tokens per sequence

    @property
    def padding_mask(self) -> torch.Tensor:
        return self.documents >= 0


def pack_sequences(tokens: torch.Tensor, pad_id: int) -> PackedSequences:
    """Pack right-padded sequences [B, T] into as few rows of T as next fit gives."""
    return pack_aligned([tokens], pad_id)[0]


def pack_aligned(sides: list[torch.Tensor], pad_id: int) -> list[PackedSequences]:
    """Pack the sequences of several right-padded sides [B, T_side] row for row: sequence i of every side
    lands in the same row index, so row r of one side's packing holds the partners of row r of the other's
    (the sources of a row of targets). Next fit over the B tuples: a tuple that does not fit in the current
    row on some side starts a new row on all of them."""
    lengths = [(side != pad_id).sum(1).tolist() for side in sides]
    capacities = [side.shape[1] for side in sides]
    rows: list[int] = []
    starts: list[list[int]] = [[] for _ in sides]
    row, fills = 0, [0] * len(sides)
    for sizes in zip(*lengths):
        if any(fill + size > capacity for fill, size, capacity in zip(fills, sizes, capacities)):
            row, fills = row + 1, [0] * len(sides)
        rows.append(row)
        for side, size in enumerate(sizes):
            starts[side].append(fills[side])
            fills[side] += size
    return [_place(side, pad_id, rows, side_starts, row + 1) for side, side_starts in zip(sides, starts)]


def _place(tokens: torch.Tensor, pad_id: int, rows: list[int], starts: list[int], num_rows: int) -> PackedSequences:
    """Copy sequence i of `tokens` [B, T] to row rows[i] from column starts[i] of a [num_rows, T] block."""
    batch, length = tokens.shape
    device = tokens.device
    real = tokens != pad_id
    starts_flat = torch.tensor(rows, device=device) * length + torch.tensor(starts, device=device)
    positions = starts_flat[:, None] + torch.arange(length, device=device)
    flat_index, sequence = positions[real], torch.arange(batch, device=device)[:, None].expand_as(tokens)[real]
    packed = torch.full((num_rows * length,), pad_id, dtype=tokens.dtype, device=device)
    documents = torch.full((num_rows * length,), -1, dtype=torch.long, device=device)
    packed[flat_index] = tokens[real]
    documents[flat_index] = sequence
    return PackedSequences(packed.view(num_rows, length), documents.view(num_rows, length), flat_index, sequence,
                           starts_flat, real.sum(1))


def pool_packed(hidden: torch.Tensor, packed: PackedSequences, kind: str) -> torch.Tensor:
    """hidden [R, T, D] of packed rows -> [B, D]: the mean of each sequence's states ("mean") or its first
    state ("first")."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    if kind == "first":
        return flat[packed.starts]
    sums = flat.new_zeros(packed.lengths.shape[0], flat.shape[-1]).index_add_(0, packed.sequence,
                                                                            flat[packed.flat_index])
    return sums / packed.lengths.clamp(min=1).unsqueeze(-1).to(sums.dtype)
