"""What an ELECTRA run exports: the whole Electra (discriminator, its replaced-token head, the generator).

mead has no ELECTRA layout; in an NPZ the discriminator is a "TLM" (so mead's load_tlm_npz reads it as an
encoder), its head the extension TLM/DiscriminatorHead/{dense,out}, and the generator the extension
"Generator" with a TLM's names; with shared embeddings the generator's word table is TLM/Embeddings/x/weights
and its projection to the generator's width Generator/Embeddings/x/project.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from data_pipeline.tokenizer import Tokenizer
from pretrain.exportable import Entry, ExportAdapter, Layout, RunModel, run_model_config
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.model.eight_mile import embeddings, encoder_stack, linear, mead_notes, tlm_layout
from pretrain.objectives.electra import Electra, ElectraConfig


def generator_layout(model: Electra, ours: str = "generator", name: str = "Generator") -> Layout:
    cfg = model.generator_cfg
    layout = embeddings(cfg, f"{ours}.encoder.embeddings", f"{name}/Embeddings", "x")
    if model.cfg.share_embeddings:
        layout = [entry for entry in layout if entry.ours != f"{ours}.encoder.embeddings.word.weight"]
        layout.append(Entry(f"{ours}.encoder.embeddings.word.shared.weight", ("TLM/Embeddings/x/weights",)))
        layout += linear(f"{ours}.encoder.embeddings.word.project", f"{name}/Embeddings/x/project")
    layout += encoder_stack(cfg, f"{ours}.encoder", f"{name}/TransformerEncoderStack")
    layout += linear(f"{ours}.head.0", f"{name}/OutputHead/transform")
    layout += linear(f"{ours}.head.2", f"{name}/OutputHead/ln")
    layout.append(Entry(f"{ours}.output_bias", (f"{name}/OutputHead/bias",)))
    return layout


class ElectraAdapter(ExportAdapter):
    name = "Electra"
    model_class = Electra

    def config_of(self, model: Electra) -> dict[str, Any]:
        return {"model": dataclasses.asdict(model.discriminator.cfg), "electra": dataclasses.asdict(model.cfg),
                "pad_id": model.pad_id, "special_ids": model.banned.nonzero().flatten().tolist()}

    def build(self, config: Mapping[str, Any]) -> Electra:
        return Electra(TransformerLM(TransformerConfig(**config["model"])), ElectraConfig(**config["electra"]),
                       pad_id=config["pad_id"], special_ids=frozenset(config["special_ids"]))

    def encoder(self, model: Electra) -> TransformerLM:
        return model.discriminator

    def from_run(self, config: Mapping[str, Any], tokenizer: Tokenizer) -> RunModel | None:
        section = config.get("objective")
        if not isinstance(section, Mapping) or "generator_fraction" not in section:
            return None
        model = Electra(TransformerLM(run_model_config(config, tokenizer.vocab_size)), ElectraConfig(**section),
                        pad_id=tokenizer.pad_id, special_ids=tokenizer.special_ids)
        return RunModel(model, prefix="")

    def eight_mile(self, model: Electra) -> Layout:
        layout = tlm_layout(model.discriminator.cfg, "discriminator.", "TLM")
        layout += linear("discriminator_head.dense", "TLM/DiscriminatorHead/dense")
        layout += linear("discriminator_head.out", "TLM/DiscriminatorHead/out")
        return layout + generator_layout(model)


    def mead_notes(self, model: Electra) -> list[str]:
        return mead_notes(model.discriminator.cfg)


ADAPTER = ElectraAdapter()
