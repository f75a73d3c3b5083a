"""The two language-modelling objectives of pretrain/tlm.py: masked LM and causal LM.

Both return loss *sums* and target counts; the training loop normalises by the global count so that the
result does not depend on how the batch is split over ranks and micro-batches.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.model.documents import document_ids
from pretrain.model.flops import flops_per_token
from pretrain.model.lm import TransformerLM


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Loss sum and accuracy over targets (-100 ignored), in fp32 whatever the autocast dtype."""
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    valid = targets != -100
    count = valid.sum()
    loss_sum = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
    # max's indices are argmax's (the first best on a tie), found in ~3/4 of argmax's time on a CPU.
    correct = ((logits.max(-1).indices == targets) & valid).sum()
    return {"losses": {"lm": (loss_sum, count)}, "metrics": {"accuracy": (correct, count)}}


def target_slots(target_index: torch.Tensor, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat target positions (ascending, into [B * T]) laid out per row: (positions [B, Q] of each row's
    targets, Q the most any row has, short rows padded with position 0; index of every target, in order,
    into the flattened [B * Q])."""
    rows, columns = target_index // length, target_index % length
    counts = torch.bincount(rows, minlength=batch)
    slots = torch.arange(target_index.numel(), device=target_index.device) - (counts.cumsum(0) - counts)[rows]
    width = int(counts.max())
    positions = torch.zeros(batch, width, dtype=torch.long, device=target_index.device)
    positions[rows, slots] = columns
    return positions, rows * width + slots


class LanguageModelObjective(nn.Module):
    """What both LM objectives share: one TransformerLM, one token-level loss term, export of the LM, and
    the documents of packed blocks (found from `sep_id`) when the model masks attention by document."""

    loss_weights = {"lm": 1.0}
    perplexity_terms = ("lm",)

    def __init__(self, model: TransformerLM, output_fraction: float, sep_id: int | None = None) -> None:
        super().__init__()
        if model.cfg.document_mask and sep_id is None:
            raise ValueError("model.document_mask needs the separator id that ends each document")
        self.model = model
        self.output_fraction = output_fraction  # share of positions projected onto the vocab
        self.sep_id = sep_id

    def documents(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Document ids of the block's tokens when the model masks by document, else None."""
        return document_ids(tokens, self.sep_id) if self.model.cfg.document_mask else None

    def flops_per_token(self, seq_len: int) -> float:
        return flops_per_token(self.model.cfg, seq_len, output_fraction=self.output_fraction)

    def export_model(self) -> TransformerLM:
        return self.model


class MaskedLM(LanguageModelObjective):
    """BERT-style MLM: predicts the original token at the positions the masker chose.

    Only the target positions go through the V x D output projection (about 15% of them), which is where
    most of an MLM step's FLOPs would otherwise go for little gain; and through the last layer's queries,
    attention output and feed-forward (`outputs_at`): nothing reads the other positions' final states.
    """

    def __init__(self, model: TransformerLM, mask_rate: float, sep_id: int | None = None) -> None:
        super().__init__(model, output_fraction=mask_rate, sep_id=sep_id)

    def forward(self, batch: dict) -> dict:
        inputs, target_index = batch["inputs"], batch["target_index"]
        outputs_at, picked = None, target_index
        if not self.model.cfg.rpr_k and target_index.numel():
            outputs_at, picked = target_slots(target_index, *inputs.shape)
        # The separator is special, never masked: the corrupted inputs show the same documents.
        hidden = self.model(inputs, padding_mask=batch.get("padding_mask"), documents=self.documents(inputs),
                            outputs_at=outputs_at)
        target_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, picked)
        out = token_cross_entropy(self.model.logits(target_hidden), batch["targets"])
        out["tokens"] = inputs.numel()
        return out


class CausalLM(LanguageModelObjective):
    """GPT-style next-token prediction: position t predicts token t+1 (labels shifted, not copied)."""

    def __init__(self, model: TransformerLM, pad_id: int, sep_id: int | None = None) -> None:
        super().__init__(model, output_fraction=1.0, sep_id=sep_id)
        self.pad_id = pad_id

    def forward(self, batch: dict) -> dict:
        tokens = batch["tokens"]
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        hidden = self.model(inputs, causal=True, documents=self.documents(inputs))
        targets = targets.masked_fill(targets == self.pad_id, -100)
        out = token_cross_entropy(self.model.logits(hidden), targets)
        out["tokens"] = inputs.numel()
        return out
