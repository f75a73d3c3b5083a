"""ELECTRA (Clark et al. 2020): a small MLM generator fills the masked positions with plausible tokens and a
discriminator learns, at every position, whether the token is the original or a replacement.

Embedding sharing (`share_embeddings`, the paper's choice): the generator reads and writes the
discriminator's word vectors, as ELECTRA does when the two widths differ: its input is a linear projection
of the discriminator's word embedding (D -> generator width), and its MLM head maps back to D (dense, GELU,
LayerNorm) before the product with that same table. Position embeddings stay per model. Without sharing the
generator has its own table at its own width.

Sampling is exact categorical sampling from the generator's softmax at temperature 1 by the inverse CDF of
one uniform per target (the same distribution as Gumbel-max, with one random number per target instead of
one per vocabulary entry). The uniforms come from the reader transform, seeded by (seed, epoch, sample),
like the masks, so a resumed run samples exactly what an uninterrupted one would, for any world size.
Special tokens are never sampled, and no gradient flows through the sample.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data_pipeline.errors import UserError
from pretrain.config import require
from pretrain.model.config import TransformerConfig
from pretrain.model.flops import flops_per_token
from pretrain.model.lm import TransformerEncoder, TransformerLM
from pretrain.model.transformer import init_bert_weights
from pretrain.objectives.language_modeling import token_cross_entropy
from pretrain.objectives.masking import MaskingConfig, TokenMasker

SAMPLING_STREAM = 1  # keys the per-sample uniforms apart from the masker's own draws


@dataclass(frozen=True)
class ElectraConfig:
    """The replaced-token-detection recipe; the discriminator's shape is the `model` section."""

    mask_rate: float = 0.15
    replace_with_mask: float = 0.85     # of the targets; the rest keep their token (no random tokens)
    generator_fraction: float = 0.25    # generator width, FFN width and heads as a fraction of the model's
    generator_layers: int = 0           # 0 = as many as the discriminator
    share_embeddings: bool = True
    discriminator_weight: float = 50.0  # lambda in loss = generator MLM + lambda * discriminator

    def masking(self) -> MaskingConfig:
        return MaskingConfig(self.mask_rate, self.replace_with_mask, replace_with_random=0.0)

    def __post_init__(self) -> None:
        self.masking().validate()
        require(0.0 < self.generator_fraction <= 1.0,
                f"generator_fraction={self.generator_fraction} must be in (0, 1]; ELECTRA uses 1/4 to 1/3")
        require(self.generator_layers >= 0,
                f"generator_layers={self.generator_layers} must be >= 0 (0 = as many as the discriminator)")
        require(self.discriminator_weight > 0,
                f"discriminator_weight={self.discriminator_weight} must be > 0; ELECTRA uses 50")


def generator_config(model: TransformerConfig, cfg: ElectraConfig) -> TransformerConfig:
    """The discriminator's config scaled by `generator_fraction`, keeping its head width (so a 256-wide
    generator of a 768-wide, 12-head discriminator has 4 heads of 64)."""
    d_model = max(1, round(model.d_model * cfg.generator_fraction))
    num_heads = max(1, d_model // model.head_dim)
    if d_model % num_heads:
        raise UserError(f"generator width {d_model} (model.d_model x objective.generator_fraction) is not a "
                        f"multiple of the head width {model.head_dim}: pick a fraction that gives one")
    return replace(model, d_model=d_model, num_heads=num_heads, layers=cfg.generator_layers or model.layers,
                   d_ff=max(1, round(model.d_ff * cfg.generator_fraction)), head_transform=False,
                   output_bias=False)


class ProjectedEmbedding(nn.Module):
    """A shared (wider) word embedding followed by a projection to this model's width."""

    def __init__(self, shared: nn.Embedding, d_model: int) -> None:
        super().__init__()
        self.shared = shared
        self.project = nn.Linear(shared.embedding_dim, d_model)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.project(self.shared(tokens))


class ElectraGenerator(nn.Module):
    """A TransformerEncoder with an MLM head (dense, GELU, LayerNorm, then the word table and a bias)."""

    def __init__(self, cfg: TransformerConfig, shared_word: nn.Embedding | None) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(cfg)
        if shared_word is not None:
            self.encoder.embeddings.word = ProjectedEmbedding(shared_word, cfg.d_model)
        width = self.word_table().shape[1]
        self.head = nn.Sequential(nn.Linear(cfg.d_model, width), nn.GELU(),
                                  nn.LayerNorm(width, eps=cfg.layer_norm_eps))
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.head.apply(init_bert_weights)
        if shared_word is not None:
            init_bert_weights(self.encoder.embeddings.word.project)

    def word_table(self) -> torch.Tensor:
        word = self.encoder.embeddings.word
        return word.shared.weight if isinstance(word, ProjectedEmbedding) else word.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder(tokens)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(self.head(hidden), self.word_table(), self.output_bias)


class DiscriminatorHead(nn.Module):
    """ELECTRA's per-token binary classifier: dense, GELU, one logit (> 0: replaced).

    The logit's bias starts at the log-odds of `replaced_prior`, the share of replaced tokens expected at the
    start (the mask rate: an untrained generator's samples almost always differ), as RetinaNet starts its rare
    class (Lin et al. 2017). At zero, the first steps' largest gradient says only "lower every logit" (from
    p = 0.5 to ~0.15), and AdamW moves every weight by ~lr per step whatever its gradient's size, so the
    encoder learns to emit one constant vector (its hidden states' spread over tokens fell from 1.0 to 0.001
    in 50 steps of the small preset) and the constant answer becomes a plateau where its gradients vanish."""

    def __init__(self, d_model: int, replaced_prior: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, 1)
        self.apply(init_bert_weights)
        nn.init.constant_(self.out.bias, math.log(replaced_prior / (1.0 - replaced_prior)))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.dense(hidden))).squeeze(-1)


class ReplacementMasker:
    """Reader transform: TokenMasker's masking (see masking.py) plus `sampling_uniform`, one uniform in
    [0, 1) per target (in target_index order), drawn from a per-(seed, epoch, sample) generator."""

    def __init__(self, masker: TokenMasker) -> None:
        self.masker = masker

    def __call__(self, batch: dict) -> dict:
        out = self.masker(batch)
        rows, seq_len = batch["tokens"].shape
        per_row = np.bincount(out["target_index"].numpy() // seq_len, minlength=rows)
        uniforms = [np.random.default_rng([self.masker.seed, epoch, sample_id, SAMPLING_STREAM]).random(
            count, dtype=np.float32) for count, epoch, sample_id in
            zip(per_row.tolist(), batch["epoch"].tolist(), batch["sample_ids"].tolist())]
        out["sampling_uniform"] = torch.from_numpy(np.concatenate(uniforms) if uniforms else
                                                   np.empty(0, dtype=np.float32))
        return out


def sample_tokens(logits: torch.Tensor, uniform: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """One token per row of logits [N, V] from softmax(logits) with the `banned` ids [V] left out.

    The inverse CDF at u * total mass, searching for the first cumulative sum *above* it: a banned id adds
    no mass, so it never is the first to pass, and u < 1 keeps the index inside the vocabulary.
    """
    probs = logits.float().masked_fill(banned, float("-inf")).softmax(-1)
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, uniform[:, None].float() * cdf[:, -1:], right=True).squeeze(1)


def ratio(hits: torch.Tensor, total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A (sum, count) metric from two boolean masks."""
    return hits.sum(), total.sum()


def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(AUC, 1) of `scores` separating `positive` from the rest (Mann-Whitney U over ranks), or (0, 0) when
    one class is empty, so the logged mean is over the micro-batches that have both and never NaN.

    Tied scores share their mean rank, so a constant score (a discriminator answering the base rate
    everywhere) reads exactly 0.5 rather than whatever order the sort left the ties in."""
    positives = positive.sum()
    negatives = positive.numel() - positives
    if positives == 0 or negatives == 0:
        return scores.new_zeros(()), scores.new_zeros(())
    _, tie_group, tie_sizes = torch.unique(scores.float(), return_inverse=True, return_counts=True)
    last_rank = tie_sizes.cumsum(0).double()
    ranks = (last_rank - (tie_sizes - 1) / 2)[tie_group]
    u_statistic = ranks[positive].sum() - positives * (positives + 1) / 2
    return u_statistic / (positives * negatives), scores.new_ones(())


def electra_terms(generator_logits: torch.Tensor, discriminate: Callable[[torch.Tensor], torch.Tensor],
                  batch: dict, *, banned: torch.Tensor, pad_id: int) -> dict:
    """The recipe past the two networks, for any pair of them (the bench wires HF's through it too):
    generator MLM loss at the targets, a sample from its softmax at each target (no gradient), the
    discriminator (`discriminate`: corrupted tokens [B, T] -> one logit per token) on the tokens with those
    samples in place, and its binary cross-entropy over every non-padding position against "the sample
    differs from the original" (a sample equal to the original counts as original)."""
    tokens, target_index = batch["tokens"], batch["target_index"]
    mlm = token_cross_entropy(generator_logits, batch["targets"])
    with torch.no_grad():
        sampled = sample_tokens(generator_logits, batch["sampling_uniform"], banned)
        corrupted = tokens.reshape(-1).index_copy(0, target_index, sampled).view_as(tokens)
        replaced = corrupted != tokens
    # LM blocks are packed, so nothing is padding to attention; pad ids (if any) are left out of the loss.
    logits = discriminate(corrupted).float()
    real = tokens != pad_id
    loss_sum = F.binary_cross_entropy_with_logits(logits, replaced.float(), weight=real.float(), reduction="sum")
    predicted = (logits > 0) & real
    return {
        "losses": {"generator": mlm["losses"]["lm"], "discriminator": (loss_sum, real.sum())},
        "metrics": {
            "generator_accuracy": mlm["metrics"]["accuracy"],
            "discriminator_accuracy": ratio((predicted == replaced) & real, real),
            # The accuracy of always answering "original": the bar discriminator_accuracy must clear.
            "original_rate": ratio(~replaced & real, real),
            "replaced_recall": ratio(predicted & replaced, replaced),
            "replaced_auc": roc_auc(logits[real], replaced[real]),
            "replaced_of_targets": (replaced.sum(), target_index.numel()),
        },
        "tokens": tokens.numel(),
    }


class Electra(nn.Module):
    """batch {tokens, inputs, target_index, targets, sampling_uniform} -> generator MLM loss and
    discriminator loss (binary cross-entropy over every non-padding position), with their metrics: the
    discriminator's accuracy beside `original_rate` (always answering "original"), its ROC AUC on
    replaced-token detection (mean over micro-batches), recall, and how many targets the sample replaced."""

    perplexity_terms = ("generator",)

    def __init__(self, discriminator: TransformerLM, cfg: ElectraConfig, *, pad_id: int,
                 special_ids: frozenset[int]) -> None:
        super().__init__()
        if discriminator.cfg.head_transform or discriminator.cfg.output_bias:
            raise UserError("model.head_transform and model.output_bias belong to an LM head the ELECTRA "
                            "discriminator does not have: set both to false")
        self.cfg = cfg
        self.loss_weights = {"generator": 1.0, "discriminator": cfg.discriminator_weight}
        self.pad_id = pad_id
        self.discriminator = discriminator
        self.discriminator_head = DiscriminatorHead(discriminator.cfg.d_model, cfg.mask_rate)
        shared = discriminator.encoder.embeddings.word if cfg.share_embeddings else None
        self.generator_cfg = generator_config(discriminator.cfg, cfg)
        self.generator = ElectraGenerator(self.generator_cfg, shared)
        banned = torch.zeros(discriminator.cfg.vocab_size, dtype=torch.bool)
        banned[sorted(special_ids)] = True
        self.register_buffer("banned", banned, persistent=False)

    def forward(self, batch: dict) -> dict:
        hidden = self.generator(batch["inputs"])
        target_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["target_index"])
        return electra_terms(self.generator.logits(target_hidden), self.discriminate, batch, banned=self.banned,
                             pad_id=self.pad_id)

    def discriminate(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] -> one replaced-token logit per position."""
        return self.discriminator_head(self.discriminator(tokens))

    def flops_per_token(self, seq_len: int) -> float:
        """Matmul FLOPs per token of both models: the discriminator and its head at every position, the
        generator's stack at every position and its MLM head (dense, then the V x D table) at the targets."""
        model, generator = self.discriminator.cfg, self.generator_cfg
        table_width = self.generator.word_table().shape[1]
        head = 6 * (model.d_model ** 2 + model.d_model)
        mlm_head = 6 * self.cfg.mask_rate * (generator.d_model + model.vocab_size) * table_width
        return (flops_per_token(model, seq_len, output_fraction=0.0) + head
                + flops_per_token(generator, seq_len, output_fraction=0.0) + mlm_head)

    def export_model(self) -> Electra:
        """The whole of it: discriminator (the model to fine-tune: `--encoder-only` exports just that), its
        replaced-token head, and the generator."""
        return self
