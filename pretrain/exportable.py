"""The contract between what a run trains and the export formats: an `ExportAdapter` per exported model.

torchtitan keeps a state-dict adapter beside each model; so do we. The adapter of a model class says what
the class exports (its config as plain data, how to rebuild it, its encoder) and how its weights map onto
each format that can hold it: mead's 8-mile NPZ names (a `Layout`), an HF transformers model (`HFModel`), a
sentence-transformers model. `export/` writes and reads the files and knows no model class: it reaches
the adapters only through the registry in pretrain/adapters.py.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import Tokenizer
from pretrain.model import TransformerConfig, TransformerLM


@dataclass(frozen=True)
class Entry:
    """One of our state-dict tensors and the 8-mile arrays it is stored as: split along dim 0 into
    `theirs` (one key: the tensor itself), or as row 0 of a 2-row table (`bias_row`: mead's form of
    BERT's token-type-0 embedding)."""

    ours: str
    theirs: tuple[str, ...]
    bias_row: bool = False


Layout = list[Entry]


@dataclass(frozen=True)
class HFModel:
    """An HF transformers model: config.json's content (but for the token ids), model.safetensors' tensors,
    and the config.json keys that take a token id, each with the Tokenizer attribute that gives it
    ({"pad_token_id": "pad_id"}): the export fills them in from the tokenizer it writes."""

    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    token_ids: dict[str, str] = field(default_factory=dict)
    max_len: int = 512  # the tokenizer's model_max_length


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers Dense module: activation(x @ weight.T + bias); activation is a torch.nn class
    path ("torch.nn.GELU", "torch.nn.Identity")."""

    weight: torch.Tensor
    bias: torch.Tensor
    activation: str


@dataclass(frozen=True)
class SentenceTransformerModel:
    """A sentence-transformers pipeline: an HF encoder, a pooling mode ("mean" or "cls"), Dense layers, then
    L2 normalisation. `query` are the Dense layers of queries (contexts); `document` those of documents
    (responses) when they differ, which a Router then picks by task (encode_query / encode_document)."""

    encoder: HFModel
    pooling: str
    query: list[DenseLayer]
    document: list[DenseLayer] | None = None


@dataclass(frozen=True)
class RunModel:
    """The exported model of a training run, and the prefix of its weights in the objective's state dict."""

    model: nn.Module
    prefix: str


class ExportAdapter:
    """What an exported model class declares; subclasses override what their model has. A format the
    model cannot be held by raises a one-line UserError naming the reason (the defaults below refuse)."""

    name: str                       # the manifest's `model` entry, e.g. "DualEncoder"
    model_class: type[nn.Module]

    def config_of(self, model: nn.Module) -> dict[str, Any]:
        """Everything `build` needs, as JSON-able plain data (the manifest's `config`)."""
        raise NotImplementedError

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        """A freshly initialised model of `config` (load the weights next)."""
        raise NotImplementedError

    def encoder(self, model: nn.Module) -> TransformerLM:
        """The TransformerLM inside `model` (the model itself for a language model): what `--encoder-only`
        exports, `load_encoder` returns and `init_from` starts training from."""
        raise NotImplementedError

    def eight_mile(self, model: nn.Module) -> Layout:
        """Where each state-dict entry goes in an NPZ (every entry needs a place)."""
        raise NotImplementedError

    def from_run(self, config: Mapping[str, Any], tokenizer: Tokenizer) -> RunModel | None:
        """The model a run with this resolved config exports, or None when the run trains another objective."""
        return None

    def mead_notes(self, model: nn.Module) -> list[str]:
        """What mead computes differently from `model` when it loads the NPZ (empty when it is exact)."""
        return []

    def hf(self, model: nn.Module) -> HFModel:
        """`model` as an HF transformers model."""
        raise UserError(f"--format hf holds language models (TransformerLM), not a {self.name}: export it as "
                        "npz or torch, or pass --encoder-only for its encoder")

    def sentence_transformer(self, model: nn.Module) -> SentenceTransformerModel:
        """`model` as a sentence-transformers model."""
        raise UserError(f"--format sentence-transformers holds dual encoders, not a {self.name}: export it as "
                        "npz, torch or hf")


def run_model_config(config: Mapping[str, Any], vocab_size: int) -> TransformerConfig:
    """The TransformerConfig of a run's resolved `config` (its `model` section), with `vocab_size` where the
    section leaves it 0 (for the trainer to fill in from the tokenizer)."""
    known = {f.name for f in dataclasses.fields(TransformerConfig)}  # a trainer may add its own keys
    settings = {key: value for key, value in config["model"].items() if key in known}
    return TransformerConfig(**dict(settings, vocab_size=settings.get("vocab_size") or vocab_size))


def objective_name(config: Mapping[str, Any]) -> str | None:
    """`objective.name` of a run's resolved config (None when the objective section has no name)."""
    section = config.get("objective")
    return section.get("name") if isinstance(section, Mapping) else None
