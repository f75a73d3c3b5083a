"""NPZ exports: the model's arrays in mead-baseline's 8-mile layout (the model's adapter gives the names:
see pretrain/model/eight_mile.py), written with np.savez as mead-layers does, so its loaders
(load_tlm_npz, load_transformer_de_npz, ...) read them. Arrays are float32, Linear weights as torch's
[out, in].

Two entries beyond the layout make the file self-describing (mead's loaders ignore them):
`pretrain_service/manifest` (the manifest as JSON) and `pretrain_service/tokenizer/NAME` (each tokenizer
file's bytes).
"""
from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.atomic_files import atomic_open
from export.manifest import Manifest
from pretrain.adapters import Entry, Layout

log = logging.getLogger(__name__)

MANIFEST_KEY = "pretrain_service/manifest"
TOKENIZER_PREFIX = "pretrain_service/tokenizer/"


def to_arrays(model: nn.Module, layout: Layout) -> dict[str, np.ndarray]:
    """The model's state as 8-mile arrays (float32). Every state-dict entry must have a place: a new
    parameter this layout does not know is a programming error, not a silently dropped weight."""
    state = model.state_dict()
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


def from_arrays(model: nn.Module, layout: Layout, arrays: Mapping[str, np.ndarray], source: Path) -> dict[str, torch.Tensor]:
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

    return {entry.ours: value(entry) for entry in layout}


def write_npz(path: Path, model: nn.Module, manifest: Manifest, tokenizer_files: Mapping[str, bytes]) -> None:
    """Write the model (8-mile arrays), its manifest and tokenizer files to `path`, atomically."""
    for note in manifest.adapter.mead_notes(model):
        log.warning("%s: %s", path, note)
    arrays = to_arrays(model, manifest.adapter.eight_mile(model))
    arrays[MANIFEST_KEY] = np.array(json.dumps(manifest.to_dict()))
    for export_name, data in tokenizer_files.items():
        arrays[TOKENIZER_PREFIX + export_name] = np.frombuffer(data, dtype=np.uint8)
    with atomic_open(path) as handle:
        np.savez(handle, **arrays)


def read_npz(path: Path) -> tuple[Manifest, dict[str, torch.Tensor], dict[str, bytes]]:
    """(manifest, model state dict, tokenizer files) of an NPZ written by `write_npz`."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass the .npz written by `python -m export`") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # a damaged zip or member
        raise UserError(f"{path}: not a readable NPZ file ({err}); re-export it") from None
    if MANIFEST_KEY not in arrays:
        raise UserError(f"{path}: an NPZ without a {MANIFEST_KEY} entry (not written by this project); "
                        "load it with mead-layers' load_tlm_npz into a model you build yourself")
    try:
        raw = json.loads(str(arrays[MANIFEST_KEY]))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: {MANIFEST_KEY} is not valid JSON ({err.msg}); re-export it") from None
    manifest = Manifest.from_dict(raw, path)
    files = {key[len(TOKENIZER_PREFIX):]: arrays[key].tobytes() for key in arrays if key.startswith(TOKENIZER_PREFIX)}
    model = manifest.build_model()
    return manifest, from_arrays(model, manifest.adapter.eight_mile(model), arrays, path), files
