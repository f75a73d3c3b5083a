"""Self-describing torch exports: `torch.load(path, weights_only=True)` gives a dict of plain values:

    format, version, model, config, tokenizer_kind, tokenizer_lowercase, tokenizer_fingerprint  (the manifest)
    state_dict        {parameter name: tensor} of the model, as `model.state_dict()` names them
    tokenizer_files   {file name: uint8 tensor of the file's bytes}

so a fine-tuning script needs neither this project's classes to read it nor the vocab files beside it.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.atomic_files import atomic_open, describe_load_error, save_torch
from export.manifest import Manifest


def write_torch(path: Path, model: nn.Module, manifest: Manifest, tokenizer_files: Mapping[str, bytes]) -> None:
    """torch.save the model state, manifest and tokenizer files to `path`, atomically."""
    checkpoint: dict[str, Any] = manifest.to_dict()
    checkpoint["state_dict"] = {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()}
    checkpoint["tokenizer_files"] = {name: torch.frombuffer(bytearray(data), dtype=torch.uint8)
                                     for name, data in tokenizer_files.items()}
    with atomic_open(path) as handle:
        save_torch(checkpoint, handle)


def read_torch(path: Path) -> tuple[Manifest, dict[str, torch.Tensor], dict[str, bytes]]:
    """(manifest, model state dict, tokenizer files) of a file written by `write_torch`."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass the .pt written by `python -m export`") from None
    except Exception as err:  # a truncated zip, a pickled object: either way not a usable export
        raise UserError(f"{path}: not a readable torch export ({describe_load_error(err)}); re-export it") from None
    manifest = Manifest.from_dict(checkpoint, path)
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{path}: the export has no state_dict; re-export it")
    files = {name: bytes(tensor.numpy()) for name, tensor in checkpoint.get("tokenizer_files", {}).items()}
    return manifest, checkpoint["state_dict"], files
