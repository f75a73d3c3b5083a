"""mead-baseline's 8-mile NPZ layouts, as mead-layers 2.4.2 writes and reads them, for our three models.

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
own pre-LN model computes a different function from them.

A DualEncoder follows save_transformer_de_npz ("TLM" embeddings and stack, TLM/ReductionLayer, TLM/ff1
and TLM/ff2), a Seq2Seq follows save_transformer_seq2seq_npz ("Seq2Seq/SrcEmbeddings/x",
Seq2Seq/TransformerEncoderStack, Seq2Seq/TransformerDecoderStack/{i}/{self_attn,src_attn,ffn,ln1,ln2,ln3},
Seq2Seq/TgtEmbedding/y): see their functions. Where mead has no place for one of our weights the key is an
extension, named beside mead's, and mead's loaders ignore it; every weight is written, so reading the
NPZ back restores the model exactly.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data_pipeline.errors import UserError
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.objectives.dual_encoder import DualEncoder, EncodingHead
from pretrain.objectives.seq2seq import Seq2Seq


@dataclass(frozen=True)
class Entry:
    """One of our state-dict tensors and the NPZ arrays it is stored as: split along dim 0 into
    `theirs` (one key: the tensor itself), or as row 0 of a 2-row table (`bias_row`: mead's form of
    BERT's token-type-0 embedding)."""

    ours: str
    theirs: tuple[str, ...]
    bias_row: bool = False


Layout = list[Entry]


def _linear(ours: str, theirs: str) -> Layout:
    """A Linear or LayerNorm: torch's weight/bias are 8-mile's weights/bias."""
    return [Entry(f"{ours}.weight", (f"{theirs}/weights",)), Entry(f"{ours}.bias", (f"{theirs}/bias",))]


def _attention(ours: str, theirs: str, cfg: TransformerConfig, relative: bool = True) -> Layout:
    """A MultiHeadAttention: our fused Q/K/V projection is mead's w_Q, w_K and w_V stacked."""
    layout = [Entry(f"{ours}.w_QKV.{part}", tuple(f"{theirs}/{w}/{suffix}" for w in ("w_Q", "w_K", "w_V")))
              for part, suffix in (("weight", "weights"), ("bias", "bias"))]
    layout += _linear(f"{ours}.w_O", f"{theirs}/w_O")
    if relative and cfg.rpr_k:
        layout.append(Entry(f"{ours}.rpr_key.weight", (f"{theirs}/rpr_key",)))
    if relative and cfg.rpr_values:
        layout.append(Entry(f"{ours}.rpr_value.weight", (f"{theirs}/rpr_value",)))
    return layout


def _norm_names(cfg: TransformerConfig, sublayers: int) -> tuple[str, ...]:
    """mead's LayerNorm name for each of a block's sublayers, in order. Pre-LN: ln1, ln2(, ln3) before
    each. Post-LN: the norm after the last sublayer is ln1 and the others shift up by one."""
    names = tuple(f"ln{i}" for i in range(1, sublayers + 1))
    return names if cfg.norm == "pre" else names[1:] + names[:1]


def encoder_stack(cfg: TransformerConfig, ours: str, theirs: str) -> Layout:
    """The blocks (and final LayerNorm) of a TransformerEncoder as a TransformerEncoderStack."""
    layout: Layout = _linear(f"{ours}.final_norm", f"{theirs}/ln") if cfg.norm == "pre" else []
    attn_ln, ffn_ln = _norm_names(cfg, 2)
    for i in range(cfg.layers):
        block, layer = f"{ours}.layers.{i}", f"{theirs}/{i}"
        layout += _attention(f"{block}.attn", f"{layer}/attn", cfg)
        layout += _linear(f"{block}.ffn.expansion", f"{layer}/ffn/expansion")
        layout += _linear(f"{block}.ffn.squeeze", f"{layer}/ffn/squeeze")
        layout += _linear(f"{block}.attn_norm", f"{layer}/{attn_ln}")
        layout += _linear(f"{block}.ffn_norm", f"{layer}/{ffn_ln}")
    return layout


def decoder_stack(cfg: TransformerConfig, ours: str, theirs: str) -> Layout:
    """A TransformerDecoder's blocks (and final LayerNorm) as a TransformerDecoderStack. mead's decoder
    attends over the memory with relative positions too; ours does not, so src_attn has no rpr arrays."""
    layout: Layout = _linear(f"{ours}.final_norm", f"{theirs}/ln") if cfg.norm == "pre" else []
    self_ln, src_ln, ffn_ln = _norm_names(cfg, 3)
    for i in range(cfg.layers):
        block, layer = f"{ours}.layers.{i}", f"{theirs}/{i}"
        layout += _attention(f"{block}.self_attn", f"{layer}/self_attn", cfg)
        layout += _attention(f"{block}.cross_attn", f"{layer}/src_attn", cfg, relative=False)
        layout += _linear(f"{block}.ffn.expansion", f"{layer}/ffn/expansion")
        layout += _linear(f"{block}.ffn.squeeze", f"{layer}/ffn/squeeze")
        layout += _linear(f"{block}.self_attn_norm", f"{layer}/{self_ln}")
        layout += _linear(f"{block}.cross_attn_norm", f"{layer}/{src_ln}")
        layout += _linear(f"{block}.ffn_norm", f"{layer}/{ffn_ln}")
    return layout


def embeddings(cfg: TransformerConfig, ours: str, theirs: str, key: str) -> Layout:
    """Word and position embeddings (feature `key`), the learned bias and the LayerNorm after them."""
    layout = [Entry(f"{ours}.word.weight", (f"{theirs}/{key}/weights",))]
    if cfg.embeddings.startswith("learned"):
        layout.append(Entry(f"{ours}.position.weight", (f"{theirs}/{key}/pos_weights",)))
    if cfg.embeddings == "learned-bias":
        layout.append(Entry(f"{ours}.bias", (f"{theirs}/tt/weights",), bias_row=True))
    if cfg.embeddings_layer_norm:
        layout += _linear(f"{ours}.layer_norm", f"{theirs}/reduction/ln")
    return layout


def tlm_layout(cfg: TransformerConfig, ours: str = "", name: str = "TLM") -> Layout:
    """A TransformerLM (under state-dict prefix `ours`). Extensions: {name}/OutputHead/{transform,ln} and
    {name}/OutputHead/bias hold the MLM head transform and the output bias when the model has them."""
    layout = embeddings(cfg, f"{ours}encoder.embeddings", f"{name}/Embeddings", "x")
    layout += encoder_stack(cfg, f"{ours}encoder", f"{name}/TransformerEncoderStack")
    if cfg.head_transform:
        layout += _linear(f"{ours}head.dense", f"{name}/OutputHead/transform")
        layout += _linear(f"{ours}head.layer_norm", f"{name}/OutputHead/ln")
    if cfg.output_bias:
        layout.append(Entry(f"{ours}output_bias", (f"{name}/OutputHead/bias",)))
    return layout


def _encoding_head(head: EncodingHead, ours: str, reduction: str, projection: str) -> Layout:
    """A dual-encoder side: ConveRT's 2-head attention pooling as mead's TwoHeadConcat (reduction1 and
    reduction2 are its heads' query and key rows; their value rows and the output projection, which mead's
    reduction lacks, are the extensions reduction{1,2}/w_V and w_O), then the projection as ff1/ff2
    (one Linear: mead's Dense; with hidden layers each Linear j is the extension {ff}/{j})."""
    layout: Layout = []
    if hasattr(head.pooling, "attn"):
        for part, suffix in (("weight", "weights"), ("bias", "bias")):
            layout.append(Entry(f"{ours}.pooling.attn.w_QKV.{part}", tuple(
                f"{reduction}/reduction{h}/{w}/{suffix}" for w in ("w_Q", "w_K", "w_V") for h in (1, 2))))
        layout += _linear(f"{ours}.pooling.attn.w_O", f"{reduction}/w_O")
    linears = [i for i, module in enumerate(head.projection) if isinstance(module, nn.Linear)]
    for j, index in enumerate(linears):
        layout += _linear(f"{ours}.projection.{index}", projection if len(linears) == 1 else f"{projection}/{j}")
    return layout


def dual_encoder_layout(model: DualEncoder, name: str = "TLM") -> Layout:
    """mead keeps one reduction for both sides: ours are TLM/ReductionLayer (contexts) and the extension
    TLM/ResponseReductionLayer (responses; the same arrays again with shared_head). The learned inverse
    temperature is the extension TLM/log_scale."""
    layout = tlm_layout(model.model.cfg, "model.", name)
    layout += _encoding_head(model.context_head, "context_head", f"{name}/ReductionLayer", f"{name}/ff1")
    layout += _encoding_head(model.response_head, "response_head", f"{name}/ResponseReductionLayer", f"{name}/ff2")
    layout.append(Entry("log_scale", (f"{name}/log_scale",)))
    return layout


def seq2seq_layout(model: Seq2Seq, name: str = "Seq2Seq") -> Layout:
    """The encoder and decoder share one embeddings module: it is SrcEmbeddings/x (with the learned bias
    and LayerNorm as in a TLM), and its word and position tables are written again as TgtEmbedding/y for
    mead's loader, which reads the decoder's from there."""
    cfg = model.encoder.cfg
    layout = embeddings(cfg, "encoder.encoder.embeddings", f"{name}/SrcEmbeddings", "x")
    layout += encoder_stack(cfg, "encoder.encoder", f"{name}/TransformerEncoderStack")
    layout += decoder_stack(cfg, "decoder", f"{name}/TransformerDecoderStack")
    shared = {entry.ours.removeprefix("encoder.encoder."): entry for entry in layout
              if entry.ours.startswith("encoder.encoder.embeddings.")}
    for suffix, entry in shared.items():
        theirs = tuple(key.replace("/SrcEmbeddings/x/", "/TgtEmbedding/y/") for key in entry.theirs)
        layout.append(Entry(f"decoder.{suffix}", theirs, entry.bias_row))
    return layout


# Settings mead-baseline's Transformer has no counterpart for, and the value it computes.
MEAD_REQUIRES = (("rope", False), ("ffn", "gelu"), ("norm_layer", "layernorm"), ("bias", True),
                 ("first_attn_norm", True), ("global_every", 1))


def check_mead_expressible(cfg: TransformerConfig) -> None:
    """UserError naming the first setting an 8-mile NPZ cannot express."""
    for name, value in MEAD_REQUIRES:
        if getattr(cfg, name) != value:
            raise UserError(f"--format npz: mead-baseline's Transformer cannot express model.{name}="
                            f"{getattr(cfg, name)!r} (needs {value!r}); export it as torch or hf instead")


def layout_of(model: nn.Module) -> Layout:
    """The layout of an exportable model, by its class."""
    if isinstance(model, TransformerLM):
        check_mead_expressible(model.cfg)
        return tlm_layout(model.cfg)
    if isinstance(model, DualEncoder):
        check_mead_expressible(model.model.cfg)
        return dual_encoder_layout(model)
    if isinstance(model, Seq2Seq):
        check_mead_expressible(model.encoder.cfg)
        return seq2seq_layout(model)
    raise UserError(f"no 8-mile layout for a {type(model).__name__}")


def to_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's state as 8-mile arrays (float32). Every state-dict entry must have a place: a new
    parameter this layout does not know is a programming error, not a silently dropped weight."""
    state = model.state_dict()
    layout = layout_of(model)
    unmapped = sorted(set(state) - {entry.ours for entry in layout})
    if unmapped:
        raise ValueError(f"the 8-mile layout of {type(model).__name__} has no place for {', '.join(unmapped)}")
    arrays: dict[str, np.ndarray] = {}
    for entry in layout:
        tensor = state[entry.ours].detach().float().cpu()
        if entry.bias_row:
            arrays[entry.theirs[0]] = torch.stack([tensor, torch.zeros_like(tensor)]).numpy()
            continue
        chunks = tensor.chunk(len(entry.theirs)) if len(entry.theirs) > 1 else (tensor,)  # log_scale is 0-d
        for key, chunk in zip(entry.theirs, chunks):
            arrays[key] = chunk.numpy().copy()
    return arrays


def from_arrays(model: nn.Module, arrays: Mapping[str, np.ndarray], source: Path) -> dict[str, torch.Tensor]:
    """The state dict for `model` (a template of the right config) stored in 8-mile `arrays`; a missing
    array is a UserError naming it."""

    def get(key: str) -> torch.Tensor:
        if key not in arrays:
            raise UserError(f"{source}: no array {key!r}: the NPZ does not hold a {type(model).__name__} of "
                            "the config its manifest describes; re-export it")
        return torch.from_numpy(np.asarray(arrays[key], dtype=np.float32))

    def value(entry: Entry) -> torch.Tensor:
        if entry.bias_row:
            return get(entry.theirs[0])[0].clone()
        parts = [get(key) for key in entry.theirs]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return {entry.ours: value(entry) for entry in layout_of(model)}
