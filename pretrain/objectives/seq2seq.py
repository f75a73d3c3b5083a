"""Encoder-decoder trained with teacher forcing to generate the response (right) from the context (left).

The decoder reads start + response and predicts response + end (the trainer uses the tokenizer's [CLS] as
start and its separator, WordPiece [SEP] or BPE <EOS>, as end), so it learns where a response stops;
encoder and decoder share one embedding module, which is also the output projection.
"""
from __future__ import annotations

import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import Tokenizer
from pretrain.model.decoder import TransformerDecoder
from pretrain.model.flops import flops_per_token
from pretrain.model.lm import TransformerLM
from pretrain.objectives.language_modeling import token_cross_entropy
from pretrain.objectives.masking import IGNORE_INDEX


def teacher_forcing(right: torch.Tensor, pad_id: int, start_id: int,
                    end_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder inputs, targets), both [B, T + 1]: inputs are start + response, targets are response + end,
    with IGNORE_INDEX after the end."""
    lengths = (right != pad_id).sum(1, keepdim=True)
    inputs = torch.cat([torch.full_like(right[:, :1], start_id), right], dim=1)
    targets = torch.cat([right, torch.full_like(right[:, :1], pad_id)], dim=1)
    targets = targets.scatter(1, lengths, end_id)
    positions = torch.arange(targets.shape[1], device=right.device)
    return inputs, targets.masked_fill(positions > lengths, IGNORE_INDEX)


class Seq2Seq(nn.Module):
    """batch {left, right} -> token cross-entropy of the response given the context ("lm", with ppl)."""

    loss_weights = {"lm": 1.0}
    perplexity_terms = ("lm",)

    def __init__(self, encoder: TransformerLM, *, pad_id: int, start_id: int, end_id: int) -> None:
        super().__init__()
        if encoder.cfg.head_transform or encoder.cfg.output_bias:
            raise UserError("model.head_transform and model.output_bias are not used by the encoder-decoder "
                            "(its output projection is the shared embeddings): set both to false")
        self.encoder = encoder
        self.decoder = TransformerDecoder(encoder.cfg, encoder.encoder.embeddings)
        self.pad_id, self.start_id, self.end_id = pad_id, start_id, end_id

    @classmethod
    def for_tokenizer(cls, encoder: TransformerLM, tokenizer: Tokenizer) -> Seq2Seq:
        """The trainer's choice of ids: pad, [CLS] to start a response, the separator to end it."""
        return cls(encoder, pad_id=tokenizer.pad_id, start_id=tokenizer.cls_id, end_id=tokenizer.sep_id)

    def forward(self, batch: dict) -> dict:
        left, right = batch["left"], batch["right"]
        logits, targets = self.teacher_forced_logits(left, right)
        out = token_cross_entropy(logits, targets)
        out["tokens"] = left.numel() + targets.numel()
        return out

    def teacher_forced_logits(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder logits [B, T + 1, V], targets [B, T + 1]) of responses `right` given contexts `left`."""
        max_len = self.encoder.cfg.max_len
        if right.shape[1] >= max_len:
            raise UserError(f"responses of {right.shape[1]} tokens plus the start token exceed model.max_len="
                            f"{max_len}: set data.nctx below model.max_len")
        source_mask = left != self.pad_id
        memory = self.encoder(left, padding_mask=source_mask)
        inputs, targets = teacher_forcing(right, self.pad_id, self.start_id, self.end_id)
        return self.decoder.logits(self.decoder(inputs, memory, source_mask)), targets

    def score(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """log p(response + end | context) per pair [B]: contexts and responses padded with pad_id."""
        logits, targets = self.teacher_forced_logits(left, right)
        log_probs = logits.float().log_softmax(-1)
        picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked.masked_fill(targets == IGNORE_INDEX, 0.0).sum(1)

    @torch.no_grad()
    def generate(self, left: torch.Tensor, max_tokens: int) -> torch.Tensor:
        """Greedy responses [B, <= max_tokens] to contexts `left`: the most likely token at each step, up to
        the end token (excluded); finished rows are padded with pad_id."""
        max_tokens = min(max_tokens, self.encoder.cfg.max_len - 1)
        source_mask = left != self.pad_id
        memory = self.encoder(left, padding_mask=source_mask)
        tokens = torch.full_like(left[:, :1], self.start_id)
        done = torch.zeros(left.shape[0], dtype=torch.bool, device=left.device)
        for _ in range(max_tokens):
            best = self.decoder.logits(self.decoder(tokens, memory, source_mask)[:, -1]).argmax(-1)
            done |= best == self.end_id
            tokens = torch.cat([tokens, best.masked_fill(done, self.pad_id)[:, None]], dim=1)
            if done.all():
                break
        return tokens[:, 1:]

    def flops_per_token(self, seq_len: int) -> float:
        """Matmul FLOPs per token for contexts and responses of `seq_len` tokens each, averaged over the two
        sides: the encoder; the decoder with its output projection and its cross-attention (per layer and
        target token, forward: 8 D^2 for the Q, O and the memory's K, V projections, 4 T D for attending over
        the memory; x3 for training)."""
        cfg = self.encoder.cfg
        cross = 3 * cfg.layers * (8 * cfg.d_model ** 2 + 4 * seq_len * cfg.d_model)
        encoder = flops_per_token(cfg, seq_len, output_fraction=0.0)
        decoder = flops_per_token(cfg, seq_len) + cross
        return (encoder + decoder) / 2

    def export_model(self) -> Seq2Seq:
        """The whole encoder-decoder."""
        return self
