"""Encoder-decoder trained with teacher forcing to generate the response (right) from the context (left).

The decoder reads start + response and predicts response + end (the trainer uses the tokenizer's [CLS] as
start and its separator, WordPiece [SEP] or BPE <EOS>, as end), so it learns where a response stops;
encoder and decoder share one embedding module, which is also the output projection.

With `objective.seq2seq.packed`, training packs pair i's context into row r of the encoder's batch and its
response into row r of the decoder's (`packing.pack_aligned`): each response attends causally within itself
and across only to its own context, positions restart at each sequence, and only real target positions are
projected onto the vocabulary. The loss is that of the padded batch; no compute goes to padding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import Tokenizer
from pretrain.model.decoder import TransformerDecoder
from pretrain.model.flops import flops_per_token
from pretrain.model.lm import TransformerLM
from pretrain.model.packing import pack_aligned
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


@dataclass(frozen=True)
class Seq2SeqConfig:
    """packed: several pairs per row of the encoder's and decoder's batches (document masks, no padding)."""

    packed: bool = False


class Seq2Seq(nn.Module):
    """batch {left, right} -> token cross-entropy of the response given the context ("lm", with ppl)."""

    loss_weights = {"lm": 1.0}
    perplexity_terms = ("lm",)

    def __init__(self, encoder: TransformerLM, *, pad_id: int, start_id: int, end_id: int,
                 packed: bool = False) -> None:
        super().__init__()
        if encoder.cfg.head_transform or encoder.cfg.output_bias:
            raise UserError("model.head_transform and model.output_bias are not used by the encoder-decoder "
                            "(its output projection is the shared embeddings): set both to false")
        self.encoder = encoder
        self.decoder = TransformerDecoder(encoder.cfg, encoder.encoder.embeddings)
        self.pad_id, self.start_id, self.end_id = pad_id, start_id, end_id
        self.packed = packed

    @classmethod
    def for_tokenizer(cls, encoder: TransformerLM, tokenizer: Tokenizer, packed: bool = False) -> Seq2Seq:
        """The trainer's choice of ids: pad, [CLS] to start a response, the separator to end it."""
        return cls(encoder, pad_id=tokenizer.pad_id, start_id=tokenizer.cls_id, end_id=tokenizer.sep_id,
                   packed=packed)

    def forward(self, batch: dict) -> dict:
        left, right = batch["left"], batch["right"]
        logits, targets = (self.packed_logits if self.packed else self.teacher_forced_logits)(left, right)
        out = token_cross_entropy(logits, targets)
        out["tokens"] = left.numel() + right.shape[0] * (right.shape[1] + 1)  # padded, as flops_per_token counts
        return out

    def teacher_forced_logits(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder logits [B, T + 1, V], targets [B, T + 1]) of responses `right` given contexts `left`."""
        self._check_length(right)
        source_mask = left != self.pad_id
        memory = self.encoder(left, padding_mask=source_mask)
        inputs, targets = teacher_forcing(right, self.pad_id, self.start_id, self.end_id)
        return self.decoder.logits(self.decoder(inputs, memory, source_mask)), targets

    def packed_logits(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N, V], targets [N]) at the N real decoder positions (start + response of every pair), the
        pairs packed several to a row; the same values as `teacher_forced_logits` gives at those positions."""
        self._check_length(right)
        inputs, targets = teacher_forcing(right, self.pad_id, self.start_id, self.end_id)
        sources, responses = pack_aligned([left, inputs], self.pad_id)  # the start token is never pad
        memory = self.encoder(sources.tokens, padding_mask=sources.padding_mask, documents=sources.documents)
        hidden = self.decoder(responses.tokens, memory, documents=responses.documents,
                              memory_documents=sources.documents)
        real_hidden = hidden.reshape(-1, hidden.shape[-1])[responses.flat_index]
        return self.decoder.logits(real_hidden), targets[inputs != self.pad_id]

    def _check_length(self, right: torch.Tensor) -> None:
        max_len = self.encoder.cfg.max_len
        if right.shape[1] >= max_len:
            raise UserError(f"responses of {right.shape[1]} tokens plus the start token exceed model.max_len="
                            f"{max_len}: set data.nctx below model.max_len")

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
