"""Training FLOPs per token of a TransformerLM, the numerator of MFU."""
from __future__ import annotations

from pretrain.model.config import TransformerConfig


def flops_per_token(cfg: TransformerConfig, seq_len: int, *, output_fraction: float = 1.0) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3 x forward) divided by its tokens.

    With L layers, width D, FFN width F, vocab V and T = seq_len:
      6 * N                     N = L * (4 D^2 + 2 D F) + output_fraction * (V D [+ D^2 head transform]):
                                2 FLOPs per weight per token forward (Q, K, V, O, FFN, projection), x3;
                                a gated FFN (geglu, swiglu) has 3 D F weights instead of 2 D F;
      + 12 * L * T * D          q.k scores and the weighted sum of values: 2 * 2 * T * D forward, x3;
      + 6 * L * (2k+1) * D      per relative table (keys; values too when rpr_values): q against 2k+1 rows.
    Attention over T is counted in full even for a causal model (the PaLM / nanoGPT convention) and for
    sliding-window or document-masked layers (the masked SDPA computes every score), and
    embedding lookups, LayerNorms, softmax and element-wise ops are not counted.
    output_fraction: share of positions that go through the output projection (MLM projects only its
    targets, ~0.15; a causal LM projects all of them).
    """
    d, layers = cfg.d_model, cfg.layers
    ffn_matrices = 2 if cfg.ffn == "gelu" else 3
    block_params = layers * (4 * d * d + ffn_matrices * d * cfg.d_ff)
    output_params = cfg.vocab_size * d + (d * d if cfg.head_transform else 0)
    attention = 12 * layers * seq_len * d
    relative_tables = (1 + int(cfg.rpr_values)) if cfg.rpr_k else 0
    relative = 6 * layers * (2 * cfg.rpr_k + 1) * d * relative_tables
    return 6.0 * (block_params + output_fraction * output_params) + attention + relative
