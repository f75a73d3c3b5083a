"""The model inside a training checkpoint (pretrain/checkpoint.py), for exporting it after the fact.

A training checkpoint holds the objective's state dict and the run's resolved config: the model is
rebuilt from the config's `model` section and its weights are the objective's entries under the prefix
where a model of that config sits (MaskedLM, CausalLM and DualEncoder keep it under `model.`, Seq2Seq
under `encoder.`: for the paired objectives this is their encoder); the tokenizer is the config's
`data.tokenizer` unless the caller gives one (the vocab may have moved since training).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import TokenizerSpec
from pretrain.checkpoint import FORMAT_VERSION, REQUIRED_KEYS
from pretrain.model import TransformerConfig, TransformerLM

WORD_EMBEDDINGS = "encoder.embeddings.word.weight"


def is_training_checkpoint(state: Any) -> bool:
    return isinstance(state, Mapping) and all(key in state for key in REQUIRED_KEYS)


def _model_config(config: Mapping[str, Any], objective: Mapping[str, torch.Tensor], path: Path) -> TransformerConfig:
    section = config.get("model")
    if not isinstance(section, Mapping):
        raise UserError(f"{path}: the checkpoint's config has no `model` section: it was not written by a "
                        "Transformer trainer")
    known = {f.name for f in dataclasses.fields(TransformerConfig)}  # a trainer may add its own keys
    settings = {key: value for key, value in section.items() if key in known}
    if not settings.get("vocab_size"):  # 0 = filled from the tokenizer at run time
        vocab_sizes = {t.shape[0] for key, t in objective.items() if key.endswith(WORD_EMBEDDINGS)}
        if len(vocab_sizes) != 1:
            raise UserError(f"{path}: cannot tell the model's vocab size (model.vocab_size is 0 and the "
                            f"checkpoint holds {len(vocab_sizes)} word-embedding tables)")
        settings["vocab_size"] = vocab_sizes.pop()
    return TransformerConfig(**settings)


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


def model_from_training_checkpoint(state: Mapping[str, Any], path: Path, tokenizer: TokenizerSpec | None = None,
                                   prefix: str | None = None) -> tuple[TransformerLM, TokenizerSpec]:
    """(model with the checkpoint's weights, tokenizer spec) from a loaded training checkpoint `state`."""
    if state["format"] != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {state['format']}, this code reads {FORMAT_VERSION}")
    config, objective = state["config"], state["objective"]
    model = TransformerLM(_model_config(config, objective, path))
    chosen = _model_prefix(model, objective, path, prefix)
    model.load_state_dict({key: objective[chosen + key] for key in model.state_dict()})
    return model, tokenizer if tokenizer is not None else _tokenizer_spec(config, path)
