"""The registry of export adapters: the one module of pretrain/ that export/ imports.

Each exported model class has an adapter beside it (pretrain/exportable.py is the contract). To make a
new objective exportable, write its adapter next to it and list it in ADAPTERS below; nothing in export/
changes. Besides the adapters, this module gives export/ what it needs to read a training checkpoint.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import Tokenizer, TokenizerSpec
from pretrain.checkpoint import FORMAT_VERSION, REQUIRED_KEYS, load_module_state
from pretrain.finite import first_non_finite
from pretrain.exportable import (DenseLayer, Entry, ExportAdapter, HFModel, Layout, RunModel,
                                 SentenceTransformerModel, run_model_config)
from pretrain.model import TransformerConfig, TransformerLM
from pretrain.objectives import dual_encoder_adapter, electra_adapter, language_modeling_adapter, seq2seq_adapter

ADAPTERS: tuple[ExportAdapter, ...] = (
    language_modeling_adapter.ADAPTER,
    dual_encoder_adapter.ADAPTER,
    seq2seq_adapter.ADAPTER,
    electra_adapter.ADAPTER,
)

__all__ = ["ADAPTERS", "DenseLayer", "Entry", "ExportAdapter", "HFModel", "Layout", "SentenceTransformerModel", "TransformerLM",
           "adapter_named", "adapter_of", "first_non_finite", "is_training_checkpoint", "load_module_state", "model_of_run",
           "run_tokenizer"]


def adapter_named(name: str, source: Path | str) -> ExportAdapter:
    """The adapter of the model class an export's manifest names."""
    for adapter in ADAPTERS:
        if adapter.name == name:
            return adapter
    raise UserError(f"{source}: unknown model class {name!r}; this code knows "
                    f"{', '.join(adapter.name for adapter in ADAPTERS)}")


def adapter_of(model: nn.Module) -> ExportAdapter:
    """The adapter of `model`'s class (exactly: a subclass may hold weights its parent's adapter misses)."""
    for adapter in ADAPTERS:
        if type(model) is adapter.model_class:
            return adapter
    raise UserError(f"cannot export a {type(model).__name__}: exports hold "
                    f"{', '.join(adapter.name for adapter in ADAPTERS)}")


WORD_EMBEDDINGS = "encoder.embeddings.word.weight"


def _model_config(config: Mapping[str, Any], objective: Mapping[str, torch.Tensor], path: Path) -> TransformerConfig:
    if not isinstance(config.get("model"), Mapping):
        raise UserError(f"{path}: the checkpoint's config has no `model` section: it was not written by a "
                        "Transformer trainer")
    vocab_sizes = {t.shape[0] for key, t in objective.items() if key.endswith(WORD_EMBEDDINGS)}
    if not config["model"].get("vocab_size") and len(vocab_sizes) != 1:  # 0 = filled in at run time
        raise UserError(f"{path}: cannot tell the model's vocab size (model.vocab_size is 0 and the "
                        f"checkpoint holds {len(vocab_sizes)} word-embedding tables)")
    return run_model_config(config, min(vocab_sizes, default=0))


def _model_prefix(model: TransformerLM, objective: Mapping[str, torch.Tensor], path: Path,
                  prefix: str | None) -> str:
    """The prefix under which `objective` holds a model shaped like `model` (unique, or as given)."""
    own = model.state_dict()

    def fits(candidate: str) -> bool:
        return all(candidate + key in objective and objective[candidate + key].shape == tensor.shape
                   for key, tensor in own.items())

    if prefix is not None:
        if not fits(prefix):
            raise UserError(f"{path}: no model of the config's shape under prefix {prefix!r}")
        return prefix
    candidates = [key[: -len(WORD_EMBEDDINGS)] for key in objective if key.endswith(WORD_EMBEDDINGS)]
    found = [candidate for candidate in candidates if fits(candidate)]
    if len(found) != 1:
        listed = ", ".join(repr(c) for c in candidates) or "none"
        raise UserError(f"{path}: {len(found)} models of the config's shape in the checkpoint (candidate "
                        f"prefixes: {listed}); pass --model-prefix to choose one")
    return found[0]


def _tokenizer_spec(config: Mapping[str, Any], path: Path) -> TokenizerSpec:
    section = config.get("data", {}).get("tokenizer") if isinstance(config.get("data"), Mapping) else None
    if not isinstance(section, Mapping) or not section.get("vocab"):
        raise UserError(f"{path}: the checkpoint's config names no data.tokenizer.vocab: pass --vocab "
                        "(and --codes for BPE)")
    return TokenizerSpec(kind=section.get("kind", "wordpiece"), vocab=section["vocab"],
                         codes=section.get("codes") or None, lowercase=section.get("lowercase", True))


def is_training_checkpoint(state: Any) -> bool:
    return isinstance(state, Mapping) and all(key in state for key in REQUIRED_KEYS)


def model_of_run(state: Mapping[str, Any], path: Path, tokenizer: Tokenizer, encoder_only: bool = False,
                 prefix: str | None = None) -> nn.Module:
    """The model a training checkpoint's run exports, with the checkpoint's weights: the whole model its
    objective's adapter declares, or with `encoder_only` (or a `prefix`, or an objective no adapter knows) a
    TransformerLM of the run's `model` config found in the objective's weights (under `prefix`, if given)."""
    if state["format"] != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {state['format']}, this code reads {FORMAT_VERSION}")
    config, objective = state["config"], state["objective"]
    found = None if encoder_only or prefix is not None else \
        next((run for run in (adapter.from_run(config, tokenizer) for adapter in ADAPTERS) if run is not None), None)
    if found is None:
        model = TransformerLM(_model_config(config, objective, path))
        found = RunModel(model, _model_prefix(model, objective, path, prefix))
    own = found.model.state_dict()
    load_module_state(found.model, {key: objective[found.prefix + key] for key in own if found.prefix + key in objective},
                      path)
    return found.model


def run_tokenizer(state: Mapping[str, Any], path: Path) -> TokenizerSpec:
    """The tokenizer spec a training checkpoint's run names."""
    return _tokenizer_spec(state["config"], path)
