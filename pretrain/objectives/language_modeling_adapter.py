"""What the language-modelling objectives (MaskedLM, CausalLM) export: their TransformerLM, whole."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from data_pipeline.tokenizer import Tokenizer
from pretrain.exportable import ExportAdapter, HFModel, Layout, RunModel, objective_name, run_model_config
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.model.eight_mile import mead_notes, tlm_layout
from pretrain.model.hf import hf_model


class TransformerLMAdapter(ExportAdapter):
    name = "TransformerLM"
    model_class = TransformerLM

    def config_of(self, model: TransformerLM) -> dict[str, Any]:
        return dataclasses.asdict(model.cfg)

    def build(self, config: Mapping[str, Any]) -> TransformerLM:
        return TransformerLM(TransformerConfig(**config))

    def encoder(self, model: TransformerLM) -> TransformerLM:
        return model

    def from_run(self, config: Mapping[str, Any], tokenizer: Tokenizer) -> RunModel | None:
        if objective_name(config) not in ("mlm", "clm"):
            return None
        return RunModel(TransformerLM(run_model_config(config, tokenizer.vocab_size)), prefix="model.")

    def eight_mile(self, model: TransformerLM) -> Layout:
        return tlm_layout(model.cfg)

    def mead_notes(self, model: TransformerLM) -> list[str]:
        return mead_notes(model.cfg)

    def hf(self, model: TransformerLM) -> HFModel:
        return hf_model(model)


ADAPTER = TransformerLMAdapter()
