"""mead-baseline's 8-mile NPZ names for the Transformer family's pieces, as mead-layers 2.4.2 writes and
reads them: the layout helpers every adapter composes (see pretrain/exportable.py).

Arrays are float32, keys joined with "/", Linear weights as torch's [out, in]. A TransformerLM is a "TLM":

    TLM/Embeddings/x/weights [V, D]               word embeddings (the output projection is tied to them)
    TLM/Embeddings/x/pos_weights [max_len, D]     learned positions
    TLM/Embeddings/tt/weights [2, D]              "learned-bias": row 0 is the bias, row 1 zeros (BERT's
                                                  token types, as mead writes LearnedPositional...WithBias)
    TLM/Embeddings/reduction/ln/{weights,bias}    the LayerNorm after the embeddings
    TLM/TransformerEncoderStack/{i}/attn/{w_Q,w_K,w_V,w_O}/{weights,bias}
    TLM/TransformerEncoderStack/{i}/attn/rpr_key [2k+1, d_k], .../attn/rpr_value   relative attention
    TLM/TransformerEncoderStack/{i}/ffn/expansion/{weights,bias} [F, D], .../ffn/squeeze/... [D, F]
    TLM/TransformerEncoderStack/{i}/{ln1,ln2}/{weights,bias}
    TLM/TransformerEncoderStack/ln/{weights,bias}  the final LayerNorm of a pre-LN stack (absent for post-LN)

mead's encoder block computes, post-LN, x = ln2(x + attn(x)); x = ln1(x + ffn(x)): its ln2 is our
attention sublayer's norm and its ln1 the feed-forward one's, and mead-layers' own model computes our
function from the NPZ. Pre-LN it normalises with ln1 before the attention and ln2 before the feed-forward,
which is where ours go, but its residual starts from the normalised input (x = ln1(x); x = x + attn(x))
where ours and GPT-2's start from x: a pre-LN NPZ holds the right weights under mead's names, yet mead's
own pre-LN model computes a different function from them (`mead_notes` says so). model.norm="mead-pre" is
mead's block, which mead computes exactly.

Where mead has no place for one of our weights the key is an extension, named beside mead's, and mead's
loaders ignore it; every weight is written, so reading the NPZ back restores the model exactly.
"""
from __future__ import annotations

from data_pipeline.errors import UserError
from pretrain.exportable import Entry, Layout
from pretrain.model.config import TransformerConfig


def linear(ours: str, theirs: str) -> Layout:
    """A Linear or LayerNorm: torch's weight/bias are 8-mile's weights/bias."""
    return [Entry(f"{ours}.weight", (f"{theirs}/weights",)), Entry(f"{ours}.bias", (f"{theirs}/bias",))]


def attention(ours: str, theirs: str, cfg: TransformerConfig, relative: bool = True) -> Layout:
    """A MultiHeadAttention: our fused Q/K/V projection is mead's w_Q, w_K and w_V stacked."""
    layout = [Entry(f"{ours}.w_QKV.{part}", tuple(f"{theirs}/{w}/{suffix}" for w in ("w_Q", "w_K", "w_V")))
              for part, suffix in (("weight", "weights"), ("bias", "bias"))]
    layout += linear(f"{ours}.w_O", f"{theirs}/w_O")
    if relative and cfg.rpr_k:
        layout.append(Entry(f"{ours}.rpr_key.weight", (f"{theirs}/rpr_key",)))
    if relative and cfg.rpr_values:
        layout.append(Entry(f"{ours}.rpr_value.weight", (f"{theirs}/rpr_value",)))
    return layout


def _norm_names(cfg: TransformerConfig, sublayers: int) -> tuple[str, ...]:
    """mead's LayerNorm name for each of a block's sublayers, in order. Pre-LN (either): ln1, ln2(, ln3) before
    each. Post-LN: the norm after the last sublayer is ln1 and the others shift up by one."""
    names = tuple(f"ln{i}" for i in range(1, sublayers + 1))
    return names if cfg.norm != "post" else names[1:] + names[:1]


# Settings mead-baseline's Transformer has no counterpart for, and the value it computes.
MEAD_REQUIRES = (("rope", False), ("ffn", "gelu"), ("norm_layer", "layernorm"), ("bias", True),
                 ("first_attn_norm", True), ("global_every", 1))


def check_mead_expressible(cfg: TransformerConfig) -> None:
    """UserError naming the first setting an 8-mile NPZ cannot express."""
    for name, value in MEAD_REQUIRES:
        if getattr(cfg, name) != value:
            raise UserError(f"--format npz: mead-baseline's Transformer cannot express model.{name}="
                            f"{getattr(cfg, name)!r} (needs {value!r}); export it as torch or hf instead")


def encoder_stack(cfg: TransformerConfig, ours: str, theirs: str) -> Layout:
    """The blocks (and final LayerNorm) of a TransformerEncoder as a TransformerEncoderStack (UserError for
    a model mead cannot express)."""
    check_mead_expressible(cfg)
    layout: Layout = linear(f"{ours}.final_norm", f"{theirs}/ln") if cfg.norm != "post" else []
    attn_ln, ffn_ln = _norm_names(cfg, 2)
    for i in range(cfg.layers):
        block, layer = f"{ours}.layers.{i}", f"{theirs}/{i}"
        layout += attention(f"{block}.attn", f"{layer}/attn", cfg)
        layout += linear(f"{block}.ffn.expansion", f"{layer}/ffn/expansion")
        layout += linear(f"{block}.ffn.squeeze", f"{layer}/ffn/squeeze")
        layout += linear(f"{block}.attn_norm", f"{layer}/{attn_ln}")
        layout += linear(f"{block}.ffn_norm", f"{layer}/{ffn_ln}")
    return layout


def decoder_stack(cfg: TransformerConfig, ours: str, theirs: str) -> Layout:
    """A TransformerDecoder's blocks (and final LayerNorm) as a TransformerDecoderStack. mead's decoder
    attends over the memory with relative positions too; ours does not, so src_attn has no rpr arrays."""
    layout: Layout = linear(f"{ours}.final_norm", f"{theirs}/ln") if cfg.norm != "post" else []
    self_ln, src_ln, ffn_ln = _norm_names(cfg, 3)
    for i in range(cfg.layers):
        block, layer = f"{ours}.layers.{i}", f"{theirs}/{i}"
        layout += attention(f"{block}.self_attn", f"{layer}/self_attn", cfg)
        layout += attention(f"{block}.cross_attn", f"{layer}/src_attn", cfg, relative=False)
        layout += linear(f"{block}.ffn.expansion", f"{layer}/ffn/expansion")
        layout += linear(f"{block}.ffn.squeeze", f"{layer}/ffn/squeeze")
        layout += linear(f"{block}.self_attn_norm", f"{layer}/{self_ln}")
        layout += linear(f"{block}.cross_attn_norm", f"{layer}/{src_ln}")
        layout += linear(f"{block}.ffn_norm", f"{layer}/{ffn_ln}")
    return layout


def embeddings(cfg: TransformerConfig, ours: str, theirs: str, key: str) -> Layout:
    """Word and position embeddings (feature `key`), the learned bias and the LayerNorm after them."""
    layout = [Entry(f"{ours}.word.weight", (f"{theirs}/{key}/weights",))]
    if cfg.embeddings.startswith("learned"):
        layout.append(Entry(f"{ours}.position.weight", (f"{theirs}/{key}/pos_weights",)))
    if cfg.embeddings == "learned-bias":
        layout.append(Entry(f"{ours}.bias", (f"{theirs}/tt/weights",), bias_row=True))
    if cfg.embeddings_layer_norm:
        layout += linear(f"{ours}.layer_norm", f"{theirs}/reduction/ln")
    return layout


def tlm_layout(cfg: TransformerConfig, ours: str = "", name: str = "TLM") -> Layout:
    """A TransformerLM (under state-dict prefix `ours`). Extensions: {name}/OutputHead/{transform,ln} and
    {name}/OutputHead/bias hold the MLM head transform and the output bias when the model has them."""
    layout = embeddings(cfg, f"{ours}encoder.embeddings", f"{name}/Embeddings", "x")
    layout += encoder_stack(cfg, f"{ours}encoder", f"{name}/TransformerEncoderStack")
    if cfg.head_transform:
        layout += linear(f"{ours}head.dense", f"{name}/OutputHead/transform")
        layout += linear(f"{ours}head.layer_norm", f"{name}/OutputHead/ln")
    if cfg.output_bias:
        layout.append(Entry(f"{ours}output_bias", (f"{name}/OutputHead/bias",)))
    return layout




def mead_notes(cfg: TransformerConfig) -> list[str]:
    """What mead-layers computes differently from a model of `cfg` loaded from its NPZ."""
    if cfg.norm == "pre":
        return ["model.norm='pre': mead's pre-LN block adds the residual to the normalised input, so mead-layers "
                "computes a different function from this NPZ (train with model.norm='mead-pre' for mead)"]
    return []
