"""Reading exports back: a model and its tokenizer for fine-tuning, or weights to start training from.

Both formats restore exactly the exported parameters, so the reloaded model's outputs are bit-identical.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.tokenizer import TokenizerSpec
from export.formats import OUTPUT_NAMES
from export.manifest import Manifest, resolve_tokenizer
from export.npz import read_npz
from export.torch_format import read_torch
from pretrain.adapters import TransformerLM, adapter_of, first_non_finite, load_module_state

# Settings that may differ between an export and the model initialised from it: they change training,
# not the function the weights compute.
TRAINING_ONLY_SETTINGS = frozenset({"dropout"})
# Settings of the language-model head only: a model without that head (a dual encoder's Transformer) starts
# from the encoder of an export that has one (a BERT-style MLM), whose head is then left out.
LM_HEAD_SETTINGS = frozenset({"head_transform", "output_bias"})


def export_file(path: str | Path) -> Path:
    """The export file `path` names: itself, or in an export directory model.pt, else model.npz."""
    path = Path(path)
    if path.is_dir():
        for fmt in ("torch", "npz"):
            if (path / OUTPUT_NAMES[fmt]).is_file():
                return path / OUTPUT_NAMES[fmt]
        raise UserError(f"{path}: no {OUTPUT_NAMES['torch']} or {OUTPUT_NAMES['npz']} in this directory; "
                        "pass an export directory or file written by `python -m export`")
    return path


def read_export(path: str | Path) -> tuple[Manifest, dict[str, torch.Tensor], dict[str, bytes], Path]:
    """(manifest, model state dict, tokenizer files, file read) of an .npz or .pt export (or its directory)."""
    path = export_file(path)
    if path.suffix == ".npz":
        return (*read_npz(path), path)
    if path.suffix == ".pt":
        return (*read_torch(path), path)
    raise UserError(f"{path}: unknown export type {path.suffix!r}: pass a .npz or .pt export or its directory")


def read_model(path: str | Path) -> tuple[nn.Module, Manifest, dict[str, bytes], Path]:
    """(model with the export's weights, manifest, tokenizer files, file read) of an export."""
    manifest, state, files, path = read_export(path)
    model = manifest.build_model()
    load_module_state(model, state, path)
    return model, manifest, files, path


def load_pretrained(path: str | Path) -> tuple[nn.Module, TokenizerSpec]:
    """The exported model (the class its adapter declares: a TransformerLM, DualEncoder, Seq2Seq...; in train
    mode, on the CPU) and the spec of the tokenizer it was trained with."""
    model, manifest, files, path = read_model(path)
    return model, resolve_tokenizer(manifest, files, path.parent)


def load_encoder(path: str | Path) -> tuple[TransformerLM, TokenizerSpec]:
    """The TransformerLM of any export (a language model, or the encoder of a dual encoder or
    encoder-decoder) and its tokenizer's spec: what a fine-tuning script puts a new head on."""
    model, manifest, files, path = read_model(path)
    return manifest.adapter.encoder(model), resolve_tokenizer(manifest, files, path.parent)


def init_from(model: nn.Module, path: str | Path, expected_fingerprint: str | None = None) -> None:
    """Load an export's encoder into the encoder of `model` (what a run exports) to start training from it
    (`init_from` in a trainer config).

    The export may hold a TransformerLM or a DualEncoder / Seq2Seq..., whose encoder is then used. It must
    be the same Transformer: every setting but dropout equal (so that, say, a pre-LN export does not
    silently initialise a post-LN model; the LM-head settings may differ when `model` has no LM head, and
    the export's head is then left out) and, when `expected_fingerprint` is given (the trainer's
    tokenizer), the same vocab. Any mismatch is one UserError naming the setting or key.
    """
    model = adapter_of(model).encoder(model)
    headless = not (model.cfg.head_transform or model.cfg.output_bias)
    ignored = TRAINING_ONLY_SETTINGS | LM_HEAD_SETTINGS if headless else TRAINING_ONLY_SETTINGS
    exported, manifest, _, path = read_model(path)
    bad = first_non_finite(exported.state_dict())
    if bad is not None:
        raise UserError(f"init_from {path}: weight {bad!r} holds NaN or infinite values; start from an export "
                        "of a run that did not diverge")
    encoder = manifest.adapter.encoder(exported)
    ours, theirs = dataclasses.asdict(model.cfg), dataclasses.asdict(encoder.cfg)
    for name in ours:
        if name not in ignored and ours[name] != theirs[name]:
            raise UserError(f"init_from {path}: model.{name} is {ours[name]!r} here but {theirs[name]!r} in the "
                            f"export: set model.{name}={theirs[name]!r} to start from it")
    if expected_fingerprint is not None and expected_fingerprint != manifest.tokenizer_fingerprint:
        raise UserError(f"init_from {path}: the export was trained with tokenizer {manifest.tokenizer_fingerprint}, "
                        f"this run's tokenizer is {expected_fingerprint}: use the export's vocab files "
                        f"(written beside it)")
    if headless:
        model.encoder.load_state_dict(encoder.encoder.state_dict())
    else:
        model.load_state_dict(encoder.state_dict())
