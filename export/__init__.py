"""Checkpoint exports (NPZ 8-mile layout, torch, HF, sentence-transformers) and their loaders. What a model
exports, and how its weights map onto each format, is its adapter's (pretrain/adapters.py).

    export_model(model, tokenizer_spec, out_dir, formats)   write an export (end of a run, or the CLI)
    load_pretrained(path) -> (model, tokenizer_spec)         read one back: the whole trained model
    load_encoder(path) -> (TransformerLM, tokenizer_spec)    its (encoder) language model, to fine-tune
    init_from(model, path)                                   start training from one
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"check_formats": "export.exporter", "export_model": "export.exporter", "init_from": "export.loading",
          "load_encoder": "export.loading", "load_pretrained": "export.loading"}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    """Import on first use: `export.formats` alone (what `submit` reads) must not cost a torch import."""
    if name not in _HOMES:
        raise AttributeError(f"module 'export' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
