"""Checkpoint exports (NPZ 8-mile layout, torch, HF) and their loaders.

    export_model(model, tokenizer_spec, out_dir, formats)   write an export (end of a run, or the CLI)
    load_pretrained(path) -> (model, tokenizer_spec)         read one back
    load_encoder(path) -> (TransformerLM, tokenizer_spec)    its (encoder) language model, to fine-tune
    init_from(model, path)                                   start training from one

The names resolve lazily, so that `export.atomic` (used by the data pipeline) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {"export_model": "export.exporter", "check_formats": "export.exporter",
           "load_pretrained": "export.loading", "load_encoder": "export.loading", "init_from": "export.loading"}

__all__ = ["check_formats", "export_model", "init_from", "load_encoder", "load_pretrained"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
