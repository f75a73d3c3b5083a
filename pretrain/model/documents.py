"""Documents inside packed blocks: which document each token belongs to, and its position within it.

Preprocessing appends the separator after every document, so in a block of packed text a document ends at
(and includes) each separator; the next token starts a new one. A block that starts mid-document counts
that piece as its first document.
"""
from __future__ import annotations

import torch


def document_ids(tokens: torch.Tensor, sep_id: int) -> torch.Tensor:
    """[B, T] int: 0 for the block's first document, +1 after each separator."""
    is_sep = (tokens == sep_id).long()
    return is_sep.cumsum(1) - is_sep


def document_positions(documents: torch.Tensor) -> torch.Tensor:
    """[B, T] position of each token within its document (0 at a document's first token)."""
    index = torch.arange(documents.shape[1], device=documents.device).expand_as(documents)
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(1).values
