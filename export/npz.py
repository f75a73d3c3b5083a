"""NPZ exports: the model's arrays in mead-baseline's 8-mile layout (export/eight_mile.py), written with
np.savez as mead-layers does, so its loaders (load_tlm_npz, ...) read them.

Two entries beyond the layout make the file self-describing (mead's loaders ignore them):
`pretrain_service/manifest` (the manifest as JSON) and `pretrain_service/tokenizer/NAME` (each tokenizer
file's bytes).
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data_pipeline.errors import UserError
from data_pipeline.atomic_files import atomic_open
from export.eight_mile import from_arrays, to_arrays
from export.manifest import Manifest

MANIFEST_KEY = "pretrain_service/manifest"
TOKENIZER_PREFIX = "pretrain_service/tokenizer/"


def write_npz(path: Path, model: nn.Module, manifest: Manifest, tokenizer_files: Mapping[str, bytes]) -> None:
    """Write the model (8-mile arrays), its manifest and tokenizer files to `path`, atomically."""
    arrays = to_arrays(model)
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
    return manifest, from_arrays(manifest.build_model(), arrays, path), files
