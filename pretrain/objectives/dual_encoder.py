"""ConveRT-style dual encoder (Henderson et al. 2019) trained with in-batch negatives.

One Transformer encodes both sides; each side has its own reduction and projection (ConveRT's separate
context and response feed-forward heads) unless `shared_head`. Encodings are L2-normalised and compared by
a dot product times a learnable inverse temperature; the loss is the cross-entropy of finding each
context's response among all responses, averaged with the same for each response's context.

Under DDP the responses (and contexts) of every rank are the candidates: the encodings are all-gathered
with the functional collective all_gather_single (torch.distributed.nn.functional.all_gather, which did
this before, is deprecated in favour of it), whose backward is a summing reduce-scatter: every rank's
gradient with respect to the gathered copies lands on the rank that produced them. Each rank backpropagates
world_size * (its loss sum) / global count (see trainer._scaled_loss), so the gradient reaching rank r's
encodings is world_size times the gradient of the global mean loss with respect to them, and DDP's average
over ranks leaves exactly the gradient of the global mean loss: 2 ranks x B equals 1 rank x 2B, gathered
negatives included. Evaluation uses no collectives.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn

from data_pipeline.errors import UserError
from pretrain.config import require
from pretrain.model.flops import flops_per_token
from pretrain.model.lm import TransformerLM
from pretrain.model.packing import pack_sequences, pool_packed
from pretrain.model.pooling import build_pooling, pooled_width


@dataclass(frozen=True)
class DualEncoderConfig:
    """Heads and loss of the dual encoder (the Transformer itself is the `model` section)."""

    pooling: Literal["mean", "first", "2ha", "mead-2ha"] = "2ha"  # mead-2ha: mead's TwoHeadConcat, one for both sides
    reduction_d_k: int = 64                  # query/key width of mead-2ha (mead's reduction_d_k)
    projection_hidden: tuple[int, ...] = ()  # widths of GELU layers before the final projection
    embed_dim: int = 256                     # width of the compared encodings
    shared_head: bool = False                # one pooling + projection for both sides
    temperature: float = 0.1                 # initial; learned as log(1 / temperature)
    max_scale: float = 100.0                 # cap on 1 / temperature (CLIP's), against runaway logits
    recall_candidates: int = 100             # validation: recall@1 among this many responses
    packed: bool = False                     # pack several sequences per row (document masks, no padding)

    def __post_init__(self) -> None:
        require(self.embed_dim >= 1 and all(width >= 1 for width in self.projection_hidden),
                f"embed_dim and projection_hidden widths must be >= 1, got {self.embed_dim} and "
                f"{list(self.projection_hidden)}")
        require(self.temperature > 0.0 and 1.0 / self.temperature <= self.max_scale,
                f"temperature={self.temperature} must be > 0 and >= 1 / max_scale={self.max_scale}")
        require(self.recall_candidates >= 2, f"recall_candidates={self.recall_candidates} must be >= 2")
        require(self.reduction_d_k >= 1, f"reduction_d_k={self.reduction_d_k} must be >= 1")
        require(not self.packed or self.pooling in ("mean", "first"),
                f"packed=true pools each sequence from its own tokens: pooling must be mean or first, got "
                f"{self.pooling!r}")


class EncodingHead(nn.Module):
    """hidden states -> one L2-normalised encoding: reduction, then GELU layers and a linear projection."""

    def __init__(self, cfg: DualEncoderConfig, d_model: int, dropout: float, pooling: nn.Module | None = None) -> None:
        super().__init__()
        self.pooling = pooling if pooling is not None else build_pooling(cfg.pooling, d_model, dropout,
                                                                         cfg.reduction_d_k)
        layers: list[nn.Module] = []
        width = pooled_width(cfg.pooling, d_model)
        for hidden in cfg.projection_hidden:
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, cfg.embed_dim))
        self.projection = nn.Sequential(*layers)
        # PyTorch's default (fan-in) initialisation, not BERT's N(0, 0.02): behind two 0.02 layers the
        # encodings start ~1e-2 long, the scale-free L2 normalisation then lets the biases swamp the
        # input-dependent part within a few steps, and every input collapses onto one encoding.

    def forward(self, hidden: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.pooling(hidden, padding_mask))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled states [B, D] -> L2-normalised encodings."""
        return F.normalize(self.projection(pooled).float(), dim=-1)


def gather_rows(local: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(every rank's rows concatenated in rank order, offset of this rank's rows) with gradients flowing
    back to each rank's own rows; (local, 0) outside a multi-process group. Every rank must pass the same
    number of rows, which the training readers guarantee (their batches are always full)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local, 0
    return funcol.all_gather_single(local, 0, dist.group.WORLD), dist.get_rank() * local.shape[0]


def recall_at_1(contexts: torch.Tensor, responses: torch.Tensor, candidates: int) -> tuple[torch.Tensor, int]:
    """(hits, rows) of ranking each context's response first among `candidates` responses: the batch is cut
    into chunks of that many rows (a remainder is left out, so the task is always equally hard)."""
    chunks = contexts.shape[0] // candidates
    rows = chunks * candidates
    shape = (chunks, candidates, contexts.shape[-1])
    scores = torch.bmm(contexts[:rows].view(shape), responses[:rows].view(shape).transpose(1, 2))
    hits = (scores.argmax(-1) == torch.arange(candidates, device=scores.device)).sum()
    return hits, rows


class DualEncoder(nn.Module):
    """batch {left, right} -> in-batch-negatives loss (training) or loss and recall@1 (evaluation)."""

    loss_weights = {"contrastive": 1.0}
    perplexity_terms = ()

    def __init__(self, model: TransformerLM, cfg: DualEncoderConfig, pad_id: int) -> None:
        super().__init__()
        if model.cfg.head_transform or model.cfg.output_bias:
            raise UserError("model.head_transform and model.output_bias belong to a language-model head, which "
                            "the dual encoder does not train: set both to false")
        self.cfg = cfg
        self.model = model
        self.pad_id = pad_id
        self.context_head = EncodingHead(cfg, model.cfg.d_model, model.cfg.dropout)
        # mead's PairedModel reduces both sides with one reduction layer (and projects each with its own).
        shared_pooling = self.context_head.pooling if cfg.pooling == "mead-2ha" else None
        self.response_head = self.context_head if cfg.shared_head else \
            EncodingHead(cfg, model.cfg.d_model, model.cfg.dropout, shared_pooling)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    def encode(self, tokens: torch.Tensor, head: EncodingHead) -> torch.Tensor:
        if self.cfg.packed:
            packed = pack_sequences(tokens, self.pad_id)
            hidden = self.model(packed.tokens, padding_mask=packed.padding_mask, documents=packed.documents)
            return head.project(pool_packed(hidden, packed, self.cfg.pooling))
        padding_mask = tokens != self.pad_id
        return head(self.model(tokens, padding_mask=padding_mask), padding_mask)

    def encode_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """Contexts [B, T] (padded with pad_id) -> their L2-normalised encodings [B, embed_dim]."""
        return self.encode(tokens, self.context_head)

    def encode_response(self, tokens: torch.Tensor) -> torch.Tensor:
        """Responses [B, T] (padded with pad_id) -> their L2-normalised encodings [B, embed_dim]."""
        return self.encode(tokens, self.response_head)

    def forward(self, batch: dict) -> dict:
        contexts = self.encode_context(batch["left"])
        responses = self.encode_response(batch["right"])
        # Scores in fp32 whatever the autocast: bf16 cosines times a scale of up to 100 would be off by ~0.4.
        with torch.autocast(contexts.device.type, enabled=False):
            out = self.retrieval_loss(contexts, responses)
            if not self.training:
                out["metrics"]["recall@1"] = recall_at_1(contexts, responses, self.cfg.recall_candidates)
        out["tokens"] = batch["left"].numel() + batch["right"].numel()
        return out

    def retrieval_loss(self, contexts: torch.Tensor, responses: torch.Tensor) -> dict:
        """Symmetric in-batch-negatives loss (sum, count), against every rank's encodings when training."""
        if self.training:
            all_contexts, offset = gather_rows(contexts)
            all_responses, _ = gather_rows(responses)
        else:
            all_contexts, all_responses, offset = contexts, responses, 0
        scale = self.log_scale.exp().clamp(max=self.cfg.max_scale)
        targets = torch.arange(contexts.shape[0], device=contexts.device) + offset
        context_logits = scale * contexts @ all_responses.t()
        response_logits = scale * responses @ all_contexts.t()
        loss_sum = 0.5 * (F.cross_entropy(context_logits, targets, reduction="sum")
                          + F.cross_entropy(response_logits, targets, reduction="sum"))
        count = torch.tensor(contexts.shape[0], device=contexts.device)
        hits = (context_logits.argmax(-1) == targets).sum()
        return {"losses": {"contrastive": (loss_sum, count)},
                "metrics": {"batch_accuracy": (hits, count), "scale": (scale.detach() * count, count)}}

    def flops_per_token(self, seq_len: int) -> float:
        """The encoder's matmul FLOPs per token (the heads, run once per sequence, are left out)."""
        return flops_per_token(self.model.cfg, seq_len, output_fraction=0.0)

    def export_model(self) -> DualEncoder:
        """The whole dual encoder: its encoder, both heads and the learned scale."""
        return self
