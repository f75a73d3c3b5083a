"""The one configuration of the Transformer family: BERT, GPT-2 and the 8-mile variants are settings of it."""
from __future__ import annotations

from dataclasses import dataclass

from data_pipeline.errors import UserError

NORMS = ("post", "pre", "mead-pre")
EMBEDDINGS = ("learned", "learned-bias", "sinusoidal", "none")


@dataclass
class TransformerConfig:
    """Shape and variant of a Transformer LM.

    norm: "post" (BERT: x = LN(x + sublayer(x))), "pre" (GPT-2: x = x + sublayer(LN(x)), plus a final LN) or
    "mead-pre" (mead-layers' pre-LN block: x = LN(x); x = x + sublayer(x), plus a final LN), which mead's
    own models compute from an NPZ export.
    embeddings: "learned" (E[x] + P[t]), "learned-bias" (E[x] + P[t] + b: BERT's token-type row 0 as one
    bias), "sinusoidal" (sqrt(d_model) * E[x] + fixed sinusoids, as 8-mile does) or "none" (no absolute
    positions: needs relative attention, rpr_k > 0).
    rpr_k: window of Shaw et al. relative attention keys (0 = off); rpr_values adds relative values.
    head_transform: BERT's MLM head (dense -> GELU -> LN) before the tied output projection.
    """

    vocab_size: int = 0  # 0 = filled from the tokenizer by the trainer
    d_model: int = 256
    num_heads: int = 4
    layers: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    max_len: int = 512
    layer_norm_eps: float = 1e-12
    norm: str = "post"
    embeddings: str = "learned"
    embeddings_layer_norm: bool = True
    rpr_k: int = 0
    rpr_values: bool = False
    head_transform: bool = False
    output_bias: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def validate(self) -> None:
        """Raise a one-line UserError naming the first bad setting and how to fix it."""
        positive = {"d_model": self.d_model, "num_heads": self.num_heads, "layers": self.layers,
                    "d_ff": self.d_ff, "max_len": self.max_len}
        for name, value in positive.items():
            if value <= 0:
                raise UserError(f"model.{name}={value} must be a positive integer")
        if self.vocab_size < 0:
            raise UserError(f"model.vocab_size={self.vocab_size} must be >= 0 (0 = take it from the tokenizer)")
        if self.d_model % self.num_heads:
            raise UserError(f"model.d_model={self.d_model} must be divisible by model.num_heads={self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.layer_norm_eps <= 0:
            raise UserError(f"model.layer_norm_eps={self.layer_norm_eps} must be > 0")
        if self.norm not in NORMS:
            raise UserError(f"model.norm={self.norm!r} must be one of {', '.join(NORMS)}")
        if self.embeddings not in EMBEDDINGS:
            raise UserError(f"model.embeddings={self.embeddings!r} must be one of {', '.join(EMBEDDINGS)}")
        if self.rpr_k < 0:
            raise UserError(f"model.rpr_k={self.rpr_k} must be >= 0 (0 turns relative attention off)")
        if self.embeddings == "none" and self.rpr_k == 0:
            raise UserError("model.embeddings='none' leaves the model without any position information: "
                            "set model.rpr_k > 0 (relative attention) or choose other embeddings")
        if self.rpr_values and self.rpr_k == 0:
            raise UserError("model.rpr_values=true needs relative attention: set model.rpr_k > 0")
        if self.embeddings == "sinusoidal" and self.d_model % 2:
            raise UserError(f"model.embeddings='sinusoidal' pairs sin/cos channels: model.d_model={self.d_model} "
                            "must be even")
