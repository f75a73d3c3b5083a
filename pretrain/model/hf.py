"""The Transformer family as HF transformers models: BertForMaskedLM for BERT-flavoured models,
GPT2LMHeadModel for GPT-flavoured causal LMs, ModernBertForMaskedLM and LlamaForCausalLM for the rotary ones.

A model maps onto BERT when it is post-LN with learned positions (plain or "learned-bias"), an embedding
LayerNorm, no relative attention and the MLM head transform; onto GPT-2 when it is pre-LN with plain
learned positions, no embedding LayerNorm, no relative attention, no head transform and no output bias
(both with none of the modern settings). A rotary (rope) pre-LN model maps onto ModernBERT with LayerNorms
(GeGLU, embedding norm, no norm before layer 0's attention, the MLM head transform; biases, window, layer
pattern and both thetas carry over), onto Llama with RMSNorms (SwiGLU, no embedding norm, all layers
global, no head transform or output bias). Anything else is refused with the setting that does not map.
Tied weights (the output projections) are stored once, as HF itself saves them. `model.document_mask` has
no HF counterpart and needs none: an exported model reads one document per sequence.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from data_pipeline.errors import UserError
from pretrain.exportable import HFModel
from pretrain.model.config import TransformerConfig
from pretrain.model.lm import TransformerLM

State = Mapping[str, torch.Tensor]

# (setting, value it must have): checked in order, the first mismatch is the error.
CLASSIC = (("ffn", "gelu"), ("norm_layer", "layernorm"), ("bias", True), ("first_attn_norm", True),
           ("global_every", 1))
BERT_ENCODER_REQUIRES = (("norm", "post"), ("embeddings_layer_norm", True), ("rpr_k", 0), ("rope", False), *CLASSIC)
BERT_REQUIRES = (*BERT_ENCODER_REQUIRES, ("head_transform", True))
GPT2_REQUIRES = (("norm", "pre"), ("embeddings", "learned"), ("embeddings_layer_norm", False), ("rpr_k", 0),
                 *CLASSIC, ("head_transform", False), ("output_bias", False))
MODERNBERT_REQUIRES = (("norm", "pre"), ("embeddings", "none"), ("embeddings_layer_norm", True),
                       ("first_attn_norm", False), ("ffn", "geglu"), ("head_transform", True))
LLAMA_REQUIRES = (("norm", "pre"), ("embeddings", "none"), ("embeddings_layer_norm", False), ("first_attn_norm", True),
                  ("ffn", "swiglu"), ("global_every", 1), ("head_transform", False), ("output_bias", False))


def _mismatch(cfg: TransformerConfig, requires: tuple[tuple[str, Any], ...]) -> str | None:
    for name, value in requires:
        if getattr(cfg, name) != value:
            return f"model.{name}={getattr(cfg, name)!r} (needs {value!r})"
    return None


def _bert_mismatch(cfg: TransformerConfig, requires: tuple[tuple[str, Any], ...]) -> str | None:
    problem = _mismatch(cfg, requires)
    if problem is None and cfg.embeddings not in ("learned", "learned-bias"):
        problem = f"model.embeddings={cfg.embeddings!r} (needs 'learned' or 'learned-bias')"
    return problem


def hf_architecture(cfg: TransformerConfig) -> str:
    """"bert", "gpt2", "modernbert" or "llama": the HF architecture this config maps onto; UserError naming
    what does not map."""
    if cfg.rope:
        architecture, name, requires = ("llama", "LlamaForCausalLM", LLAMA_REQUIRES) if cfg.norm_layer == "rmsnorm" \
            else ("modernbert", "ModernBertForMaskedLM", MODERNBERT_REQUIRES)
        problem = _mismatch(cfg, requires)
        if problem is None:
            return architecture
        raise UserError(f"--format hf: a rotary model with model.norm_layer={cfg.norm_layer!r} exports as {name}, "
                        f"which cannot hold {problem}; export it as torch instead")
    if cfg.norm == "post":
        problem = _bert_mismatch(cfg, BERT_REQUIRES)
        if problem is None:
            return "bert"
        raise UserError(f"--format hf: a post-LN model exports as BertForMaskedLM, which cannot hold {problem}; "
                        "export it as npz or torch instead")
    problem = _mismatch(cfg, GPT2_REQUIRES)
    if problem is None:
        return "gpt2"
    raise UserError(f"--format hf: a pre-LN model exports as GPT2LMHeadModel, which cannot hold {problem}; "
                    "export it as npz or torch instead")


def _bert_config(cfg: TransformerConfig) -> dict[str, Any]:
    return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.d_ff, "hidden_act": "gelu", "hidden_dropout_prob": cfg.dropout,
            "attention_probs_dropout_prob": cfg.dropout, "max_position_embeddings": cfg.max_len,
            "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps,
            "position_embedding_type": "absolute",
            "tie_word_embeddings": True, "dtype": "float32"}


def _bert_state(state: State, cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    word = state["encoder.embeddings.word.weight"]
    token_types = torch.zeros(2, cfg.d_model)
    if cfg.embeddings == "learned-bias":  # BERT with every token type 0 adds row 0: our bias
        token_types[0] = state["encoder.embeddings.bias"]
    out = {"bert.embeddings.word_embeddings.weight": word,
           "bert.embeddings.position_embeddings.weight": state["encoder.embeddings.position.weight"],
           "bert.embeddings.token_type_embeddings.weight": token_types,
           "cls.predictions.bias": state["output_bias"] if cfg.output_bias else torch.zeros(cfg.vocab_size)}
    names = {"encoder.embeddings.layer_norm": "bert.embeddings.LayerNorm"}
    if cfg.head_transform:
        names.update({"head.dense": "cls.predictions.transform.dense",
                      "head.layer_norm": "cls.predictions.transform.LayerNorm"})
    for i in range(cfg.layers):
        ours, theirs = f"encoder.layers.{i}", f"bert.encoder.layer.{i}"
        names.update({f"{ours}.attn.w_O": f"{theirs}.attention.output.dense",
                      f"{ours}.attn_norm": f"{theirs}.attention.output.LayerNorm",
                      f"{ours}.ffn.expansion": f"{theirs}.intermediate.dense",
                      f"{ours}.ffn.squeeze": f"{theirs}.output.dense",
                      f"{ours}.ffn_norm": f"{theirs}.output.LayerNorm"})
        for part in ("weight", "bias"):
            query, key, value = state[f"{ours}.attn.w_QKV.{part}"].chunk(3)
            out.update({f"{theirs}.attention.self.query.{part}": query,
                        f"{theirs}.attention.self.key.{part}": key,
                        f"{theirs}.attention.self.value.{part}": value})
    for ours, theirs in names.items():
        for part in ("weight", "bias"):
            out[f"{theirs}.{part}"] = state[f"{ours}.{part}"]
    return out


def _gpt2_config(cfg: TransformerConfig) -> dict[str, Any]:
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_len, "n_embd": cfg.d_model, "n_layer": cfg.layers, "n_head": cfg.num_heads,
            "n_inner": cfg.d_ff, "activation_function": "gelu", "resid_pdrop": cfg.dropout,
            "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.layer_norm_eps,
            "initializer_range": 0.02, "scale_attn_weights": True, "tie_word_embeddings": True,
            "dtype": "float32"}


def _gpt2_state(state: State, cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    """GPT-2's Conv1D stores Linear weights as [in, out]: ours transposed."""
    out = {"transformer.wte.weight": state["encoder.embeddings.word.weight"],
           "transformer.wpe.weight": state["encoder.embeddings.position.weight"],
           "transformer.ln_f.weight": state["encoder.final_norm.weight"],
           "transformer.ln_f.bias": state["encoder.final_norm.bias"]}
    for i in range(cfg.layers):
        ours, theirs = f"encoder.layers.{i}", f"transformer.h.{i}"
        for our_name, their_name, transpose in ((f"{ours}.attn_norm", f"{theirs}.ln_1", False),
                                                (f"{ours}.ffn_norm", f"{theirs}.ln_2", False),
                                                (f"{ours}.attn.w_QKV", f"{theirs}.attn.c_attn", True),
                                                (f"{ours}.attn.w_O", f"{theirs}.attn.c_proj", True),
                                                (f"{ours}.ffn.expansion", f"{theirs}.mlp.c_fc", True),
                                                (f"{ours}.ffn.squeeze", f"{theirs}.mlp.c_proj", True)):
            weight = state[f"{our_name}.weight"]
            out[f"{their_name}.weight"] = weight.t() if transpose else weight
            out[f"{their_name}.bias"] = state[f"{our_name}.bias"]
    return out


# -- ModernBERT and Llama ------------------------------------------------------------------------------------

def _copy(state: State, out: dict[str, torch.Tensor], ours: str, theirs: str) -> None:
    """`ours`.weight (and .bias where the model has one) as `theirs`.weight (.bias)."""
    for part in ("weight", "bias"):
        if f"{ours}.{part}" in state:
            out[f"{theirs}.{part}"] = state[f"{ours}.{part}"]


def _modernbert_config(cfg: TransformerConfig) -> dict[str, Any]:
    local_theta = cfg.rope_local_theta or cfg.rope_theta
    return {"architectures": ["ModernBertForMaskedLM"], "model_type": "modernbert", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.num_heads,
            "intermediate_size": cfg.d_ff, "hidden_activation": "gelu", "max_position_embeddings": cfg.max_len,
            "norm_eps": cfg.layer_norm_eps, "norm_bias": cfg.bias, "attention_bias": cfg.bias,
            "mlp_bias": cfg.bias, "classifier_bias": cfg.bias, "classifier_activation": "gelu",
            "decoder_bias": cfg.output_bias, "local_attention": cfg.local_window,
            "layer_types": ["full_attention" if cfg.is_global(i) else "sliding_attention" for i in range(cfg.layers)],
            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
                                "sliding_attention": {"rope_type": "default", "rope_theta": local_theta}},
            "embedding_dropout": cfg.dropout, "attention_dropout": cfg.dropout, "mlp_dropout": cfg.dropout,
            "initializer_range": 0.02, "tie_word_embeddings": True, "dtype": "float32"}


def _modernbert_state(state: State, cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    """Wqkv is our fused [Q; K; V] and Wi our [input; gate] expansion: both copied as they are."""
    out = {"model.embeddings.tok_embeddings.weight": state["encoder.embeddings.word.weight"]}
    if cfg.output_bias:
        out["decoder.bias"] = state["output_bias"]
    names = {"encoder.embeddings.layer_norm": "model.embeddings.norm", "encoder.final_norm": "model.final_norm",
             "head.dense": "head.dense", "head.layer_norm": "head.norm"}
    for i in range(cfg.layers):
        ours, theirs = f"encoder.layers.{i}", f"model.layers.{i}"
        names.update({f"{ours}.attn_norm": f"{theirs}.attn_norm", f"{ours}.attn.w_QKV": f"{theirs}.attn.Wqkv",
                      f"{ours}.attn.w_O": f"{theirs}.attn.Wo", f"{ours}.ffn_norm": f"{theirs}.mlp_norm",
                      f"{ours}.ffn.expansion": f"{theirs}.mlp.Wi", f"{ours}.ffn.squeeze": f"{theirs}.mlp.Wo"})
    for ours, theirs in names.items():
        _copy(state, out, ours, theirs)
    return out


def _llama_config(cfg: TransformerConfig) -> dict[str, Any]:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model, "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_heads, "head_dim": cfg.head_dim, "intermediate_size": cfg.d_ff,
            "hidden_act": "silu", "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.layer_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout,
            "initializer_range": 0.02, "tie_word_embeddings": True, "dtype": "float32"}


def _llama_state(state: State, cfg: TransformerConfig) -> dict[str, torch.Tensor]:
    """Our fused [Q; K; V] split into q/k/v_proj, and the gated expansion's halves into gate_proj (the
    activated one) and up_proj."""
    out = {"model.embed_tokens.weight": state["encoder.embeddings.word.weight"],
           "model.norm.weight": state["encoder.final_norm.weight"]}
    for i in range(cfg.layers):
        ours, theirs = f"encoder.layers.{i}", f"model.layers.{i}"
        _copy(state, out, f"{ours}.attn_norm", f"{theirs}.input_layernorm")
        _copy(state, out, f"{ours}.ffn_norm", f"{theirs}.post_attention_layernorm")
        _copy(state, out, f"{ours}.attn.w_O", f"{theirs}.self_attn.o_proj")
        _copy(state, out, f"{ours}.ffn.squeeze", f"{theirs}.mlp.down_proj")
        for part in ("weight", "bias"):
            if f"{ours}.attn.w_QKV.{part}" in state:
                for name, tensor in zip(("q_proj", "k_proj", "v_proj"), state[f"{ours}.attn.w_QKV.{part}"].chunk(3)):
                    out[f"{theirs}.self_attn.{name}.{part}"] = tensor
            if f"{ours}.ffn.expansion.{part}" in state:
                for name, tensor in zip(("gate_proj", "up_proj"), state[f"{ours}.ffn.expansion.{part}"].chunk(2)):
                    out[f"{theirs}.mlp.{name}.{part}"] = tensor
    return out


# GPT-2 and Llama separate documents with one token: ours is the separator preprocessing appends to each.
TOKEN_IDS = {"bert": {"pad_token_id": "pad_id"},
             "gpt2": {"bos_token_id": "sep_id", "eos_token_id": "sep_id", "pad_token_id": "pad_id"},
             "modernbert": {"pad_token_id": "pad_id", "cls_token_id": "cls_id", "bos_token_id": "cls_id",
                            "sep_token_id": "sep_id", "eos_token_id": "sep_id"},
             "llama": {"bos_token_id": "sep_id", "eos_token_id": "sep_id", "pad_token_id": "pad_id"}}
ARCHITECTURES: dict[str, tuple[Callable[[TransformerConfig], dict], Callable[[State, TransformerConfig], dict]]] = {
    "bert": (_bert_config, _bert_state),
    "gpt2": (_gpt2_config, _gpt2_state),
    "modernbert": (_modernbert_config, _modernbert_state),
    "llama": (_llama_config, _llama_state),
}


def hf_model(model: TransformerLM) -> HFModel:
    """`model` as the HF architecture its config maps onto (UserError naming a setting that does not map)."""
    architecture = hf_architecture(model.cfg)
    make_config, make_state = ARCHITECTURES[architecture]
    tensors = {name: tensor.detach().float().cpu() for name, tensor in make_state(model.state_dict(), model.cfg).items()}
    return HFModel(config=make_config(model.cfg), tensors=tensors, token_ids=TOKEN_IDS[architecture],
                   max_len=model.cfg.max_len)


def hf_encoder(model: TransformerLM, fmt: str) -> HFModel:
    """`model`'s encoder as an HF BertModel (no LM head): what a sentence-transformers model starts with.
    `fmt` names the export format in the error when the encoder is not BERT-shaped."""
    problem = _bert_mismatch(model.cfg, BERT_ENCODER_REQUIRES)
    if problem is not None:
        raise UserError(f"--format {fmt}: the encoder exports as an HF BertModel, which cannot hold {problem}; "
                        "export it as npz or torch instead")
    tensors = {name.removeprefix("bert."): tensor.detach().float().cpu()
               for name, tensor in _bert_state(model.state_dict(), model.cfg).items() if name.startswith("bert.")}
    config = dict(_bert_config(model.cfg), architectures=["BertModel"])
    return HFModel(config=config, tensors=tensors, token_ids=TOKEN_IDS["bert"], max_len=model.cfg.max_len)
