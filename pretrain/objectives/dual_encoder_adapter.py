"""What a dual encoder exports: the whole DualEncoder (shared encoder, both encoding heads, learned scale).

In an NPZ it follows mead's save_transformer_de_npz: "TLM" embeddings and stack, TLM/ReductionLayer and
TLM/ff1 for the contexts, and for the responses the extension TLM/ResponseReductionLayer and TLM/ff2 (mead
keeps one reduction for both sides; with shared_head the same arrays are written again). The learned
inverse temperature is the extension TLM/log_scale.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from data_pipeline.tokenizer import Tokenizer
from data_pipeline.errors import UserError
from pretrain.exportable import (DenseLayer, Entry, ExportAdapter, Layout, RunModel, SentenceTransformerModel,
                                 objective_name, run_model_config)
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.model.eight_mile import linear, mead_notes, tlm_layout
from pretrain.model.hf import hf_encoder
from pretrain.model.pooling import MeadTwoHeadPooling, TwoHeadAttentionPooling
from pretrain.objectives.dual_encoder import DualEncoder, DualEncoderConfig, EncodingHead


SENTENCE_TRANSFORMERS_POOLING = {"mean": "mean", "first": "cls"}


def dense_layers(head: EncodingHead) -> list[DenseLayer]:
    """The projection's Linear layers, each with the activation that follows it (GELU, or none)."""
    modules = list(head.projection)
    return [DenseLayer(module.weight.detach(), module.bias.detach(),
                       "torch.nn.GELU" if isinstance(after, nn.GELU) else "torch.nn.Identity")
            for module, after in zip(modules, modules[1:] + [None]) if isinstance(module, nn.Linear)]


def heads_config(section: Mapping[str, Any]) -> DualEncoderConfig:
    return DualEncoderConfig(**dict(section, projection_hidden=tuple(section.get("projection_hidden", ()))))


def encoding_head_layout(head: EncodingHead, ours: str, reduction: str, projection: str) -> Layout:
    """A dual-encoder side: its pooling as mead's TwoHeadConcat (reduction1 and reduction2 are the heads'
    query and key rows; pooling="2ha" also has value rows and an output projection, which mead's reduction
    lacks: the extensions reduction{1,2}/w_V and w_O), then the projection as ff1/ff2 (one Linear: mead's
    Dense; with hidden layers each Linear j is the extension {ff}/{j})."""
    layout: Layout = []
    for part, suffix in (("weight", "weights"), ("bias", "bias")):
        if isinstance(head.pooling, TwoHeadAttentionPooling):
            layout.append(Entry(f"{ours}.pooling.attn.w_QKV.{part}", tuple(
                f"{reduction}/reduction{h}/{w}/{suffix}" for w in ("w_Q", "w_K", "w_V") for h in (1, 2))))
        if isinstance(head.pooling, MeadTwoHeadPooling):
            for projection_name, w in (("query", "w_Q"), ("key", "w_K")):
                layout.append(Entry(f"{ours}.pooling.{projection_name}.{part}",
                                    tuple(f"{reduction}/reduction{h}/{w}/{suffix}" for h in (1, 2))))
    if isinstance(head.pooling, TwoHeadAttentionPooling):
        layout += linear(f"{ours}.pooling.attn.w_O", f"{reduction}/w_O")
    linears = [i for i, module in enumerate(head.projection) if isinstance(module, nn.Linear)]
    for j, index in enumerate(linears):
        layout += linear(f"{ours}.projection.{index}", projection if len(linears) == 1 else f"{projection}/{j}")
    return layout


class DualEncoderAdapter(ExportAdapter):
    name = "DualEncoder"
    model_class = DualEncoder

    def config_of(self, model: DualEncoder) -> dict[str, Any]:
        return {"model": dataclasses.asdict(model.model.cfg), "dual_encoder": dataclasses.asdict(model.cfg),
                "pad_id": model.pad_id}

    def build(self, config: Mapping[str, Any]) -> DualEncoder:
        return DualEncoder(TransformerLM(TransformerConfig(**config["model"])), heads_config(config["dual_encoder"]),
                           pad_id=config["pad_id"])

    def encoder(self, model: DualEncoder) -> TransformerLM:
        return model.model

    def from_run(self, config: Mapping[str, Any], tokenizer: Tokenizer) -> RunModel | None:
        if objective_name(config) != "dual_encoder":
            return None
        heads = heads_config(config["objective"]["dual_encoder"])
        return RunModel(DualEncoder(TransformerLM(run_model_config(config, tokenizer.vocab_size)), heads,
                                    pad_id=tokenizer.pad_id), prefix="")

    def eight_mile(self, model: DualEncoder, name: str = "TLM") -> Layout:
        layout = tlm_layout(model.model.cfg, "model.", name)
        layout += encoding_head_layout(model.context_head, "context_head", f"{name}/ReductionLayer", f"{name}/ff1")
        layout += encoding_head_layout(model.response_head, "response_head", f"{name}/ResponseReductionLayer",
                                       f"{name}/ff2")
        layout.append(Entry("log_scale", (f"{name}/log_scale",)))
        return layout

    def sentence_transformer(self, model: DualEncoder) -> SentenceTransformerModel:
        """Contexts are sentence-transformers' queries and responses its documents."""
        pooling = model.cfg.pooling
        if pooling not in SENTENCE_TRANSFORMERS_POOLING:
            raise UserError(f"--format sentence-transformers cannot hold objective.dual_encoder.pooling={pooling!r} "
                            "(it pools by mean or first token): train with pooling 'mean' or 'first', or export "
                            "npz or torch")
        document = None if model.cfg.shared_head else dense_layers(model.response_head)
        return SentenceTransformerModel(hf_encoder(model.model, "sentence-transformers"),
                                        SENTENCE_TRANSFORMERS_POOLING[pooling], dense_layers(model.context_head),
                                        document)

    def mead_notes(self, model: DualEncoder) -> list[str]:
        """mead's PairedModel (load_transformer_de_npz) computes our encodings (before the L2 normalisation,
        which mead leaves to its loss) for pooling mead-2ha, one projection Linear of another width than
        2 * d_model (else mead skips it), and no embedding LayerNorm (its loader does not read one)."""
        cfg, heads = model.model.cfg, model.cfg
        notes = mead_notes(cfg)
        if heads.pooling != "mead-2ha":
            notes.append(f"objective.dual_encoder.pooling={heads.pooling!r} is not mead's TwoHeadConcat: mead's "
                         "PairedModel computes other encodings (use pooling='mead-2ha')")
        if heads.projection_hidden:
            notes.append(f"objective.dual_encoder.projection_hidden={list(heads.projection_hidden)}: mead's "
                         "load_transformer_de_npz refuses stacked projections (use [])")
        if cfg.embeddings_layer_norm:
            notes.append("model.embeddings_layer_norm=true: mead's load_transformer_de_npz does not load the "
                         "embedding LayerNorm")
        return notes


ADAPTER = DualEncoderAdapter()
