"""The one configuration of the Transformer family: BERT, GPT-2 and the 8-mile variants are settings of it."""
from __future__ import annotations

from dataclasses import dataclass

from data_pipeline.errors import UserError

NORMS = ("post", "pre", "mead-pre")
EMBEDDINGS = ("learned", "learned-bias", "sinusoidal", "none")
NORM_LAYERS = ("layernorm", "rmsnorm")
FFNS = ("gelu", "geglu", "swiglu")


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

    The modern settings (ModernBERT, Llama), each independent of the others:
    rope: rotary positions on queries and keys, with base `rope_theta` (`rope_local_theta` on sliding-window
    layers; 0 = the same); positions restart at every document when the objective passes document ids.
    ffn: "gelu" (D -> F -> D), or a gated unit act(x W_a) * (x W_b): "geglu" (GELU) or "swiglu" (SiLU).
    norm_layer: "layernorm" or "rmsnorm"; bias: False drops the biases of every linear and norm.
    first_attn_norm: False skips layer 0's attention norm (ModernBERT: the embedding norm precedes it).
    global_every: every Nth layer (0, N, 2N, ...) attends globally, the others within a sliding window of
    `local_window` tokens (|i - j| <= local_window // 2); 1 = all layers global.
    document_mask: in the packed blocks of language modelling, a token attends only inside its own document
    (the objective finds documents from the separator preprocessing appends to each).
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
    rope: bool = False
    rope_theta: float = 10000.0
    rope_local_theta: float = 0.0
    ffn: str = "gelu"
    norm_layer: str = "layernorm"
    bias: bool = True
    first_attn_norm: bool = True
    global_every: int = 1
    local_window: int = 128
    document_mask: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def refuse_document_mask(self, trainer: str) -> None:
        """UserError for a trainer whose sequences are not packed blocks of documents."""
        if self.document_mask:
            raise UserError(f"model.document_mask=true masks packed LM blocks by document; {trainer} does not "
                            "pack documents: set model.document_mask=false")

    def is_global(self, layer: int) -> bool:
        """Does layer `layer` attend over the whole sequence (rather than a sliding window)?"""
        return layer % self.global_every == 0

    def layer_rope_theta(self, layer: int) -> float:
        return self.rope_theta if self.is_global(layer) or not self.rope_local_theta else self.rope_local_theta

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
        if self.embeddings == "none" and self.rpr_k == 0 and not self.rope:
            raise UserError("model.embeddings='none' leaves the model without any position information: "
                            "set model.rope=true, model.rpr_k > 0 (relative attention) or choose other embeddings")
        if self.rpr_values and self.rpr_k == 0:
            raise UserError("model.rpr_values=true needs relative attention: set model.rpr_k > 0")
        if self.embeddings == "sinusoidal" and self.d_model % 2:
            raise UserError(f"model.embeddings='sinusoidal' pairs sin/cos channels: model.d_model={self.d_model} "
                            "must be even")
        self._validate_modern()

    def _validate_modern(self) -> None:
        if self.ffn not in FFNS:
            raise UserError(f"model.ffn={self.ffn!r} must be one of {', '.join(FFNS)}")
        if self.norm_layer not in NORM_LAYERS:
            raise UserError(f"model.norm_layer={self.norm_layer!r} must be one of {', '.join(NORM_LAYERS)}")
        if self.rope and self.head_dim % 2:
            raise UserError(f"model.rope=true rotates channel pairs: the head width d_model / num_heads = "
                            f"{self.head_dim} must be even")
        if self.rope_theta <= 0 or self.rope_local_theta < 0:
            raise UserError(f"model.rope_theta={self.rope_theta} must be > 0 and model.rope_local_theta="
                            f"{self.rope_local_theta} >= 0 (0 = rope_theta)")
        if self.global_every < 1:
            raise UserError(f"model.global_every={self.global_every} must be >= 1 (1 = every layer global)")
        if self.global_every > 1 and self.local_window < 2:
            raise UserError(f"model.local_window={self.local_window} must be >= 2 (tokens a local layer sees)")
        if self.rope and self.rpr_k:
            raise UserError("model.rope=true and model.rpr_k > 0 are two relative-position schemes: choose one")
        if (self.global_every > 1 or self.rope) and self.rpr_values:
            raise UserError("model.rpr_values=true takes the explicit attention path, which has no sliding "
                            "window or rotary positions: set it to false")
        if not self.first_attn_norm and self.norm != "pre":
            raise UserError("model.first_attn_norm=false applies to pre-LN models: set model.norm=pre")
